"""What the fast path expects of Ray's internals, checked before it is used, and two small
workarounds that read Ray's private state on the tested series only.

:func:`check` imports every fast-path module (an import error is a mismatch), confirms that the
module-level names it swaps are the classes it expects, and that every private method it overrides
or calls exists. Any miss is one line, and the driver falls back to stock mode.
"""

from __future__ import annotations

import logging
import sys

# Private names the fast path uses, by owner (the README lists them with the Ray versions checked).
EXPECTED_METHODS = {
    "ray.tune.execution.tune_controller.TuneController": ("add_trial", "_set_trial_status", "checkpoint"),
    "ray.train.v2._internal.execution.worker_group.worker_group.WorkerGroup": (
        "_start_impl", "_create_placement_group", "_create_workers", "_assign_worker_ranks", "shutdown",
        "get_latest_poll_status", "get_worker_group_state", "has_started", "get_workers"),
    "ray.train.v2._internal.execution.controller.TrainController": ("run", "get_result", "get_state", "_set_state"),
    "ray.train.torch.TorchTrainer": ("_create_default_callbacks", "_initialize_and_run_controller"),
    "ray.air.integrations.wandb.WandbLoggerCallback": ("_cleanup_logging_actor", "_signal_logging_actor_stop",
                                                      "on_experiment_end", "log_trial_start"),
    "ray.air.integrations.mlflow.MLflowLoggerCallback": ("log_trial_start", "log_trial_result", "log_trial_end"),
    "ray.train.v2._internal.execution.checkpoint.sync_actor.SynchronizationActor": (),
}
# (module, name, class it must be): the names the fast path points at a stand-in during one call.
SWAPPED = (
    ("ray.tune.tune", "TuneController", "ray.tune.execution.tune_controller.TuneController"),
    ("ray.train.v2._internal.execution.worker_group.worker_group", "SynchronizationActor",
     "ray.train.v2._internal.execution.checkpoint.sync_actor.SynchronizationActor"),
)


def _resolve(dotted: str):
    import importlib

    module, _, name = dotted.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except AttributeError:
        # A class re-exported by a package (TrainController) or nested below a module.
        parent, _, owner = module.rpartition(".")
        return getattr(getattr(importlib.import_module(parent), owner), name)


def check() -> str | None:
    """``None`` when the running Ray has everything the fast path uses; else what is missing."""
    try:
        import tune_app.fastpath.callbacks  # noqa: F401 - importing is part of the check
        import tune_app.fastpath.janitor  # noqa: F401
        import tune_app.fastpath.trainer  # noqa: F401
        import tune_app.fastpath.tune_state  # noqa: F401
        import tune_app.fastpath.warm_workers  # noqa: F401

        for owner, methods in EXPECTED_METHODS.items():
            cls = _resolve(owner)
            missing = [m for m in methods if not callable(getattr(cls, m, None))]
            if missing:
                return f"{owner} has no {', '.join(missing)}"
        for module, name, expected in SWAPPED:
            if problem := swap_target_problem(module, name, expected):
                return problem
        from ray.air.integrations.wandb import WandbLoggerCallback

        if not isinstance(getattr(WandbLoggerCallback, "_logger_actor_cls", None), type):
            return "WandbLoggerCallback has no _logger_actor_cls"
    except (ImportError, AttributeError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def swap_target_problem(module: str, name: str, expected: str) -> str | None:
    import importlib

    current = getattr(importlib.import_module(module), name, None)
    if current is not _resolve(expected):
        return f"{module}.{name} is {current!r}, not {expected}"
    return None


def wait_for_stock_reports(poll_s: float = 0.05) -> None:
    """Block until Train->Tune's queue of the current trial is empty (see ``fastpath._settle_stock_reports``)."""
    import time

    from ray.train._internal.session import get_session

    session = get_session()
    queue = getattr(session, "_inter_actor_queue", None) if session is not None else None
    while queue is not None and not queue.empty():
        time.sleep(poll_s)


class _DropUserErrorTracebacks(logging.Filter):
    """Drops Ray Train's "Error in training function" traceback of a user mistake (``marker``: its type)."""

    def __init__(self, marker: str):
        super().__init__()
        self.marker = marker

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not (text.startswith("Error in training function") and self.marker in text)


def quiet_train_logs(user_error_type: type[Exception]) -> None:
    """Ray Train logs every report at INFO through a logger named after its context file (its
    ``LoggingConfig`` level does not reach it), and a worker's exception through the logger of its
    util module: the first is lowered to WARNING, the second skips a ``user_error_type``."""
    try:
        from ray.train.v2._internal.execution import context as train_context
    except ImportError:
        return
    logging.getLogger(train_context.__file__).setLevel(logging.WARNING)
    util_logger = logging.getLogger("ray.train.v2._internal.util")
    if not any(isinstance(f, _DropUserErrorTracebacks) for f in util_logger.filters):
        util_logger.addFilter(_DropUserErrorTracebacks(f"{user_error_type.__module__}.{user_error_type.__name__}: "))


class _OneLineTransientWarning(logging.Filter):
    """A warning Ray Train itself calls transient ("safe to ignore") is logged as its line and the
    exception's type and message, without the traceback (a sweep on a busy machine printed dozens)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.levelno == logging.WARNING and "safe to ignore" in record.getMessage():
            exc = record.exc_info[1]
            record.msg, record.args = f"{record.getMessage()} ({type(exc).__name__}: {exc})", ()
            record.exc_info, record.exc_text = None, None
        return True


# The loggers of the Train controller's resource requests (Ray 2.60's private module paths).
RESOURCE_REQUEST_LOGGERS = ("ray.train.v2._internal.execution.scaling_policy.autoscaling_coordinator_client",
                            "ray.train.v2._internal.execution.scaling_policy.elastic")


def one_line_transient_warnings() -> None:
    """Where a Train controller runs: its resource-request retries warn in one line (see the filter)."""
    for name in RESOURCE_REQUEST_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _OneLineTransientWarning) for f in logger.filters):
            logger.addFilter(_OneLineTransientWarning())


def name_log_prefix(name: str) -> None:
    """Ray prefixes a worker's forwarded log lines with its actor's name, which its log monitor reads
    from a marker line in the worker's output (``ray_constants.LOG_PREFIX_ACTOR_NAME``); printing the
    marker again renames the prefix from here on (a reused actor runs a new trial)."""
    from ray._private import ray_constants

    marker = getattr(ray_constants, "LOG_PREFIX_ACTOR_NAME", None)
    if marker:
        for stream in (sys.stdout, sys.stderr):
            print(f"{marker}{name}", file=stream, flush=True)
