"""The two compiled units everyone uses: the training loss and the inference step, eager and
compiled, against the model API composed by hand; runtime options change how, not what."""

import pytest
import torch
import torch.nn.functional as F
from conftest import compact_lite0

from detlite import anchors as anchors_lib
from detlite import model, targets
from detlite.loss import detection_loss
from detlite.steps import Predictor, StepOptions, TrainingLoss, compiled


@pytest.fixture(scope="module")
def small():
    cfg = compact_lite0()
    params = model.init(cfg, seed=0)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2, 3, 128, 128), dtype=torch.uint8, generator=g)
    boxes = torch.tensor(
        [[[10.0, 12.0, 60.0, 70.0], [0, 0, 0, 0]], [[30, 40, 120, 90], [5, 5, 40, 30]]]
    )
    labels = torch.tensor([[2, -1], [0, 1]])
    return cfg, params, images, boxes, labels


def _by_hand(cfg, params, images, boxes, labels):
    anchors = anchors_lib.generate_anchors(cfg)
    cls_t, box_t, positives = targets.assign(anchors, boxes, labels, cfg)
    cls_out, box_out = model.forward(params, model.normalize(images, cfg), cfg, training=True)
    cls_flat, box_flat = anchors_lib.flatten_outputs(cls_out, box_out, cfg)
    return detection_loss(cls_flat, box_flat, cls_t, box_t, positives, cfg)


def _fresh(params):
    return {k: v.clone() for k, v in params.items()}  # training-mode BN updates statistics


def _step_results(small, options: StepOptions):
    """Loss, gradients and BatchNorm statistics of one training step from `small`'s weights."""
    cfg, params, images, boxes, labels = small
    p = _fresh(params)
    trained = [k for k, v in p.items() if v.is_floating_point() and "running" not in k]
    for k in trained:
        p[k].requires_grad_(True)
    total, _, _ = TrainingLoss(cfg, options)(p, images, boxes, labels)
    total.backward()
    grads = {k: p[k].grad for k in trained}
    stats = {k: v for k, v in p.items() if "running" in k}
    return total.detach(), grads, stats


def test_in_place_activations_change_nothing(small, monkeypatch):
    """ReLU6 overwrites BatchNorm outputs and BiFPN fusions in place (one saved activation
    fewer per layer): the loss, every gradient and every statistic equal those of out-of-place
    activations, exactly. (Local batch statistics here; the sync and frozen BatchNorm paths
    return fresh outputs too, and none of the three needs its output in backward.)"""
    from detlite import backbone, bifpn, head, layers

    in_place = _step_results(small, StepOptions(channels_last=True))
    calls = []

    def out_of_place(x, name, *, fresh=False):
        calls.append(fresh)
        return layers.activation(x, name)

    for module in (backbone, bifpn, head):
        monkeypatch.setattr(module, "activation", out_of_place)
    copied = _step_results(small, StepOptions(channels_last=True))
    assert small[0].act == "relu6" and any(calls), "the in-place path was not the one replaced"
    for got, want in zip(in_place, copied, strict=True):
        if isinstance(want, dict):
            assert got.keys() == want.keys()
            for k in want:
                torch.testing.assert_close(got[k], want[k], rtol=0, atol=0, msg=k)
        else:
            torch.testing.assert_close(got, want, rtol=0, atol=0)


def _relu6_edge_values(channels_last: bool) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 7, generator=gen, dtype=torch.float64) * 8
    x.view(-1)[:6] = torch.tensor([0.0, 6.0, -0.0, float("nan"), 5.999999, 1e-300])
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@pytest.mark.parametrize("channels_last", [False, True])
def test_relu6_in_place_has_relu6_gradient_and_saves_only_its_output(channels_last):
    """The in-place ReLU6 gives F.relu6's output and input gradient bit for bit (at the bounds
    0 and 6, at NaN, in either memory format), and keeps for backward one
    tensor: its output, which the next convolution keeps anyway (PyTorch's relu6_ keeps a copy
    of its input)."""
    from detlite import layers

    x = _relu6_edge_values(channels_last)
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=x.dtype)
    ref_in = x.clone().requires_grad_(True)
    want = F.relu6(ref_in)
    want.backward(grad)
    leaf = x.clone().requires_grad_(True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        fresh = leaf * 1.0  # a non-leaf nothing else reads, as a BatchNorm output
        got = layers.activation(fresh, "relu6", fresh=True)
    got.backward(grad)
    assert got.data_ptr() == fresh.data_ptr(), "not in place"
    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(leaf.grad, ref_in.grad, rtol=0, atol=0, equal_nan=True)
    relu6_saved = [t for t in saved if t.shape == x.shape and t.data_ptr() != leaf.data_ptr()]
    assert [t.data_ptr() for t in relu6_saved] == [got.data_ptr()]


def test_training_loss_is_the_model_api_composed(small):
    cfg, params, images, boxes, labels = small
    ours = TrainingLoss(cfg)(_fresh(params), images, boxes, labels)
    reference = _by_hand(cfg, _fresh(params), images, boxes, labels)
    for a, b in zip(ours, reference, strict=True):
        assert a.dtype == torch.float32 and torch.equal(a, b)
    assert ours[0] > 0 and torch.isclose(ours[0], ours[1] + 50.0 * ours[2])


def test_compiled_training_loss_and_gradients_match_eager(small):
    cfg, params, images, boxes, labels = small
    torch._dynamo.reset()
    grads = []
    for options in (StepOptions(), StepOptions(compile="default", channels_last=True)):
        p = _fresh(params)
        for v in p.values():
            if v.is_floating_point() and v.dim() > 1:
                v.requires_grad_(True)
        total, _, _ = TrainingLoss(cfg, options)(p, images, boxes, labels)
        total.backward()
        grads.append((total.detach(), p["class_head.predict.pw.weight"].grad))
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grads[1][1], grads[0][1], rtol=1e-3, atol=1e-5)


