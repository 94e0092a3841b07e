"""channels_last reaches every convolution: a layout lost on the way (as a stacked sum loses
it) sends the layers after it back to NCHW without changing a number, so only a layout check
shows it."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from conftest import compact_lite0, compact_preset

from detlite import bifpn, model
from detlite.steps import StepOptions, _network_input


def _maps(count: int, channels_last: bool) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(count)
    maps = [torch.randn(2, 8, 6, 5, generator=gen) for _ in range(count)]
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return [m.contiguous(memory_format=fmt) for m in maps]


@pytest.mark.parametrize("weighting", ["sum", "fastattn"])
@pytest.mark.parametrize("count", [2, 3])
@pytest.mark.parametrize("channels_last", [False, True])
def test_bifpn_fusion_is_the_stacked_sum_in_the_inputs_layout(weighting, count, channels_last):
    """The fusion adds its (weighted) inputs in order: bit for bit the stack-and-sum it replaced
    (as effdet computes it), and channels_last in, channels_last out."""
    cfg = dataclasses.replace(compact_lite0(), fpn_weighting=weighting)
    inputs = _maps(count, channels_last)
    params = {"node.weights": torch.tensor([0.7, 1.3, 0.2][:count])}
    got = bifpn._combine(params, "node", inputs, cfg)
    if weighting == "sum":
        terms = inputs
    else:
        w = F.relu(params["node.weights"])
        scale = w / (w.sum() + bifpn._ATTENTION_EPS)
        terms = [x * scale[i] for i, x in enumerate(inputs)]
    want = torch.stack(terms, dim=-1).sum(dim=-1)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert got.is_contiguous(memory_format=torch.channels_last) == channels_last


@pytest.mark.parametrize("preset", ["lite0", "d0"])
def test_channels_last_reaches_every_convolution(preset, monkeypatch):
    """With `channels_last`, every convolution of the backbone, BiFPN and heads takes an NHWC
    input, and the head outputs come out NHWC (their flattening then copies nothing)."""
    cfg = compact_preset(preset)
    params = model.init(cfg, seed=0)
    images = torch.randint(0, 256, (2, 3, 128, 128), dtype=torch.uint8)
    layouts = []
    conv2d = F.conv2d

    def recording_conv2d(x, *args, **kwargs):
        if x.shape[-1] > 1 and x.shape[-2] > 1:  # a 1x1 map is both layouts at once
            layouts.append(x.is_contiguous(memory_format=torch.channels_last))
        return conv2d(x, *args, **kwargs)

    monkeypatch.setattr(F, "conv2d", recording_conv2d)
    x = _network_input(images, params, cfg, StepOptions(channels_last=True))
    cls_out, box_out = model.forward(params, x, cfg, training=True)
    assert layouts and all(layouts), f"{layouts.count(False)} of {len(layouts)} convs ran NCHW"
    for out in cls_out + box_out:
        assert out.is_contiguous(memory_format=torch.channels_last)
