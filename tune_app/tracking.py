"""Experiment tracking: Weights & Biases and MLflow, configured from the config and the environment.

* Sweeps: Ray Tune's ``WandbLoggerCallback`` (one W&B run per trial, grouped by sweep) and an
  ``MLflowLoggerCallback`` that nests every trial's run under one parent run for the sweep.
* Single runs (``tune_app train``): :class:`TrainTrackingCallback` runs in the Ray Train controller
  and logs rank 0's reports, so a DDP job makes one run per tracker, never one per worker.

Secrets come only from the environment (``WANDB_API_KEY``, ``MLFLOW_TRACKING_TOKEN``,
``MLFLOW_TRACKING_USERNAME``/``PASSWORD``); they are never put in a config, param, tag or log line,
and credentials written into a tracking URI move to the environment (:func:`mlflow_uri`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from ray.train import UserCallback

from tune_app import fastpath
from tune_app.config import Config, flatten
from tune_app.errors import UserError, mask_secrets, split_uri_credentials
from tune_app.sweep.rundir import RunDir

log = logging.getLogger("tune_app.tracking")
PARENT_FILE = "mlflow_parent_run_id"
SWEEP_PARAMS_TAG = "tune_app.sweep_params"

# Numbers that are bookkeeping, not training curves.
NOT_METRICS = {"first_step_at", "time", "timestamp", "time_this_iter_s", "time_total_s", "time_since_restore",
               "pid", "iterations_since_restore", "done", "training_iteration"}


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


def mlflow_uri(cfg: Config, run_dir: str | Path) -> str:
    """The configured URI, else ``MLFLOW_TRACKING_URI``, else an embedded sqlite store in the run dir.

    Credentials written into the URI (``https://user:pw@host``) move to MLFLOW_TRACKING_USERNAME /
    PASSWORD in this process's environment (Ray's processes started later inherit it), where MLflow
    reads them; the URI returned carries none, so nothing built from it (a pickled callback, a
    tag, a log line) can leak the password."""
    uri = cfg.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        uri, user, password = split_uri_credentials(uri)
        if password and password != "***":       # "***": a config saved by tune_app, already masked
            os.environ.setdefault("MLFLOW_TRACKING_USERNAME", user)
            os.environ.setdefault("MLFLOW_TRACKING_PASSWORD", password)
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
        raise UserError(f"mlflow.tracking_uri {mask_secrets(uri)}: cannot reach the MLflow server ({reason}); "
                        "start it, fix the URI, or set mlflow.enabled=false") from None


def numeric_metrics(result: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in result.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in NOT_METRICS}


def sweep_callbacks(cfg: Config, sweep_name: str, run_dir: str, mode: fastpath.Mode, swept: list[str]) -> list:
    """The Tune logger callbacks the config asks for (none when both trackers are off): Ray's own
    in stock mode, the fast path's extensions of them otherwise (same arguments).

    Each trial's config is its whole training config (see ``Sweep.param_space``): W&B logs it as the
    run config, with ``sweep_params`` listing the ``swept`` keys; MLflow as params, with the swept
    keys also in the tag ``tune_app.sweep_params``."""
    callbacks: list = []
    if cfg.wandb.enabled and wandb_mode(cfg) != "disabled":
        kwargs = {"entity": cfg.wandb.entity} if cfg.wandb.entity else {}
        # The logging actors run on the driver's node but inherit the environment of the raylet, which on a
        # cluster started with `ray start` never saw WANDB_DIR: give wandb.init the run's folder itself.
        local = RunDir(run_dir).local_dir
        local.mkdir(parents=True, exist_ok=True)
        # upload_timeout: at the end Ray kills logging actors still writing after this long; a busy machine
        # or a slow upload needs minutes.
        callbacks.append(fastpath.wandb_callback_cls(mode)(
            project=cfg.wandb.project, group=sweep_name, tags=list(cfg.wandb.tags), mode=wandb_mode(cfg),
            excludes=sorted(NOT_METRICS), upload_timeout=300, dir=str(local), **kwargs))
    if cfg.mlflow.enabled:
        uri = mlflow_uri(cfg, run_dir)
        experiment = cfg.mlflow.experiment_name or sweep_name
        tags = {**cfg.mlflow.tags, "tune_app.sweep": sweep_name}
        parent = start_mlflow_parent(cfg, uri, experiment, tags, sweep_name, run_dir)
        trial_tags = {**tags, "mlflow.parentRunId": parent, SWEEP_PARAMS_TAG: ",".join(swept)}
        callbacks.append(fastpath.mlflow_callback_cls(mode)(
            tracking_uri=uri, experiment_name=experiment, tags=trial_tags, save_artifact=False))
    return callbacks


def start_mlflow_parent(cfg: Config, uri: str, experiment: str, tags: dict[str, str], sweep_name: str, run_dir: str) -> str:
    """The sweep's parent run (every trial's run is nested under it through ``mlflow.parentRunId``):
    made once and its id kept in the run directory, so a resumed sweep keeps the same tree. The
    experiment is made here first, so that its artifacts live where the run directory says."""
    from mlflow.tracking import MlflowClient

    rd = RunDir(run_dir)
    known = (rd.read_text(PARENT_FILE) or "").strip()
    if known:
        return known
    client = MlflowClient(tracking_uri=uri)
    exp_id = _ensure_experiment(client, experiment, _default_artifacts(cfg, run_dir))
    parent = client.create_run(exp_id, run_name=sweep_name, tags={**tags, "tune_app.role": "sweep"}).info.run_id
    rd.write_text(PARENT_FILE, parent)
    log_params(client, parent, _base_params(run_dir))
    return parent


def log_params(client, run_id: str, params: dict[str, Any]) -> None:
    """All of ``params`` on a run, in MLflow's batches of at most 100."""
    from mlflow.entities import Param

    items = [Param(k, str(v)) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i:i + 100])


