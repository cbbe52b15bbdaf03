"""Experiment tracking: Weights & Biases and MLflow, configured from the config and the environment.

* Sweeps: Ray Tune's ``WandbLoggerCallback`` (one W&B run per trial, grouped by sweep) and an
  ``MLflowLoggerCallback`` that nests every trial's run under one parent run for the sweep.
* Single runs (``tune_app train``): :class:`TrainTrackingCallback` runs in the Ray Train controller
  and logs rank 0's reports, so a DDP job makes one run per tracker, never one per worker.

Secrets come only from the environment (``WANDB_API_KEY``, ``MLFLOW_TRACKING_TOKEN``,
``MLFLOW_TRACKING_USERNAME``/``PASSWORD``); they are never put in a config, param, tag or log line,
and :func:`redact_uri` strips credentials written into a tracking URI.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

from tune_app.config import Config
from tune_app.errors import UserError, mask_secrets
from tune_app.sweep.rundir import RunDir

log = logging.getLogger("tune_app.tracking")
PARENT_FILE = "mlflow_parent_run_id"

# Numbers that are bookkeeping, not training curves.
NOT_METRICS = {"first_step_at", "time", "timestamp", "time_this_iter_s", "time_total_s", "time_since_restore",
               "pid", "iterations_since_restore", "done", "training_iteration"}


def redact_uri(uri: str | None) -> str | None:
    """``https://user:secret@host/`` -> ``https://user:***@host/``."""
    return mask_secrets(uri)


# ---------------------------------------------------------------- W&B


def wandb_mode(cfg: Config) -> str:
    """``WANDB_MODE`` when the user set it (it wins, as in wandb itself), else ``wandb.mode``;
    ``online`` needs WANDB_API_KEY: without one, runs are written offline for ``wandb sync``."""
    mode = _USER_WANDB_MODE or cfg.wandb.mode
    if mode == "online" and not os.environ.get("WANDB_API_KEY"):
        return "offline"
    return mode


# WANDB_MODE as the user's environment had it when tune_app started (prepare_environment sets it after).
_USER_WANDB_MODE = os.environ.get("WANDB_MODE") if os.environ.get("WANDB_MODE") in ("online", "offline", "disabled") \
    else ("disabled" if os.environ.get("WANDB_MODE") == "dryrun" else None)


def prepare_environment(cfg: Config, run_dir: str | Path) -> None:
    """Set what W&B reads from the environment; must run before ``ray.init`` (actors inherit it).

    W&B writes into the run directory (``<run dir>/wandb``; for a bucket run, its local working copy,
    uploaded with the results), so offline runs stay with the sweep they belong to."""
    if cfg.wandb.enabled:
        os.environ["WANDB_MODE"] = wandb_mode(cfg)
        os.environ.setdefault("WANDB_DIR", str(RunDir(run_dir).local_dir))
        os.environ.setdefault("WANDB_SILENT", "true")


def wandb_offline_dirs(run_dir: str | Path) -> list[Path]:
    root = Path(os.environ.get("WANDB_DIR") or RunDir(run_dir).local_dir) / "wandb"
    return sorted(root.glob("offline-run-*"))


def sync_hint(run_dir: str | Path) -> str | None:
    dirs = wandb_offline_dirs(run_dir)
    if not dirs:
        return None
    rd = RunDir(run_dir)
    where = f"{dirs[0].parent} (also uploaded to {rd}/wandb)" if rd.remote else str(dirs[0].parent)
    return f"W&B runs were written offline to {where}; upload them with: wandb sync {dirs[0].parent}/offline-run-*"


# ---------------------------------------------------------------- MLflow


_URI_CREDENTIALS = re.compile(r"^(https?://)([^:/@\s]+):([^@/\s]+)@(.+)$")


