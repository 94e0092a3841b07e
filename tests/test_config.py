"""Presets, aliases, overrides and JSON round trips of the model config."""

import pytest

from detlite import config


def test_every_alias_points_at_a_tf_variant():
    for alias, name in config.ALIASES.items():
        assert config.preset(alias) == config.preset(name)
        assert name.startswith("tf_efficientdet_")


def test_overrides():
    cfg = config.preset("d0", num_classes=3, image_size=(384, 256))
    assert cfg.num_classes == 3 and cfg.image_size == (384, 256)
    assert config.preset("lite0", image_size=256).image_size == (256, 256)


def test_facts_table_values():
    d7x = config.preset("d7x")
    assert (d7x.max_level, d7x.fpn_weighting, d7x.backbone.arch) == (8, "sum", "tf_efficientnet_b7")
    d7 = config.preset("d7")
    assert (d7.anchor_scale, d7.image_size, d7.fpn_channels) == (5.0, (1536, 1536), 384)
    lite0 = config.preset("lite0")
    assert (lite0.act, lite0.fpn_weighting, lite0.anchor_scale) == ("relu6", "sum", 3.0)
    assert lite0.backbone.lite and lite0.mean == (0.5, 0.5, 0.5)
    d0 = config.preset("efficientdet_d0")
    assert not d0.tf_padding and not d0.redundant_bias and d0.backbone.bn_eps == 1e-5


@pytest.mark.parametrize("name", config.PRESETS)
def test_json_round_trip(name):
    cfg = config.preset(name, num_classes=7)
    assert config.from_json(config.to_json(cfg)) == cfg


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="unknown preset 'd9'"):
        config.preset("d9")
    with pytest.raises(ValueError, match="smaller than the coarsest stride"):
        config.preset("d0", image_size=64)
    with pytest.raises(ValueError, match="unknown model config fields"):
        config.from_dict({**config.to_dict(config.preset("d0")), "colour": "red"})


def test_feature_sizes_round_up():
    cfg = config.preset("d0", image_size=(384, 200))
    assert config.feature_sizes(cfg) == [(48, 25), (24, 13), (12, 7), (6, 4), (3, 2)]
