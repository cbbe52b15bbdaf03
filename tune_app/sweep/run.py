"""Running a sweep: the Tuner over :func:`tune_app.trainable.run_trial`, its run directory, resume.

Run directory (``<storage>/<name>/``, ``runs/<name>/`` by default)::

    tuner.pkl, experiment_state-*.json, <trial dirs>/   Tune's own state and per-trial results
    trials/train-<trial_id>/checkpoint_000100/          each trial's Train run and checkpoints
    sweep.json                                          what resume and status need
    base_config.yaml                                    the resolved base training config
    best_config.yaml, best/, summary.json, report.html  written when the sweep ends
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tune_app.checks import check_writable_dir
from tune_app.cluster.connect import Connection
from tune_app.config import Config, build_config, save_config
from tune_app.errors import UserError, find_user_error
from tune_app.policy.manifest import is_complete_fs
from tune_app.sweep.rundir import RunDir
from tune_app.sweep.space import Sweep, trial_name
from tune_app.yamlio import load_yaml

SWEEP_FILE = "sweep.json"
# What a bucket sweep keeps in its local working copy while it runs, uploaded at the end.
LOCAL_STORES = ["mlflow.db", "mlflow-artifacts", "wandb"]


class TrialNamer:
    """Names trials after their parameters (``lr=5e-05,kl_weight=10``); picklable for tuner.pkl."""

    def __init__(self, keys: list[str]):
        self.keys = keys

    def __call__(self, trial) -> str:
        return trial_name(trial.config, self.keys)


class TrialDirNamer(TrialNamer):
    def __call__(self, trial) -> str:
        return f"{trial.trial_id}_{trial_name(trial.config, self.keys)}"[:120]


def _progress_callback(keys: list[str], total_steps: int, metric: str, events_file: str | None):
    from ray.tune import Callback

    class ProgressPrinter(Callback):
        """One line per trial report, start and end, instead of Tune's periodic tables; trial
        start/end times go to ``trial_events.jsonl`` (start-up and efficiency measurements)."""

        def __init__(self):
            self.start = time.monotonic()

        def _event(self, trial, event: str) -> None:
            if events_file:
                with open(events_file, "a") as f:
                    f.write(json.dumps({"trial_id": trial.trial_id, "event": event, "time": time.time()}) + "\n")

        def _say(self, trial, text: str) -> None:
            print(f"[{time.monotonic() - self.start:6.1f}s] {trial_name(trial.config, keys)}: {text}", flush=True)

        def on_trial_start(self, iteration, trials, trial, **info):
            self._event(trial, "start")
            self._say(trial, "started")

        def on_trial_result(self, iteration, trials, trial, result, **info):
            parts = [f"step {result.get('step', '?')}/{total_steps}"]
            parts += [f"{k} {result[k]:.4g}" for k in ("loss", metric) if isinstance(result.get(k), (int, float))]
            self._say(trial, " | ".join(parts))

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._event(trial, "complete")
            self._say(trial, "finished")

        def on_trial_error(self, iteration, trials, trial, **info):
            self._event(trial, "error")
            self._say(trial, f"FAILED (see {trial.local_path}/error.txt)")

    return ProgressPrinter()


def default_concurrency(sweep: Sweep, conn: Connection) -> int:
    """As many trials at once as the cluster's CPUs (and GPUs) hold; a trial that can never fit is an error."""
    from tune_app.trainable import worker_resources

    use_gpu, res = worker_resources(sweep.base, conn.num_gpus)
    per_trial_cpu = sweep.base.ray.num_workers * res["CPU"]
    if per_trial_cpu > conn.num_cpus:
        raise UserError(f"one trial needs {per_trial_cpu:g} CPUs (ray.num_workers x ray.cpus_per_worker) but the "
                        f"Ray cluster has {conn.num_cpus:g}; lower them or add nodes")
    slots = int(conn.num_cpus // per_trial_cpu)
    if use_gpu:
        slots = min(slots, int(conn.num_gpus // (sweep.base.ray.num_workers * res["GPU"])))
    return max(1, slots)


def run_dir_for(sweep: Sweep) -> str:
    storage = sweep.storage_path or str(Path("runs").resolve())
    return str(RunDir(f"{storage.rstrip('/')}/{sweep.name}"))


def sweep_exists(run_dir: str) -> bool:
    """Whether ``run_dir`` holds a sweep that ``resume`` can continue."""
    rd = RunDir(run_dir)
    return rd.exists(SWEEP_FILE) and rd.exists("tuner.pkl")


def fingerprint(sweep: Sweep) -> str:
    """What makes a sweep this sweep: its search-space file's content and the resolved base config."""
    blob = json.dumps({"space": sweep.raw, "base": sweep.base.to_dict()}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def check_same_sweep(sweep: Sweep, run_dir: str) -> None:
    """``--resume-existing``: the stored sweep must be this one, not an older one under the same name."""
    try:
        stored = json.loads(RunDir(run_dir).read_text(SWEEP_FILE) or "{}").get("fingerprint")
    except (ValueError, UnicodeDecodeError, AttributeError):
        stored = None
    if stored != fingerprint(sweep):
        raise UserError(f"--resume-existing: {run_dir} holds a sweep '{sweep.name}' with another search space or base "
                        "config; start over with --overwrite, or give the sweep a new name (--name, or sweep_name on OSMO)")


def check_run_dir(sweep: Sweep, overwrite: bool) -> str:
    """Where the sweep will live, checked without writing: writable, and either free or (with
    ``overwrite``) an earlier tune_app sweep. Returns the run directory."""
    run_dir = run_dir_for(sweep)
    rd = RunDir(run_dir)
    if not rd.remote:
        check_writable_dir(rd.path, "--storage")
        if rd.path.is_symlink():
            raise UserError(f"{rd.path} is a symbolic link; tune_app does not write through it. Pick another --name or --storage")
        if not (rd.path.exists() and any(rd.path.iterdir())):
            return run_dir
        if not _is_tune_app_run(rd):
            raise UserError(f"{rd.path} exists and is not a tune_app sweep (no valid {SWEEP_FILE}); tune_app will not "
                            "write into or delete it. Pick another --name or --storage")
    else:
        local = rd.local_dir
        if local.exists() and any(local.iterdir()) and not (local / SWEEP_FILE).is_file():
            raise UserError(f"{local} (the local working copy of {run_dir}) exists and is not a tune_app sweep; "
                            "move it away or run from another folder")
        if not rd.exists(SWEEP_FILE):
            return run_dir
    if not overwrite and not sweep_exists(run_dir):
        raise UserError(f"{run_dir} holds a sweep named '{sweep.name}' that never started (no tuner.pkl); start over "
                        "with --overwrite, or pick another --name")
    if not overwrite:
        raise UserError(f"{run_dir} already holds a sweep named '{sweep.name}'; continue it with "
                        f"`python -m tune_app resume {run_dir}` (or run --resume-existing), start over with --overwrite, "
                        "or pick another --name")
    return run_dir


def _is_tune_app_run(rd: RunDir) -> bool:
    """Whether the run directory holds a ``sweep.json`` that tune_app wrote (the run's marker)."""
    try:
        meta = json.loads(rd.read_text(SWEEP_FILE) or "null")
    except (ValueError, UnicodeDecodeError, OSError):
        return False
    return isinstance(meta, dict) and meta.get("name") == rd.name and "parameters" in meta


def claim_run_dir(run_dir: str, overwrite: bool) -> None:
    """Make the run directory, deleting an earlier sweep there first when ``overwrite`` (only a
    folder that :func:`check_run_dir` found to be a tune_app sweep, directly below the storage root)."""
    rd = RunDir(run_dir)
    if overwrite and _is_tune_app_run(rd):
        rd.delete()
    rd.make()


def _write_sweep_files(run_dir: str, sweep: Sweep) -> dict[str, Any]:
    """Write sweep.json and base_config.yaml (what resume/status need); returns the sweep.json content."""
    import yaml

    meta = {"name": sweep.name, "source": str(sweep.source.resolve()), "method": sweep.method,
            "metric": sweep.metric, "mode": sweep.mode, "parameters": list(sweep.parameters),
            "total_steps": sweep.base.training.steps, "fingerprint": fingerprint(sweep), "raw": sweep.raw}
    rd = RunDir(run_dir)
    rd.write_text(SWEEP_FILE, json.dumps(meta, indent=2, default=str))
    rd.write_text("base_config.yaml", yaml.safe_dump(sweep.base.to_dict(), sort_keys=False))
    return meta


def _tuner(sweep_meta: dict, base, run_dir: str, conn: Connection, max_concurrent: int,
           sweep: Sweep | None = None, max_failures: int = 0):
    from ray import tune

    from tune_app.tracking import sweep_callbacks
    from tune_app.trainable import tune_trainable

    keys = sweep_meta["parameters"]
    storage, name = run_dir.rsplit("/", 1)
    trainable = tune_trainable(base, f"{run_dir}/trials", conn.num_gpus, janitor=_janitor_name(name))
    run_config = tune.RunConfig(
        name=name, storage_path=storage, verbose=0,
        # A trial whose node died is restarted (from its last checkpoint) up to this many times.
        failure_config=tune.FailureConfig(max_failures=max_failures),
        callbacks=[_progress_callback(keys, sweep_meta["total_steps"], sweep_meta["metric"],
                                      None if RunDir(run_dir).remote else f"{run_dir}/trial_events.jsonl"),
                   *sweep_callbacks(base, name, run_dir)],
    )
    if sweep is None:
        return tune.Tuner.restore(run_dir, trainable=trainable, resume_errored=True, resume_unfinished=True)
    tune_config = tune.TuneConfig(
        metric=sweep.metric, mode=sweep.mode, num_samples=sweep.num_samples,
        max_concurrent_trials=max_concurrent, scheduler=sweep.scheduler(), search_alg=sweep.search_alg(),
        trial_name_creator=TrialNamer(keys), trial_dirname_creator=TrialDirNamer(keys),
        # A finished trial's process (with the Train controller it hosts) runs the next trial.
        reuse_actors=True,
    )
    return tune.Tuner(trainable, param_space=sweep.param_space(), tune_config=tune_config, run_config=run_config)


def _janitor_name(sweep_name: str) -> str:
    return f"tune_app-janitor-{sweep_name}"


def _fit(tuner, run_dir: str):
    """``tuner.fit()`` with the sweep's placement-group janitor (tune_app/fastpath/janitor.py) alive around it."""
    import ray

    from tune_app.fastpath.janitor import start_janitor
    from tune_app.fastpath.tune_state import durable_state

    janitor = start_janitor(_janitor_name(run_dir.rsplit("/", 1)[1]))   # the handle keeps it alive
    try:
        with durable_state():
            return tuner.fit()
    finally:
        # Trial processes keep a finished run's workers for their next trial (tune_app/fastpath/warm_workers.py);
        # when the sweep is over nothing claims them, and a dead trial process cannot free them itself.
        try:
            ray.get(janitor.free_all.remote(), timeout=60)
        except Exception as exc:  # noqa: BLE001 - the cluster is going away: Ray frees them with the job
            print(f"tune_app: could not free the sweep's kept workers: {exc}", file=sys.stderr)


def default_max_failures() -> int:
    """Retry trials on a multi-node cluster (a node can go away); on one machine a failure is a bug to see."""
    from tune_app.cluster.connect import alive_nodes

    return 2 if len(alive_nodes()) > 1 else 0


def run_sweep(sweep: Sweep, conn: Connection, overwrite: bool = False, max_failures: int | None = None) -> dict[str, Any]:
    """Run ``sweep`` to the end on the connected cluster; returns the summary it writes.

    Everything is checked (run directory, trial size against the cluster) before the run
    directory is claimed and written. ``max_failures``: restarts per trial after a failure
    (default :func:`default_max_failures`).
    """
    run_dir = check_run_dir(sweep, overwrite)
    concurrency = sweep.max_concurrent_trials or default_concurrency(sweep, conn)
    retries = default_max_failures() if max_failures is None else max_failures
    claim_run_dir(run_dir, overwrite)
    try:
        meta = _write_sweep_files(run_dir, sweep)
        print(f"tune_app run: sweep '{sweep.name}' ({sweep.method}, {sweep.grid_size()} trial(s), up to {concurrency} at once, "
              f"{sweep.base.ray.num_workers} DDP worker(s) each) -> {run_dir}", flush=True)
        results = _fit(_tuner(meta, sweep.base, run_dir, conn, concurrency, sweep, retries), run_dir)
    except BaseException:
        if not sweep_exists(run_dir):      # Tune never saved its state: nothing to resume, so nothing is left behind
            _remove_run_dir(run_dir)
        raise
    return _finish_or_explain(run_dir, results)


def _remove_run_dir(run_dir: str) -> None:
    """Delete a run directory this sweep claimed (a tune_app sweep by its sweep.json, or empty)."""
    rd = RunDir(run_dir)
    if _is_tune_app_run(rd) or (not rd.remote and rd.path.is_dir() and not any(rd.path.iterdir())):
        rd.delete()


def _finish_or_explain(run_dir: str, results) -> dict[str, Any]:
    """:func:`finish`, then: when no trial produced the metric because of a user mistake raised inside
    the trials (a value only a worker could check), that mistake as one line."""
    summary = finish(run_dir)
    if not summary.get("best_trial") and results is not None:
        for error in getattr(results, "errors", None) or []:
            if (user := find_user_error(error)) is not None:
                raise UserError(f"every trial failed: {user}")
    return summary


@dataclass
class Resumable:
    """A sweep directory checked for ``resume``: its sweep file and base config read and valid."""

    run_dir: str
    meta: dict[str, Any]
    base: Config


def load_resumable(run_dir: str) -> Resumable:
    """Check (without Ray and without writing) that ``run_dir`` is a sweep ``resume`` can continue."""
    import yaml

    rd = RunDir(run_dir)
    run_dir = str(rd)
    if not rd.remote and not rd.path.is_dir():
        raise UserError(f"{run_dir}: no such sweep directory; give the directory `run` printed, e.g. runs/lr_grid")
    if not sweep_exists(run_dir):
        raise UserError(f"{run_dir}: not a tune_app sweep directory (no {SWEEP_FILE} and tuner.pkl); "
                        "give the directory `run` printed, e.g. runs/lr_grid")
    if not rd.remote:
        check_writable_dir(rd.path, "resume")
    source = f"{run_dir}/{SWEEP_FILE}"
    try:
        meta = json.loads(rd.read_text(SWEEP_FILE) or "null")
        base_raw = yaml.safe_load(rd.read_text("base_config.yaml") or "null")
    except (ValueError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise UserError(f"{source}: damaged sweep files ({type(exc).__name__}); the run directory cannot be resumed") from None
    if not isinstance(meta, dict) or not all(k in meta for k in ("name", "metric", "parameters", "total_steps")):
        raise UserError(f"{source}: not a tune_app sweep file; the run directory cannot be resumed")
    if not isinstance(base_raw, dict):
        raise UserError(f"{run_dir}/base_config.yaml: missing or not a config; the run directory cannot be resumed")
    return Resumable(run_dir, meta, build_config(base_raw, source=f"{run_dir}/base_config.yaml"))


def resume_sweep(sweep: Resumable, conn: Connection) -> dict[str, Any]:
    """Continue an interrupted sweep (a local directory or a bucket URI): finished trials are kept,
    unfinished ones resume from their checkpoints."""
    print(f"tune_app resume: sweep '{sweep.meta['name']}' in {sweep.run_dir}", flush=True)
    return _finish_or_explain(sweep.run_dir, _fit(_tuner(sweep.meta, sweep.base, sweep.run_dir, conn, 0), sweep.run_dir))


def finish(run_dir: str, fs=None) -> dict[str, Any]:
    """Write summary.json, best_config.yaml, best/ and report.html for a finished (or stopped) sweep;
    print the table. A run directory in a bucket is mirrored to ``runs/<name>/`` (no checkpoints but
    the best) and the outputs are uploaded back beside Tune's files. ``fs``: a pyarrow filesystem to
    use instead of resolving a URI ``run_dir`` (tests)."""
    from tune_app.sweep import storage
    from tune_app.sweep.results import load_run, render_table

    rd = RunDir(run_dir, fs=fs)
    local = rd.local_dir
    if rd.remote:
        fs, remote_root = rd.filesystem()
        checkpoints = storage.mirror(fs, remote_root, local)        # overwrites; keeps local-only stores (MLflow, W&B)
        print(f"local copy of {run_dir} (without checkpoints): {local}", flush=True)
    run = load_run(local)
    summary = run.summary()
    best = run.best()
    (local / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    if best is not None:
        cfg = build_config(load_yaml(local / "base_config.yaml"), overrides=best.params)
        save_config(cfg, local / "best_config.yaml")
        dest = local / "best"
        shutil.rmtree(dest, ignore_errors=True)
        complete = [] if not rd.remote else [c for c in checkpoints.get(f"trials/train-{best.trial_id}", [])
                                             if is_complete_fs(fs, f"{remote_root}/{c}")]
        if complete:
            latest = complete[-1]
            storage.download_dir(fs, f"{remote_root}/{latest}", dest)
            best.checkpoint = f"{run_dir.rstrip('/')}/{latest}"
        elif best.checkpoint:
            shutil.copytree(best.checkpoint, dest)
    print(render_table(run), flush=True)
    from tune_app.inspection.report import write_report

    print(f"report: {write_report(local)}")
    from tune_app import tracking

    base = build_config(load_yaml(local / "base_config.yaml"))
    best_info = {"name": best.name, "metric": best.metric_last, "metric_name": run.metric} if best else None
    tracking.finish_mlflow_parent(base, run.name, run_dir, best_info, fs=fs if rd.remote else None)
    if rd.remote:
        storage.upload(fs, remote_root, local, ["summary.json", "best_config.yaml", "report.html", "best", *LOCAL_STORES])
    unfinished = [t for t in run.trials if t.state not in ("TERMINATED", "ERROR")]
    summary["complete"] = not unfinished
    if unfinished:
        print(f"sweep interrupted with {len(unfinished)} unfinished trial(s); continue it with: "
              f"python -m tune_app resume {run_dir}")
    if best is not None:
        print(f"best: {best.name}  {run.metric} {best.metric_last:.5g}  -> {run_dir}/best_config.yaml, {run_dir}/best/")
    else:
        print("best: no trial reported the metric", file=sys.stderr)
    for hint in (tracking.sync_hint(run_dir) if base.wandb.enabled else None, tracking.mlflow_ui_hint(base, run_dir)):
        if hint:
            print(hint)
    return summary