def mlflow_uri(cfg: Config, run_dir: str | Path) -> str:
    """The configured URI, else ``MLFLOW_TRACKING_URI``, else an embedded sqlite store in the run dir.

    Credentials written into the URI (``https://user:pw@host``) move to MLFLOW_TRACKING_USERNAME /
    PASSWORD in this process's environment (Ray's processes started later inherit it), where MLflow
    reads them; the URI returned carries none, so nothing built from it (a pickled callback, a
    tag, a log line) can leak the password."""
    uri = cfg.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri and (m := _URI_CREDENTIALS.match(uri)):
        scheme, user, password, rest = m.groups()
        if password != "***":                    # "***": a config saved by tune_app, already masked
            os.environ.setdefault("MLFLOW_TRACKING_USERNAME", user)
            os.environ.setdefault("MLFLOW_TRACKING_PASSWORD", password)
        uri = scheme + rest
    return uri or f"sqlite:///{RunDir(run_dir).local_dir / 'mlflow.db'}"


def _default_artifacts(cfg: Config, run_dir: str | Path) -> str | None:
    """With the default sqlite store, artifacts go beside it in the run directory (MLflow's own default
    is ./mlruns in whatever the current directory is); a server decides for itself."""
    if cfg.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"):
        return None
    return (RunDir(run_dir).local_dir / "mlflow-artifacts").as_uri()


def _ensure_experiment(client, name: str, artifact_location: str | None) -> str:
    exp = client.get_experiment_by_name(name)
    return exp.experiment_id if exp else client.create_experiment(name, artifact_location=artifact_location)


def check_mlflow(uri: str, timeout_s: int = 5) -> None:
    """Fail before anything starts when a tracking server cannot be reached (one line, exit 2)."""
    if not uri.startswith(("http://", "https://")):
        return
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(timeout_s))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except Exception as exc:  # noqa: BLE001 - any failure here means "not usable"
        reason = mask_secrets(str(exc).splitlines()[0][:160]) if str(exc) else type(exc).__name__
        raise UserError(f"mlflow.tracking_uri {redact_uri(uri)}: cannot reach the MLflow server ({reason}); "
                        "start it, fix the URI, or set mlflow.enabled=false") from None


def _numeric(result: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in result.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in NOT_METRICS}


def sweep_callbacks(cfg: Config, sweep_name: str, run_dir: str) -> list:
    """The Tune logger callbacks the config asks for (none when both trackers are off)."""
    callbacks: list = []
    if cfg.wandb.enabled and wandb_mode(cfg) != "disabled":
        kwargs = {"entity": cfg.wandb.entity} if cfg.wandb.entity else {}
        # The logging actors run on the driver's node but inherit the environment of the raylet, which on a
        # cluster started with `ray start` never saw WANDB_DIR: give wandb.init the run's folder itself.
        local = RunDir(run_dir).local_dir
        local.mkdir(parents=True, exist_ok=True)
        kwargs["dir"] = str(local)
        callbacks.append(_wandb_callback_class()(
            project=cfg.wandb.project, group=sweep_name, tags=list(cfg.wandb.tags), mode=wandb_mode(cfg),
            # At the end Ray kills logging actors still writing after this long: a busy machine or a slow
            # upload needs minutes (30 s lost a trial's history under CI load). Ctrl-C stays prompt:
            # PromptWandbLoggerCallback tells running trials' actors to finish first.
            excludes=sorted(NOT_METRICS), upload_timeout=300, **kwargs))
    if cfg.mlflow.enabled:
        callbacks.append(make_sweep_mlflow_callback(cfg, sweep_name, run_dir))
    return callbacks


def _wandb_callback_class():
    from ray.air.integrations.wandb import WandbLoggerCallback

    class QuietWandbLoggingActor(WandbLoggerCallback._logger_actor_cls):
        """Ray's logging actor, plus ``wandb.teardown()`` once its run is finished: the actor then exits
        with wandb's service closed. Otherwise wandb's own exit hook tries to close a service that the
        exiting actor process has already lost and prints a ConnectionResetError traceback per trial."""

        def run(self):
            super().run()
            self._wandb.teardown()

    class PromptWandbLoggerCallback(WandbLoggerCallback):
        """Ends promptly when a sweep is interrupted.

        Ray's callback waits up to ``upload_timeout`` for every trial's logging actor at the end of
        an experiment, but the actors of trials still running (Ctrl-C) are never told to finish, so
        it always waits the whole timeout and then kills them mid-write. Tell them first.
        """

        def _cleanup_logging_actor(self, trial):
            # Ray kills a trial's logging actor the moment its run() (ending in wandb.finish()) returns,
            # but wandb's service may still be closing the run file then: a killed actor lost a whole
            # trial's offline history under load. Let the actor exit on its own (its atexit hooks
            # finish wandb) before Ray's kill, which then finds it gone.
            import ray

            actor = self._trial_logging_actors.get(trial)
            if actor is not None:
                try:
                    ray.get(actor.__ray_terminate__.remote(), timeout=60)
                except Exception:  # noqa: BLE001 - the actor exiting is the expected outcome
                    pass
            super()._cleanup_logging_actor(trial)

        _logger_actor_cls = QuietWandbLoggingActor

        def on_experiment_end(self, trials, **info):
            for trial in list(self._trial_queues):
                try:
                    self._signal_logging_actor_stop(trial)
                except Exception:  # noqa: BLE001 - an actor already gone needs no signal
                    pass
            super().on_experiment_end(trials, **info)

    return PromptWandbLoggerCallback


