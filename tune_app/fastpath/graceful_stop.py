"""Ending a stopped trial's run at the workers' next step, so its workers can be kept.

When Tune stops a trial mid-run (ASHA at a rung, a stopper), Train's ``abort`` kills the run's
workers: the next trial then starts cold (seconds of imports and process start-up) where it could
have started on warm workers in about one. Instead, the trial's controller first asks each worker to
end its loop (:func:`request`): the loop checks :func:`requested` after every optimizer step (with
DDP the ranks vote every few steps, so all stop at the same one), returns, and the run finishes
cleanly; a cleanly finished group is kept (:mod:`tune_app.fastpath.warm_workers`). If the run has not
ended within the grace Tune gives a reused trial process (``TUNE_FUNCTION_THREAD_TIMEOUT_S``: Ray's
default 2 s, tune_app's 10 s), it is aborted as before.

A stop names its run (the Train run's name, the trial's), so a late request never stops the next
run a kept worker starts.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

import ray

if TYPE_CHECKING:   # the worker side imports no private Ray name: it also runs when stock mode was chosen
    from ray.train.v2._internal.execution.controller import TrainController

log = logging.getLogger("tune_app.fastpath.graceful_stop")

_STOPPED: set[str] = set()      # in a worker process: the runs asked to stop


def _mark(run_name: str) -> None:
    _STOPPED.add(run_name)


def requested() -> bool:
    """In a Train worker: whether this run was asked to stop (cheap: called every step)."""
    return bool(_STOPPED) and ray.train.get_context().get_experiment_name() in _STOPPED


def grace_s() -> float:
    """How long a stopped run may take to end: what Tune waits for a reused trial process's thread, less
    a margin for the controller to finish."""
    return max(float(os.environ.get("TUNE_FUNCTION_THREAD_TIMEOUT_S", "2")) - 0.5, 0.5)


def request(controller: TrainController) -> bool:
    """Ask the run's workers to end their loop; False when it cannot be asked (no workers yet, an error)."""
    group = controller._worker_group
    if group is None or not group.has_started():
        return False
    try:
        name = controller._train_run_context.run_config.name
        ray.get([w.execute_async(_mark, name) for w in group.get_workers()], timeout=grace_s())
    except Exception as exc:  # noqa: BLE001 - a worker that cannot be asked is aborted as before
        log.info("could not ask the workers to stop (%s); aborting the run", exc)
        return False
    return True
