"""The EMA's decay schedule (`--optim.ema-decay`, `--optim.ema-warmup`)."""

import pytest
import torch

from detlite.optim import OptimConfig, ema_decay_at, ema_update

WARM, PLAIN = OptimConfig(ema_decay=0.99), OptimConfig(ema_decay=0.99, ema_warmup=False)


def test_warm_up_follows_tf_formula_and_stops_at_the_decay():
    assert ema_decay_at(0, WARM) == pytest.approx(0.1)
    assert ema_decay_at(90, WARM) == pytest.approx(91 / 100)
    assert ema_decay_at(10_000, WARM) == 0.99
    assert ema_decay_at(0, PLAIN) == 0.99


def test_warmed_up_ema_forgets_the_initial_weights():
    """After 384 updates towards a constant (the built-in run's length), the warmed-up EMA holds
    under 1e-6 of the initial value where a plain 0.99 EMA still holds 0.99^384 = 2 %."""
    for cfg, left in ((WARM, 1e-6), (PLAIN, 0.0211)):
        ema, target = (
            {"w": torch.ones(3, dtype=torch.float64)},
            {"w": torch.zeros(3, dtype=torch.float64)},
        )
        for step in range(384):
            ema_update(ema, target, ema_decay_at(step, cfg))
        expected = 1.0
        for step in range(384):
            expected *= ema_decay_at(step, cfg)
        assert ema["w"][0].item() == pytest.approx(expected, rel=1e-9)
        assert (expected < left) if cfg.ema_warmup else expected == pytest.approx(left, rel=1e-2)
