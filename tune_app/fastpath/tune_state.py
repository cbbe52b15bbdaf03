"""Tune's experiment state written when a trial changes state, not only every 10 s.

Tune saves the sweep's state (trials, statuses, searcher: what ``resume`` restores) at most every
``TUNE_GLOBAL_CHECKPOINT_S`` ("auto": 10 s or more). Warm trials start and finish within that
window, so a sweep killed there would resume a finished trial as running and lose a started one.
:class:`DurableTuneController` forces (and waits for) the next snapshot after any trial status
change; between transitions Tune's own period still applies.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from ray.tune import tune as _tune_module
from ray.tune.execution.tune_controller import TuneController

from tune_app.fastpath.swap import SwapMismatch, swapped

log = logging.getLogger("tune_app.fastpath")


class DurableTuneController(TuneController):
    created = 0                      # instances made (a swap Ray no longer reads is reported, not silent)
    _state_changed = False

    def __init__(self, *args, **kwargs):
        type(self).created += 1
        super().__init__(*args, **kwargs)

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


@contextlib.contextmanager
def durable_state() -> Iterator[None]:
    """Around one ``Tuner.fit()``: Tune creates its controller as :class:`DurableTuneController`."""
    before = DurableTuneController.created
    stack = contextlib.ExitStack()
    try:
        stack.enter_context(swapped(_tune_module, "TuneController", DurableTuneController, TuneController))
        swapping = True
    except SwapMismatch as exc:
        log.warning("tune_app: Tune's state is saved on Tune's own period (%s)", exc)
        swapping = False
    with stack:
        yield
    if swapping and DurableTuneController.created == before:
        log.warning("tune_app: Ray did not create its Tune controller through ray.tune.tune.TuneController; "
                    "Tune's state was saved on Tune's own period")
