"""The TorchTrainer as tune_app runs it: the stock Train V2 run with fewer processes per run.

Trial start-up on a small machine is CPU-bound: every Ray actor is a fresh Python process that
re-imports Ray Train (~1.3 CPU-s each), and a stock run starts seven of them per trial (trial
actor, Train->Tune queue, controller, placement-group cleaner, synchronization actor, workers,
dataset manager). :class:`TorchTrainer` keeps the design — the same controller, worker group,
DDP backend and train loop — and removes the processes that do no work here:

* **No dataset manager**: tune_app feeds workers from its memory-mapped cache, never Ray Data,
  so ``DatasetsCallback`` (which starts a ``DatasetManager`` actor per run) is left out.
* **Controller in the trial's process** (``trial_stop``): inside a Tune trial the trial actor's
  only job is to drive one Train run, so the ``TrainController`` runs there instead of in an
  actor of its own; with Tune's actor reuse its imports are paid once per trial slot, not per
  trial, and reports reach Tune with ``tune.report`` from that thread (no queue actor). When Tune
  stops the trial (early stopping) the run is aborted the way Train's own ``abort`` does it
  (workers and their placement group released), so the trial process is free for the next trial
  at once. Outside Tune (``tune_app train``) the controller stays an actor, as stock.
* **One placement-group janitor per sweep** instead of Ray's ``PlacementGroupCleaner`` per run:
  when a trial's process dies (an early-stopped or failed trial is killed), its workers'
  placement group would otherwise stay reserved until the sweep ends (ray-notes.md §3). The
  janitor watches the owning process through an actor handle, so it needs no State API either.
  A run driven from the driver (``tune_app train``) needs none: Ray frees a job's placement
  groups when its driver exits.
* **Warm workers between trials** (:mod:`tune_app.fastpath.warm_workers`): a trial process that drives
  one run after another starts each on the workers, placement group and synchronization actor
  its previous run finished cleanly with, instead of new processes.
"""

from __future__ import annotations

import asyncio
import logging
import threading

from ray.train.torch import TorchTrainer as _StockTorchTrainer
from ray.train.v2._internal.callbacks import DatasetsCallback
from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback
from ray.train.v2._internal.execution.controller import TrainController
from ray.train.v2._internal.execution.controller.state import AbortedState

from tune_app.fastpath.janitor import JanitorCallback
from tune_app.fastpath.warm_workers import WarmWorkerGroup

log = logging.getLogger("tune_app.fastpath.trainer")


class TrialStop:
    """Whether Tune has stopped the trial this process runs.

    Tune signals it through the trial session's stop event; a report in flight at that moment is
    ended with ``SystemExit``, which also clears the event, so the reporter records it here. A stop
    that answers the run's final report (ASHA stops every trial at ``max_iter``) is recorded with
    ``after_run=True``: the run is not aborted, it ends by itself right after (and its workers stay
    warm for the next trial, :mod:`tune_app.fastpath.warm_workers`).
    """

    def __init__(self):
        from ray.train._internal.session import get_session

        session = get_session()
        self._session_event = session.stop_event if session is not None else None
        self._reported = threading.Event()
        self._after_run = threading.Event()

    def set(self, after_run: bool = False) -> None:
        (self._after_run if after_run else self._reported).set()

    def is_set(self) -> bool:
        """Stop now: abort the run."""
        return self._reported.is_set() or (self._session_event is not None and self._session_event.is_set())

    def stopped(self) -> bool:
        """Tune stopped the trial, now or after its final report."""
        return self.is_set() or self._after_run.is_set()


class TorchTrainer(_StockTorchTrainer):
    """``ray.train.torch.TorchTrainer`` plus ``trial_stop`` and ``janitor`` (see the module doc)."""

    def __init__(self, *args, trial_stop: TrialStop | None = None, janitor: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._trial_stop = trial_stop
        self._janitor = janitor

    def _create_default_callbacks(self):
        callbacks = [cb for cb in super()._create_default_callbacks()
                     if not isinstance(cb, (DatasetsCallback, PlacementGroupCleanerCallback))]
        if self._janitor:
            callbacks.append(JanitorCallback(self._janitor))
        return callbacks

    def _initialize_and_run_controller(self, **controller_init_kwargs):
        if self._trial_stop is None:
            return super()._initialize_and_run_controller(**controller_init_kwargs)
        controller = _TrialController(**controller_init_kwargs)
        asyncio.run(_run_until_stopped(controller, self._trial_stop))
        return controller.get_result()


class _TrialController(TrainController):
    """The Train controller of a run inside a trial: its worker groups start on warm workers when it can."""

    worker_group_cls = WarmWorkerGroup


async def _run_until_stopped(controller: TrainController, stop: TrialStop, poll_s: float = 0.1) -> None:
    run = asyncio.ensure_future(controller.run())
    while not run.done():
        await asyncio.wait({run}, timeout=poll_s)
        if stop.is_set() and not run.done() and not controller.get_state().is_terminal():
            _abort(controller)
            # The control loop would now call exit_actor() (it expects its own actor): end it here.
            run.cancel()
            try:
                await run
            except asyncio.CancelledError:
                pass
            return
    run.result()


def _abort(controller: TrainController) -> None:
    """``TrainController.abort`` without its final ``exit_actor`` (this process is the trial's, not the controller's)."""
    controller._controller_callback_manager.invoke_best_effort("before_controller_abort")
    try:
        if controller._worker_group:
            controller._worker_group.abort()
    except Exception:  # noqa: BLE001 - as Train's abort: log, still end the run
        log.exception("aborting the worker group of a stopped trial")
    controller._set_state(AbortedState())