def _base_params(run_dir: str) -> dict[str, Any]:
    import yaml

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
        return f"MLflow: {mask_secrets(uri)}"
    return f"MLflow runs are in {uri}; open them with: mlflow ui --backend-store-uri {uri}"


# ---------------------------------------------------------------- single runs


def train_callbacks(cfg: Config, run_dir: str | Path) -> list:
    if not (cfg.mlflow.enabled or (cfg.wandb.enabled and wandb_mode(cfg) != "disabled")):
        return []
    return [TrainTrackingCallback(cfg, str(run_dir))]


class TrainTrackingCallback(UserCallback):
    """One W&B run and one MLflow run for a ``tune_app train`` job, fed with rank 0's reports.

    It lives in the Ray Train controller (one process per job), so however many DDP workers there
    are, each tracker sees exactly one run.
    """

    def __init__(self, cfg: Config, run_dir: str):
        self.cfg, self.run_dir = cfg, run_dir
        self._wandb = None
        self._mlflow_run = None
        self._client = None

    def _start(self) -> None:
        cfg = self.cfg
        params = cfg.flat()            # the tracking URI's password is masked there
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
            log_params(self._client, self._mlflow_run, params)

    def after_report(self, run_context, metrics, checkpoint) -> None:
        try:
            if self._wandb is None and self._mlflow_run is None:
                self._start()
            rank0 = metrics[0]
            values = numeric_metrics(rank0)
            step = int(rank0.get("step", 0))
            if self._wandb is not None:
                self._wandb.log(values, step=step)
            if self._mlflow_run is not None:
                import time as _time

                from mlflow.entities import Metric

                now = int(_time.time() * 1000)
                self._client.log_batch(self._mlflow_run, metrics=[Metric(k, v, now, step) for k, v in values.items()])
            if step >= self.cfg.training.steps:
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
