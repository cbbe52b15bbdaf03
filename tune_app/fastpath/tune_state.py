"""Tune's experiment state written when a trial changes state, not only every 10 s.

Tune saves the sweep's state (trial list, statuses, searcher; the files ``status`` reads and
``resume`` restores) at most every ``TUNE_GLOBAL_CHECKPOINT_S`` ("auto": 10 s or more). Warm trials
start and finish within that window, so a sweep killed there resumed from a state in which a
finished trial was still running (rerun from its last checkpoint) and a started one did not exist
yet (run again from step 0), and ``status`` showed the same stale picture.

:class:`DurableTuneController` marks the state dirty whenever a trial's status changes (added,
started, paused, finished, failed) and the controller's next snapshot is then forced and waited
for, so what is on storage is never behind a transition. Between transitions Tune's own period
still applies (metrics only). :func:`durable_state` puts the class in ``ray.tune.tune`` for one
``Tuner.fit()``; that name is the only place Ray 2.60 creates the controller from.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

from ray.tune import tune as _tune_module
from ray.tune.execution.tune_controller import TuneController

from tune_app.fastpath.swap import swapped


class DurableTuneController(TuneController):
    _state_changed = False

    def add_trial(self, trial):
        self._state_changed = True
        super().add_trial(trial)

    def _set_trial_status(self, trial, status: str):
        if trial.status != status:
            self._state_changed = True
        super()._set_trial_status(trial, status)

    def checkpoint(self, force: bool = False, wait: bool = False):
        changed, self._state_changed = self._state_changed, False
        super().checkpoint(force=force or changed, wait=wait or changed)


def durable_state() -> AbstractContextManager:
    return swapped(_tune_module, "TuneController", DurableTuneController)
