"""torch.compile(fullgraph=True) of forward and predict: no graph breaks, same results as eager."""

import pytest
import torch
from conftest import compact_lite0

from detlite import model


@pytest.fixture(scope="module")
def small():
    cfg = compact_lite0()
    params = model.init(cfg, seed=0)
    images = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    return cfg, params, images


def test_compiled_forward_matches_eager(small):
    cfg, params, images = small
    compiled = torch.compile(lambda x: model.forward(params, x, cfg), fullgraph=True)
    with torch.no_grad():
        eager_cls, eager_box = model.forward(params, images, cfg)
        comp_cls, comp_box = compiled(images)
    for a, b in zip(eager_cls + eager_box, comp_cls + comp_box, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)


def test_compiled_predict_matches_eager(small):
    cfg, params, images = small
    with torch.no_grad():
        compiled = torch.compile(lambda x: model.predict(params, x, cfg), fullgraph=True)
        dets, counts = compiled(images)
        eager_dets, eager_counts = model.predict(params, images, cfg)
    assert torch.equal(counts, eager_counts)
    assert dets.shape == (2, cfg.postprocess.max_det, 6)
    torch.testing.assert_close(dets[..., 4:], eager_dets[..., 4:], rtol=0, atol=1e-5)
    torch.testing.assert_close(dets[..., :4], eager_dets[..., :4], rtol=0, atol=1e-2)
