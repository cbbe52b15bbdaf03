"""The Ray seam: the only part of tune_app that uses Ray's private names.

Two modes run the same sweep, trainable, loop and trackers; only trial start-up differs.

* **fast** (on the Ray series in ``TESTED_RAY``): the Train controller runs in the trial's process,
  a finished run's DDP workers start the trial process's next run (``trainer``, ``warm_workers``),
  one placement-group janitor per sweep (``janitor``), Tune's state written at every trial
  transition (``tune_state``), trackers that end promptly and step by optimizer step (``callbacks``).
* **stock**: Ray's documented pattern: a Tune function trainable calling Ray's ``TorchTrainer.fit()``
  with ``TuneReportCallback``, and Ray's own W&B/MLflow callbacks. It runs on any other Ray in the
  declared range, with ``TUNE_APP_FAST=0``, or with ``ray.fast_start: false``.

This module imports no private Ray name itself; the modules beside it do, and are imported only
once :func:`choose` found the running Ray to be one they were checked on (``compat.check``).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import ray

# Ray release series the fast path was run on (CI runs every sweep test in both modes on these).
TESTED_RAY = ("2.60",)
# Series whose Train->Tune report queue (stock mode) is the one compat.wait_for_stock_reports reads:
# 2.55 and 2.60 run in CI (.ci/old-ray, the test suite); 2.56-2.59 have the same session code.
STOCK_QUEUE_RAY = ("2.55", "2.56", "2.57", "2.58", "2.59", "2.60")
ENV = "TUNE_APP_FAST"


@dataclass(frozen=True)
class Mode:
    """Fast or stock, and why; decided once by the driver and handed to every trial (it pickles)."""

    fast: bool
    why: str = ""

    def line(self) -> str:
        return ("tune_app: fast start" if self.fast else
                f"tune_app: stock Ray mode ({self.why}); every feature works, trials start slower")


def ray_series(version: str | None = None) -> str:
    return ".".join((version or ray.__version__).split(".")[:2])


def choose(fast_start: bool = True, version: str | None = None) -> Mode:
    """The mode for this process: fast only on a tested Ray whose internals still match."""
    if os.environ.get(ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return Mode(False, f"{ENV}=0")
    if not fast_start:
        return Mode(False, "ray.fast_start: false")
    version = version or ray.__version__
    if ray_series(version) not in TESTED_RAY:
        return Mode(False, f"Ray {version} is not a release the fast path was tested on ({', '.join(f'{s}.x' for s in TESTED_RAY)})")
    from tune_app.fastpath.compat import check  # deferred: imports the private modules it checks

    problem = check()
    if problem:
        return Mode(False, f"Ray {version}'s internals differ from what the fast path expects: {problem}")
    return Mode(True)


# ---------------------------------------------------------------- a trial's Train run


@dataclass
class TrialHooks:
    """What a trial's ``TorchTrainer`` needs from the mode: its class, its report callbacks and any
    extra keyword arguments."""

    trainer_cls: type
    callbacks: list = field(default_factory=list)
    trainer_kwargs: dict[str, Any] = field(default_factory=dict)


@contextlib.contextmanager
def trial(mode: Mode, final_step: int) -> Iterator[TrialHooks]:
    """Inside a Tune function trainable, around one ``TorchTrainer(...).fit()``."""
    if mode.fast:
        from tune_app.fastpath.trainer import trial_hooks  # deferred: private Ray names, fast mode only

        with trial_hooks(final_step) as hooks:
            yield hooks
        return
    from ray.train.torch import TorchTrainer  # deferred: seconds to import, stock mode only
    from ray.tune.integration.ray_train import TuneReportCallback  # deferred: seconds to import, stock mode only

    yield TrialHooks(TorchTrainer, [TuneReportCallback()])
    _settle_stock_reports()


def _settle_stock_reports() -> None:
    """A stock trial that returns while its last report still waits in Train->Tune's queue hangs
    (Ray 2.60) or loses that report (Ray 2.55): Tune's main thread forwards it to a session that no
    longer reads. On the series checked, wait until the queue is empty; elsewhere Ray's pattern
    runs as documented."""
    if ray_series() in STOCK_QUEUE_RAY:
        from tune_app.fastpath.compat import wait_for_stock_reports  # deferred: private Ray names, checked series only

        wait_for_stock_reports()


def stop_check() -> Callable[[], bool]:
    """In a Train worker: the check, called after every step, of whether Tune stopped this trial and the
    run should end (fast mode asks, :mod:`tune_app.fastpath.graceful_stop`; nothing asks in stock mode).
    Resolved once per run, so the hot loop pays only the call."""
    if ray_series() not in TESTED_RAY:
        return lambda: False
    from tune_app.fastpath.graceful_stop import requested  # deferred: private Ray names, tested series only

    return requested


def trainer_cls(mode: Mode) -> type:
    """The ``TorchTrainer`` of a run outside Tune (``tune_app train``)."""
    if mode.fast:
        from tune_app.fastpath.trainer import TorchTrainer  # deferred: private Ray names, fast mode only
    else:
        from ray.train.torch import TorchTrainer  # deferred: seconds to import, stock mode only
    return TorchTrainer


# ---------------------------------------------------------------- a sweep


@contextlib.contextmanager
def sweep(mode: Mode, sweep_name: str) -> Iterator[None]:
    """Around ``Tuner.fit()``: in fast mode the sweep's placement-group janitor and durable Tune state."""
    if not mode.fast:
        yield
        return
    from tune_app.fastpath.trainer import sweep_context  # deferred: private Ray names, fast mode only

    with sweep_context(sweep_name):
        yield


