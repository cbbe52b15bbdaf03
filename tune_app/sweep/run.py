"""Running a sweep: the Tuner over :func:`tune_app.trainable.run_trial`, its run directory, resume.

Run directory (``<storage>/<name>/``, ``runs/<name>/`` by default)::

    tuner.pkl, experiment_state-*.json, <trial dirs>/   Tune's own state and per-trial results
    trials/train-<trial_id>/checkpoint_000100/          each trial's Train run and checkpoints
    sweep.json                                          what resume and status need
    base_config.yaml                                    the resolved base training config
    best_config.yaml, best/, summary.json, report.html  written when the sweep ends
"""

from __future__ import annotations

import json
import shutil
import sys
from typing import Any

from ray import tune

from tune_app import fastpath, tracking
from tune_app.cluster.connect import Connection, alive_nodes
from tune_app.config import Config, build_config, save_config
from tune_app.errors import UserError, find_user_error
from tune_app.inspection.report import write_report
from tune_app.policy.manifest import is_complete_fs
from tune_app.sweep import storage
from tune_app.sweep.progress import ProgressPrinter, ResultsFileLogger, TrialDirNamer, TrialNamer, TrialStateWriter
from tune_app.sweep.results import load_run, render_table
from tune_app.sweep.rundir import (
    Resumable,
    RunDir,
    check_run_dir,
    claim_run_dir,
    remove_run_dir,
    sweep_exists,
    write_sweep_files,
)
from tune_app.sweep.space import Sweep
from tune_app.trainable import tune_trainable, worker_resources
from tune_app.yamlio import load_yaml

# What a bucket sweep keeps in its local working copy while it runs, uploaded at the end.
LOCAL_STORES = ["mlflow.db", "mlflow-artifacts", "wandb"]


