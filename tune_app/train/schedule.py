"""Learning-rate schedules: ``none`` (constant) or ``cosine`` (linear warmup, then cosine decay).

Both are :class:`torch.optim.lr_scheduler.LambdaLR`, stepped once after every optimizer step, so
the LR used for optimizer step ``s`` (0-based) is ``peak * factor(s)``:

* warmup, ``s < warmup_steps``: ``factor = s / warmup_steps`` (0 at step 0, as the original and
  Hugging Face's ``get_cosine_schedule_with_warmup`` do);
* decay, ``warmup_steps <= s <= steps``: ``floor + (1 - floor) * 0.5 * (1 + cos(pi * progress))``
  with ``progress = (s - warmup_steps) / (steps - warmup_steps)``, reaching ``floor`` at ``steps``.

Floors, per parameter group: every group decays to ``training.min_lr`` in absolute terms, so the
policy group ends at ``min_lr`` and the backbone group too (``floor = min_lr / lr_backbone``).
The original used one ratio, ``min_lr / lr``, for both groups, which ends the backbone at
``lr_backbone * min_lr / lr``; the two agree whenever ``lr == lr_backbone`` (every original
config). A group whose peak is already at or below ``min_lr`` (a frozen backbone at 0, say) stays
constant at its peak.

Edge cases: ``warmup_steps >= steps`` warms up over the whole run (the peak is reached at the end;
there is no decay; :func:`describe` says so), ``warmup_steps == 0`` starts at the peak, and
``min_lr > lr`` is rejected when the config is loaded.
"""

from __future__ import annotations

import math

import torch

from tune_app.config import TrainingConfig


def cosine_factor(step: int, warmup_steps: int, total_steps: int, floor: float) -> float:
    """The LR multiplier at ``step`` for linear warmup + cosine decay to ``floor`` (a ratio of the peak)."""
    if warmup_steps >= total_steps:
        return min(1.0, step / warmup_steps) if warmup_steps > 0 else 1.0
    if step < warmup_steps:
        return step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def group_floor(peak_lr: float, min_lr: float) -> float:
    """The ratio of a group's peak LR at which its decay stops (``min_lr`` in absolute terms)."""
    if peak_lr <= 0 or min_lr >= peak_lr:
        return 1.0
    return min_lr / peak_lr


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainingConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR over every param group of ``optimizer`` (constant for ``scheduler: none``)."""
    if cfg.scheduler == "none":
        lambdas = [lambda step: 1.0 for _ in optimizer.param_groups]
    else:
        lambdas = []
        for group in optimizer.param_groups:
            floor = group_floor(group["lr"], cfg.min_lr)
            lambdas.append(lambda step, floor=floor: cosine_factor(step, cfg.warmup_steps, cfg.steps, floor))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)


def describe(cfg: TrainingConfig) -> str | None:
    """A one-line warning for a schedule that will not do what its keys suggest, else None."""
    if cfg.scheduler == "cosine" and cfg.warmup_steps >= cfg.steps:
        return (f"training.warmup_steps ({cfg.warmup_steps}) >= training.steps ({cfg.steps}): "
                "the LR warms up over the whole run and never decays; lower warmup_steps for a cosine decay")
    return None