def reuse_actors(mode: Mode) -> bool:
    """Tune's ``reuse_actors``: a fast trial process runs the next trial on its warm workers."""
    return mode.fast


# ---------------------------------------------------------------- trackers


def wandb_callback_cls(mode: Mode) -> type:
    if mode.fast:
        from tune_app.fastpath.callbacks import PromptWandbLoggerCallback as cls  # deferred: private Ray names, fast mode only
    else:
        from ray.air.integrations.wandb import WandbLoggerCallback as cls  # deferred: seconds to import, stock mode only
    return cls


def mlflow_callback_cls(mode: Mode) -> type:
    if mode.fast:
        from tune_app.fastpath.callbacks import StepMLflowLoggerCallback as cls  # deferred: private Ray names, fast mode only
    else:
        from ray.air.integrations.mlflow import MLflowLoggerCallback as cls  # deferred: seconds to import, stock mode only
    return cls


# ---------------------------------------------------------------- logs


def quiet_auth_notice() -> None:
    """``ray.init`` announces the token mode it turned on with a warning (tune_app chose it on
    purpose); that logger is named after a private Ray module, so it is named here."""
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)


def name_logs(name: str) -> None:
    """In a trial's process or a Train worker: its forwarded log lines are prefixed with ``name`` (the
    trial's) from here on, on the tested series (Ray reads a marker line with a private prefix);
    elsewhere Ray's own prefix (the actor's class) stays."""
    if ray_series() in TESTED_RAY:
        from tune_app.fastpath.compat import name_log_prefix  # deferred: private Ray names, tested series only

        name_log_prefix(name)


def quiet_worker_logs(user_error_type: type[Exception]) -> None:
    """In a Train worker: Ray Train's per-report INFO lines and its traceback of a user mistake
    (the driver prints that as one line) are dropped, on the tested series (the loggers are
    named after Ray's private files); elsewhere Ray logs as it does."""
    if ray_series() in TESTED_RAY:
        from tune_app.fastpath.compat import quiet_train_logs  # deferred: private Ray names, tested series only

        quiet_train_logs(user_error_type)