def make_sweep_mlflow_callback(cfg: Config, sweep_name: str, run_dir: str):
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    class SweepMLflowCallback(MLflowLoggerCallback):
        """Trial runs nested under one parent run per sweep; metrics stepped by optimizer step;
        a tracking server that goes away mid-sweep costs warnings, not the sweep."""

        def __init__(self):
            super().__init__(tracking_uri=mlflow_uri(cfg, run_dir), experiment_name=cfg.mlflow.experiment_name or sweep_name,
                             tags={**cfg.mlflow.tags, "tune_app.sweep.run": sweep_name}, save_artifact=False)
            self.parent_run_id: str | None = None

        def setup(self, *args, **kwargs):
            from mlflow.tracking import MlflowClient

            # The experiment is made here first, so that its artifacts live where the run directory says.
            _ensure_experiment(MlflowClient(tracking_uri=self.tracking_uri), self.experiment_name,
                               _default_artifacts(cfg, run_dir))
            super().setup(*args, **kwargs)
            rd = RunDir(run_dir)
            known = (rd.read_text(PARENT_FILE) or "").strip()
            if known:                          # resume: keep the same tree
                self.parent_run_id = known
            else:
                run = self.mlflow_util.start_run(run_name=sweep_name, tags={**self.tags, "tune_app.role": "sweep"})
                self.parent_run_id = run.info.run_id
                rd.write_text(PARENT_FILE, self.parent_run_id)
                self.mlflow_util.log_params(run_id=self.parent_run_id, params_to_log=_base_params(run_dir))

        def log_trial_start(self, trial):
            if trial not in self._trial_runs:
                tags = {**self.tags, "trial_name": str(trial), "mlflow.parentRunId": self.parent_run_id}
                self._safely("start run", lambda: self._trial_runs.__setitem__(
                    trial, self.mlflow_util.start_run(tags=tags, run_name=str(trial)).info.run_id))
            if trial in self._trial_runs:
                self._safely("log params", lambda: self.mlflow_util.log_params(
                    run_id=self._trial_runs[trial], params_to_log=trial.config))

        def log_trial_result(self, iteration, trial, result):
            if trial not in self._trial_runs:
                return
            step = int(result.get("step", iteration))
            self._safely("log metrics", lambda: self.mlflow_util.log_metrics(
                run_id=self._trial_runs[trial], metrics_to_log=_numeric(result), step=step))

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

    return SweepMLflowCallback()


def _base_params(run_dir: str) -> dict[str, Any]:
    import yaml

    from tune_app.config import flatten

    text = RunDir(run_dir).read_text("base_config.yaml")
    return flatten(yaml.safe_load(text) or {}) if text else {}


def finish_mlflow_parent(cfg: Config, sweep_name: str, run_dir: str, best: dict[str, Any] | None, fs=None) -> None:
    """Log the best trial's config and checkpoint on the sweep's parent run and close it. The files
    come from the run's local copy (``run_dir`` itself, or the working copy of a bucket run)."""
    rd = RunDir(run_dir, fs=fs)
    parent = (rd.read_text(PARENT_FILE) or "").strip() if cfg.mlflow.enabled else ""
    if not parent:
        return
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_uri(cfg, run_dir))
    local = rd.local_dir
    try:
        if best:
            client.set_tag(parent, "best_trial", best["name"])
            if best.get("metric") is not None:
                client.log_metric(parent, f"best_{best['metric_name']}", float(best["metric"]))
            for name in ("best_config.yaml", "summary.json"):
                if (local / name).is_file():
                    client.log_artifact(parent, str(local / name))
            if (local / "best").is_dir():
                client.log_artifacts(parent, str(local / "best"), artifact_path="best_checkpoint")
        client.set_terminated(parent, "FINISHED")
    except Exception as exc:  # noqa: BLE001
        log.warning("MLflow: could not finish the sweep's parent run: %s", str(exc).splitlines()[0][:200])


