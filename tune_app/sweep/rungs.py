"""ASHA's decisions, written down: which trial reached which rung, with what metric, against what cut-off.

Ray's ``ASHAScheduler`` keeps its rungs to itself. :class:`RecordingASHA` is Ray's scheduler, unchanged
in what it decides, that also keeps the same book as it does (:class:`RungBook`: one bracket, rungs at
``grace_period * eta**k`` steps, a trial recorded at the highest rung it has passed and stopped when its
metric is worse than the ``1 - 1/eta`` quantile of the metrics already recorded there) and writes each
rung event to ``<run dir>/rungs.jsonl``: ``{"trial_id", "rung", "step", "metric", "cutoff", "stopped"}``
(metric and cut-off in the metric's own units). ``stopped`` is the decision Ray's scheduler took.

Tune restarts a scheduler from scratch when a sweep resumes; the events written before stay in the file.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from tune_app.sweep.rundir import RUNGS_FILE, RunDir, parse_jsonl


class RungBook:
    """ASHA's bookkeeping for one bracket (Ray's ``_Bracket``, s = 0), in the metric's units."""

    def __init__(self, grace_period: int, max_t: int, eta: float, mode: str):
        self.eta, self.sign = eta, (1.0 if mode == "max" else -1.0)
        count = int(np.log(max_t / grace_period) / np.log(eta) + 1)
        self.milestones = [grace_period * eta**k for k in range(count)]          # ascending
        self.recorded: list[dict[str, float]] = [{} for _ in self.milestones]   # signed rewards, as Ray keeps them

    def observe(self, trial_id: str, step: float, value: float) -> dict[str, Any] | None:
        """A result at ``step``: the rung event it makes (the highest rung reached and not yet recorded), if any."""
        for rung in reversed(range(len(self.milestones))):
            milestone, recorded = self.milestones[rung], self.recorded[rung]
            if step < milestone or trial_id in recorded:
                continue
            cutoff = float(np.nanpercentile(list(recorded.values()), (1 - 1 / self.eta) * 100)) if recorded else None
            reward = self.sign * value
            recorded[trial_id] = reward
            return {"trial_id": trial_id, "rung": rung, "milestone": milestone, "step": step, "metric": value,
                    "cutoff": None if cutoff is None else self.sign * cutoff, "below_cutoff": cutoff is not None and reward < cutoff}
        return None


class RecordingASHA(ASHAScheduler):
    """Ray's ASHA plus ``rungs.jsonl`` (see the module doc). Picklable (Tune keeps it in tuner.pkl)."""

    def __init__(self, *, run_dir: str, metric: str, mode: str, time_attr: str, grace_period: int, reduction_factor: float,
                 max_t: int):
        super().__init__(time_attr=time_attr, grace_period=grace_period, reduction_factor=reduction_factor, max_t=max_t)
        self.run_dir, self.record_metric, self.record_time = run_dir, metric, time_attr
        self.book = RungBook(grace_period, max_t, reduction_factor, mode)
        self.max_steps = max_t
        self.events: list[dict[str, Any]] | None = None

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        action = super().on_trial_result(tune_controller, trial, result)
        step, value = result.get(self.record_time), result.get(self.record_metric)
        if isinstance(step, (int, float)) and isinstance(value, (int, float)) and math.isfinite(value) and step < self.max_steps:
            event = self.book.observe(trial.trial_id, step, float(value))
            if event is not None:
                self._write({**event, "stopped": action == TrialScheduler.STOP})
        return action

    def _write(self, event: dict[str, Any]) -> None:
        rd = RunDir(self.run_dir)
        if self.events is None:                      # first event of this scheduler: keep those of an earlier run
            self.events = read_rungs(rd)
        self.events.append(event)
        rd.write_text(RUNGS_FILE, "".join(json.dumps(e) + "\n" for e in self.events))


def read_rungs(rd: RunDir) -> list[dict[str, Any]]:
    return parse_jsonl(rd.read_text(RUNGS_FILE) or "")
