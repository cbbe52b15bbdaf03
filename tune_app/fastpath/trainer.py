"""The fast path's TorchTrainer: Ray's Train V2 run with fewer processes per trial.

Trial start-up on a small machine is CPU-bound: every Ray actor is a new Python process that
imports Ray Train again, and a stock trial starts seven. This keeps the controller, worker group,
DDP backend and loop, and removes the processes that do no work here:

* no dataset manager (tune_app feeds workers from its own cache, never Ray Data);
* inside a trial, the Train controller runs in the trial's process and reports with
  ``tune.report`` (no controller actor, no Train->Tune queue actor); a trial Tune stops ends at its
  workers' next step (:mod:`tune_app.fastpath.graceful_stop`), else it is aborted the way Train's
  own ``abort`` does it, so the process is free at once;
* one placement-group janitor per sweep (:mod:`tune_app.fastpath.janitor`) instead of a
  cleaner actor per run;
* warm workers between a trial process's runs (:mod:`tune_app.fastpath.warm_workers`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import threading
from collections.abc import Iterator
from typing import Any

import ray
from ray import tune
from ray.train import UserCallback
from ray.train._internal.session import get_session
from ray.train.torch import TorchTrainer as _StockTorchTrainer
from ray.train.v2._internal.callbacks import DatasetsCallback
from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback
from ray.train.v2._internal.execution.controller import TrainController
from ray.train.v2._internal.execution.controller.state import AbortedState

from tune_app.fastpath import TrialHooks, compat, graceful_stop
from tune_app.fastpath.janitor import JanitorCallback, start_janitor
from tune_app.fastpath.tune_state import durable_state
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
        compat.one_line_transient_warnings()          # the controller runs in this process
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
            # First ask the workers to end their loop: a run that ends by itself keeps its workers warm.
            if graceful_stop.request(controller):
                await asyncio.wait({run}, timeout=graceful_stop.grace_s())
                if run.done():
                    run.result()
                    return
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


class TrialReportCallback(UserCallback):
    """Reports rank 0's metrics to Tune (``checkpoint_path`` added, as Ray's ``TuneReportCallback``).

    The controller runs in the trial's thread here, so this calls ``tune.report`` directly: no
    queue actor, and none of Ray 2.60's hang when a queued report is forwarded after the trial
    function returned. When Tune stops the trial its session ends the report with ``SystemExit``;
    that is recorded in ``stop`` so the run is aborted (workers released), unless it answered the
    final report (``final_step``): that run ends by itself, cleanly, and keeps its workers warm.
    """

    def __init__(self, stop: TrialStop, final_step: int):
        self._stop = stop
        self._final_step = final_step

    def __getstate__(self):
        return {}       # Train ships its run config (callbacks included) to the workers, which never call this

    def __setstate__(self, state):
        self._stop = None

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        if self._stop.stopped():
            return
        item = dict(metrics[0])
        if checkpoint:
            item["checkpoint_path"] = checkpoint.path
        try:
            tune.report(item)          # returns when Tune has taken it (synchronous reporting)
        except SystemExit:
            self._stop.set(after_run=item.get("step") == self._final_step)


def janitor_name(sweep_name: str) -> str:
    return f"tune_app-janitor-{sweep_name}"


@contextlib.contextmanager
def trial_hooks(final_step: int) -> Iterator[Any]:
    """Fast mode's :func:`tune_app.fastpath.trial`: the controller in this process, reports straight to Tune."""
    stop = TrialStop()
    yield TrialHooks(TorchTrainer, [TrialReportCallback(stop, final_step)],
                     {"trial_stop": stop, "janitor": janitor_name(tune.get_context().get_experiment_name())})
    if stop.stopped():
        # End the way Tune ends a stopped function trainable's thread (its report raises SystemExit);
        # returning would make Tune's wrapper report once more, to a session nobody reads any more.
        raise SystemExit(0)


@contextlib.contextmanager
def sweep_context(sweep_name: str) -> Iterator[None]:
    """Around ``Tuner.fit()``: the sweep's janitor alive, Tune's state durable; kept workers freed at the end."""
    janitor = start_janitor(janitor_name(sweep_name))      # the handle keeps it alive
    try:
        with durable_state():
            yield
    finally:
        try:
            ray.get(janitor.free_all.remote(), timeout=60)
        except Exception as exc:  # noqa: BLE001 - the cluster is going away: Ray frees them with the job
            print(f"tune_app: could not free the sweep's kept workers: {exc}", file=sys.stderr)