def default_concurrency(sweep: Sweep, conn: Connection) -> int:
    """As many trials at once as the cluster's CPUs (and GPUs) hold; a trial that can never fit is an error."""
    use_gpu, res = worker_resources(sweep.base, conn.num_gpus)
    per_trial_cpu = sweep.base.ray.num_workers * res["CPU"]
    if per_trial_cpu > conn.num_cpus:
        raise UserError(f"one trial needs {per_trial_cpu:g} CPUs (ray.num_workers x ray.cpus_per_worker) but the "
                        f"Ray cluster has {conn.num_cpus:g}; lower them or add nodes")
    slots = int(conn.num_cpus // per_trial_cpu)
    if use_gpu:
        slots = min(slots, int(conn.num_gpus // (sweep.base.ray.num_workers * res["GPU"])))
    return max(1, slots)


def _tuner(sweep_meta: dict, base: Config, run_dir: str, conn: Connection, mode: fastpath.Mode, max_concurrent: int,
           sweep: Sweep | None = None, max_failures: int = 0):
    keys = sweep_meta["parameters"]
    storage, name = run_dir.rsplit("/", 1)
    trainable = tune_trainable(base, f"{run_dir}/trials", conn.num_gpus, mode, keys)
    if sweep is None:        # Tune restores its run config (callbacks included) from tuner.pkl
        return tune.Tuner.restore(run_dir, trainable=trainable, resume_errored=True, resume_unfinished=True)
    events = None if RunDir(run_dir).remote else f"{run_dir}/trial_events.jsonl"
    run_config = tune.RunConfig(
        name=name, storage_path=storage, verbose=0,
        # A trial whose node died is restarted (from its last checkpoint) up to this many times.
        failure_config=tune.FailureConfig(max_failures=max_failures),
        callbacks=[ProgressPrinter(keys, sweep_meta["total_steps"], sweep_meta["metric"], events),
                   TrialStateWriter(run_dir, keys), ResultsFileLogger(run_dir), *tracking.sweep_callbacks(base, name, run_dir, mode, keys)],
    )
    tune_config = tune.TuneConfig(
        metric=sweep.metric, mode=sweep.mode, num_samples=sweep.num_samples,
        max_concurrent_trials=max_concurrent, scheduler=sweep.scheduler(run_dir), search_alg=sweep.search_alg(),
        trial_name_creator=TrialNamer(keys), trial_dirname_creator=TrialDirNamer(keys),
        reuse_actors=fastpath.reuse_actors(mode),
    )
    return tune.Tuner(trainable, param_space=sweep.param_space(), tune_config=tune_config, run_config=run_config)


def _fit(tuner, run_dir: str, mode: fastpath.Mode):
    with fastpath.sweep(mode, RunDir(run_dir).name):
        return tuner.fit()


def default_max_failures() -> int:
    """Retry trials on a multi-node cluster (a node can go away); on one machine a failure is a bug to see."""
    return 2 if len(alive_nodes()) > 1 else 0


def run_sweep(sweep: Sweep, conn: Connection, overwrite: bool = False, max_failures: int | None = None,
              mode: fastpath.Mode | None = None) -> dict[str, Any]:
    """Run ``sweep`` to the end on the connected cluster; returns the summary it writes.

    Everything is checked (run directory, trial size against the cluster) before the run
    directory is claimed and written. ``max_failures``: restarts per trial after a failure
    (default :func:`default_max_failures`). ``mode``: fast or stock (default: :func:`tune_app.fastpath.choose`).
    """
    mode = mode or fastpath.choose(sweep.base.ray.fast_start)
    run_dir = check_run_dir(sweep, overwrite)
    concurrency = sweep.max_concurrent_trials or default_concurrency(sweep, conn)
    retries = default_max_failures() if max_failures is None else max_failures
    claim_run_dir(run_dir, overwrite)
    try:
        meta = write_sweep_files(run_dir, sweep)
        print(f"tune_app run: sweep '{sweep.name}' ({sweep.method}, {sweep.grid_size()} trial(s), up to {concurrency} at once, "
              f"{sweep.base.ray.num_workers} DDP worker(s) each) -> {run_dir}", flush=True)
        results = _fit(_tuner(meta, sweep.base, run_dir, conn, mode, concurrency, sweep, retries), run_dir, mode)
    except BaseException:
        if not sweep_exists(run_dir):      # Tune never saved its state: nothing to resume, so nothing is left behind
            remove_run_dir(run_dir)
        raise
    return _finish_or_explain(run_dir, results)


def _finish_or_explain(run_dir: str, results) -> dict[str, Any]:
    """:func:`finish`, then: when no trial produced the metric because of a user mistake raised inside
    the trials (a value only a worker could check), that mistake as one line."""
    summary = finish(run_dir)
    if not summary.get("best_trial") and results is not None:
        for error in getattr(results, "errors", None) or []:
            if (user := find_user_error(error)) is not None:
                raise UserError(f"every trial failed: {user}")
    return summary


def resume_sweep(sweep: Resumable, conn: Connection, mode: fastpath.Mode | None = None) -> dict[str, Any]:
    """Continue an interrupted sweep (a local directory or a bucket URI): finished trials are kept,
    unfinished ones resume from their checkpoints."""
    mode = mode or fastpath.choose(sweep.base.ray.fast_start)
    print(f"tune_app resume: sweep '{sweep.meta['name']}' in {sweep.run_dir}", flush=True)
    tuner = _tuner(sweep.meta, sweep.base, sweep.run_dir, conn, mode, 0)
    return _finish_or_explain(sweep.run_dir, _fit(tuner, sweep.run_dir, mode))


def finish(run_dir: str, fs=None) -> dict[str, Any]:
    """Write summary.json, best_config.yaml, best/ and report.html for a finished (or stopped) sweep;
    print the table. A run directory in a bucket is mirrored to ``runs/<name>/`` (no checkpoints but
    the best) and the outputs are uploaded back beside Tune's files. ``fs``: a pyarrow filesystem to
    use instead of resolving a URI ``run_dir`` (tests)."""
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
    print(f"report: {write_report(local)}")
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
