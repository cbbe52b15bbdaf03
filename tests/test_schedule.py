"""LR schedule: constant, or linear warmup + cosine to min_lr, as LambdaLR over two param groups."""

import math

import pytest
import torch

from tune_app.config import load_config
from tune_app.train.schedule import build_scheduler, cosine_factor, describe


def _optimizer(lr=1e-4, lr_backbone=1e-5):
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    return torch.optim.AdamW([{"params": [a], "lr": lr}, {"params": [b], "lr": lr_backbone}])


def _lrs_over(cfg, steps):
    opt = _optimizer(cfg.lr, cfg.lr_backbone)
    sched = build_scheduler(opt, cfg)
    seen = []
    for _ in range(steps + 1):
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    return seen


def _cfg(**kw):
    overrides = [f"training.{k}={v}" for k, v in kw.items()]
    return load_config(None, ["training.scheduler=cosine", *overrides]).training


def test_cosine_values_at_key_points():
    cfg = _cfg(steps=1000, warmup_steps=100, lr=1e-4, lr_backbone=1e-4, min_lr=1e-6)
    lrs = _lrs_over(cfg, 1000)
    assert lrs[0][0] == 0.0                                        # step 0 of warmup
    assert lrs[50][0] == pytest.approx(0.5e-4)                     # half-way up
    assert lrs[100][0] == pytest.approx(1e-4)                      # end of warmup: peak
    mid = 1e-6 + (1e-4 - 1e-6) * 0.5                               # cosine midpoint
    assert lrs[550][0] == pytest.approx(mid)
    assert lrs[1000][0] == pytest.approx(1e-6)                     # end: min_lr
    assert all(a[0] >= b[0] for a, b in zip(lrs[100:], lrs[101:], strict=False))  # monotone decay


def test_each_group_decays_to_min_lr():
    cfg = _cfg(steps=200, warmup_steps=0, lr=1e-4, lr_backbone=1e-5, min_lr=1e-6)
    lrs = _lrs_over(cfg, 200)
    assert lrs[0] == pytest.approx([1e-4, 1e-5])
    assert lrs[200] == pytest.approx([1e-6, 1e-6])


def test_group_below_floor_stays_constant():
    cfg = _cfg(steps=100, warmup_steps=0, lr=1e-4, lr_backbone=0.0, min_lr=1e-6)
    assert {round(x[1], 12) for x in _lrs_over(cfg, 100)} == {0.0}


def test_none_is_constant():
    cfg = load_config(None, ["training.lr=3e-4", "training.steps=50"]).training
    assert {tuple(x) for x in _lrs_over(cfg, 50)} == {(3e-4, cfg.lr_backbone)}


def test_warmup_longer_than_run_warms_up_over_the_run_and_says_so():
    cfg = _cfg(steps=100, warmup_steps=500, lr=1e-4)
    lrs = _lrs_over(cfg, 100)
    assert lrs[100][0] == pytest.approx(1e-4 * 100 / 500)
    assert "never decays" in describe(cfg)


def test_steps_equal_warmup():
    assert cosine_factor(100, 100, 100, 0.01) == 1.0
    assert cosine_factor(50, 100, 100, 0.01) == 0.5
    assert describe(_cfg(steps=100, warmup_steps=100)) is not None


def test_zero_warmup_starts_at_peak():
    assert cosine_factor(0, 0, 100, 0.0) == 1.0
    assert cosine_factor(100, 0, 100, 0.0) == pytest.approx(0.0, abs=1e-12)
    assert cosine_factor(50, 0, 100, 0.0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