def test_eager_channels_last_changes_no_loss_gradient_or_statistic(small):
    """The built-in recipe trains eager in channels_last (faster CPU convolutions): the same
    step up to rounding, for every gradient and every BatchNorm statistic."""
    results = [_step_results(small, StepOptions(channels_last=cl)) for cl in (False, True)]
    (loss, grads, stats), (loss_cl, grads_cl, stats_cl) = results
    torch.testing.assert_close(loss_cl, loss, rtol=1e-5, atol=0)
    assert grads.keys() == grads_cl.keys() and len(stats) > 0
    # Rounding is relative to the gradients' scale: biases ahead of a BatchNorm have a
    # gradient of zero, which either layout computes as noise of about 1e-8.
    scale = max(g.abs().max() for g in grads.values())
    for k in grads:
        torch.testing.assert_close(grads_cl[k], grads[k], rtol=0, atol=1e-4 * scale, msg=k)
    for k in stats:
        torch.testing.assert_close(stats_cl[k], stats[k], rtol=1e-5, atol=1e-6, msg=k)


def test_predictor_is_normalise_then_predict(small):
    cfg, params, images, _, _ = small
    scales = torch.tensor([1.0, 2.5])
    dets, counts = Predictor(cfg)(params, images, scales)
    with torch.no_grad():
        ref = model.predict(params, model.normalize(images, cfg), cfg, image_scales=scales)
    assert torch.equal(counts, ref[1]) and torch.equal(dets, ref[0])
    assert not dets.requires_grad


def test_compiled_predictor_matches_eager(small):
    cfg, params, images, _, _ = small
    torch._dynamo.reset()
    eager = Predictor(cfg)(params, images)
    compiled = Predictor(cfg, StepOptions(compile="default", channels_last=True))(params, images)
    assert torch.equal(compiled[1], eager[1])
    torch.testing.assert_close(compiled[0][..., 4:], eager[0][..., 4:], rtol=0, atol=1e-5)
    torch.testing.assert_close(compiled[0][..., :4], eager[0][..., :4], rtol=0, atol=1e-2)


def test_bf16_autocast_keeps_float32_losses_and_outputs(small):
    cfg, params, images, boxes, labels = small
    options = StepOptions(dtype="bf16")
    losses = TrainingLoss(cfg, options)(_fresh(params), images, boxes, labels)
    reference = TrainingLoss(cfg)(_fresh(params), images, boxes, labels)
    assert all(t.dtype == torch.float32 for t in losses)
    torch.testing.assert_close(losses[0], reference[0], rtol=0.1, atol=0.0)
    dets, _ = Predictor(cfg, options)(params, images)
    assert dets.dtype == torch.float32


def test_predictor_compiles_one_static_graph_per_batch_shape(small, monkeypatch):
    """A symbolic batch would compile slower and lose the static top-k sizes, so the predictor
    asks for static graphs; `compiled(..., dynamic=False)` then recompiles per batch shape."""
    cfg = small[0]
    asked = {}
    real_compile = torch.compile
    monkeypatch.setattr(
        torch, "compile", lambda fn, **kw: asked.update(kw) or real_compile(fn, **kw)
    )
    Predictor(cfg, StepOptions(compile="default"))
    assert asked["dynamic"] is False and asked["fullgraph"] is True
    monkeypatch.undo()

    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    column_sums = compiled(lambda x: x.sum(0), "default", dynamic=False)
    for batch in (2, 3, 4, 2):  # automatic dynamic shapes would compile 2 graphs, not 3
        assert torch.equal(column_sums(torch.ones(batch, 3)), torch.full((3,), float(batch)))
    assert counters["stats"]["unique_graphs"] == 3