def mlflow_ui_hint(cfg: Config, run_dir: str) -> str | None:
    if not cfg.mlflow.enabled:
        return None
    uri = mlflow_uri(cfg, run_dir)
    if uri.startswith(("http://", "https://")):
        return f"MLflow: {redact_uri(uri)}"
    return f"MLflow runs are in {uri}; open them with: mlflow ui --backend-store-uri {uri}"


# ---------------------------------------------------------------- single runs


def train_callbacks(cfg: Config, run_dir: str | Path) -> list:
    if not (cfg.mlflow.enabled or (cfg.wandb.enabled and wandb_mode(cfg) != "disabled")):
        return []
    return [TrainTrackingCallback(cfg.to_dict(), str(run_dir))]


try:
    from ray.train import UserCallback as _UserCallback
except ImportError:  # pragma: no cover - ray is a dependency
    _UserCallback = object


class TrainTrackingCallback(_UserCallback):
    """One W&B run and one MLflow run for a ``tune_app train`` job, fed with rank 0's reports.

    It lives in the Ray Train controller (one process per job), so however many DDP workers there
    are, each tracker sees exactly one run.
    """

    def __init__(self, config: dict[str, Any], run_dir: str):
        self.config, self.run_dir = config, run_dir
        self._wandb = None
        self._mlflow_run = None
        self._client = None

    def _start(self) -> None:
        from tune_app.config import config_from_dict, flatten

        cfg = config_from_dict(self.config)
        params = flatten(self.config)
        params["mlflow.tracking_uri"] = redact_uri(params.get("mlflow.tracking_uri"))
        name = cfg.wandb.run_name or Path(cfg.training.output_dir).name
        if cfg.wandb.enabled and wandb_mode(cfg) != "disabled":
            import wandb

            self._wandb = wandb.init(project=cfg.wandb.project, entity=cfg.wandb.entity, name=name,
                                     tags=list(cfg.wandb.tags), config=params, mode=wandb_mode(cfg),
                                     dir=self.run_dir, reinit="create_new")
        if cfg.mlflow.enabled:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=mlflow_uri(cfg, self.run_dir))
            exp_id = _ensure_experiment(self._client, cfg.mlflow.experiment_name or "tune_app-train",
                                        _default_artifacts(cfg, self.run_dir))
            self._mlflow_run = self._client.create_run(exp_id, run_name=name, tags={**cfg.mlflow.tags, "tune_app.role": "train"}).info.run_id
            for key, value in params.items():
                self._client.log_param(self._mlflow_run, key, value)

    def after_report(self, run_context, metrics, checkpoint) -> None:
        try:
            if self._wandb is None and self._mlflow_run is None:
                self._start()
            rank0 = metrics[0]
            values = _numeric(rank0)
            step = int(rank0.get("step", 0))
            if self._wandb is not None:
                self._wandb.log(values, step=step)
            if self._mlflow_run is not None:
                import time as _time

                from mlflow.entities import Metric

                now = int(_time.time() * 1000)
                self._client.log_batch(self._mlflow_run, metrics=[Metric(k, v, now, step) for k, v in values.items()])
            if step >= int(self.config["training"]["steps"]):
                self._finish("FINISHED")
        except Exception as exc:  # noqa: BLE001 - tracking must never stop training
            log.warning("tracking failed (training continues): %s", str(exc).splitlines()[0][:200])

    def after_exception(self, run_context, worker_exceptions) -> None:
        self._finish("FAILED")

    def _finish(self, status: str) -> None:
        if self._wandb is not None:
            self._wandb.finish(exit_code=0 if status == "FINISHED" else 1)
            self._wandb = None
        if self._mlflow_run is not None:
            self._client.set_terminated(self._mlflow_run, status)
            self._mlflow_run = None
