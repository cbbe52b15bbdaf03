"""Ray's W&B and MLflow logger callbacks, extended where they reach into Ray's private state.

* :class:`PromptWandbLoggerCallback`: ends promptly when a sweep is interrupted, and lets each
  trial's logging actor finish wandb before Ray kills it.
* :class:`StepMLflowLoggerCallback`: metrics stepped by optimizer step (not report count), and a
  tracking server that goes away mid-sweep costs warnings, not the sweep.

Both take Ray's constructor arguments; stock mode uses Ray's classes with the same arguments.
"""

from __future__ import annotations

import logging

import ray
from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.air.integrations.wandb import WandbLoggerCallback

from tune_app.tracking import log_params, numeric_metrics

log = logging.getLogger("tune_app.tracking")


class QuietWandbLoggingActor(WandbLoggerCallback._logger_actor_cls):
    """Ray's logging actor plus ``wandb.teardown()`` once its run is finished, so the actor exits with
    wandb's service closed (else wandb's exit hook prints a ConnectionResetError traceback per trial)."""

    def run(self):
        super().run()
        self._wandb.teardown()


class PromptWandbLoggerCallback(WandbLoggerCallback):
    """Ray's callback waits ``upload_timeout`` for every logging actor at the end of an experiment,
    but actors of trials still running (Ctrl-C) are never told to finish: tell them first. And a
    trial's actor exits by itself (its exit hooks finish wandb's run file) before Ray's kill."""

    _logger_actor_cls = QuietWandbLoggingActor

    def _cleanup_logging_actor(self, trial):
        actor = self._trial_logging_actors.get(trial)
        if actor is not None:
            try:
                ray.get(actor.__ray_terminate__.remote(), timeout=60)
            except Exception:  # noqa: BLE001 - the actor exiting is the expected outcome
                pass
        super()._cleanup_logging_actor(trial)

    def on_experiment_end(self, trials, **info):
        for trial in list(self._trial_queues):
            try:
                self._signal_logging_actor_stop(trial)
            except Exception:  # noqa: BLE001 - an actor already gone needs no signal
                pass
        super().on_experiment_end(trials, **info)


class StepMLflowLoggerCallback(MLflowLoggerCallback):
    """Ray's MLflow callback, stepped by the loop's ``step`` and tolerant of a server that goes away."""

    def log_trial_start(self, trial):
        self._safely("start run", lambda: self._start_run(trial))

    def _start_run(self, trial) -> None:
        """As Ray's, but the trial's config (the whole training config, ~80 keys) goes in batches of
        100 params per request instead of one request per param."""
        from mlflow.tracking import MlflowClient
        from ray.tune.utils import flatten_dict

        if trial not in self._trial_runs:
            run = self.mlflow_util.start_run(tags={**self.tags, "trial_name": str(trial)}, run_name=str(trial))
            self._trial_runs[trial] = run.info.run_id
        log_params(MlflowClient(tracking_uri=self.tracking_uri), self._trial_runs[trial], flatten_dict(trial.config))

    def log_trial_result(self, iteration, trial, result):
        if trial not in self._trial_runs:
            return
        step = int(result.get("step", iteration))
        self._safely("log metrics", lambda: self.mlflow_util.log_metrics(
            run_id=self._trial_runs[trial], metrics_to_log=numeric_metrics(result), step=step))

    def log_trial_end(self, trial, failed=False):
        if trial in self._trial_runs:
            self._safely("end run", lambda: self.mlflow_util.end_run(
                run_id=self._trial_runs[trial], status="FAILED" if failed else "FINISHED"))

    @staticmethod
    def _safely(what: str, fn) -> None:
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - tracking must never stop training
            log.warning("MLflow %s failed (training continues): %s", what, str(exc).splitlines()[0][:200])
