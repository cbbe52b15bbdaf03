"""Trial start-up and sweep efficiency of `tune_app run`, next to the stock Ray pattern, in one run.

Runs search_spaces/lr_grid.yaml (shortened with --steps) twice, each in its own process and Ray
session, with the same train loop, data and trials:

* "tune_app": `tune_app run` as shipped (tune_app.cluster.connect.connect + run_sweep: the controller in
  the trial's process, trial processes and their DDP workers reused, one placement-group janitor per sweep, fast Train
  polling; see tune_app/fastpath/trainer.py);
* "stock": the pattern the issue measured: a plain ray.init with Ray's defaults, a Tune function
  trainable calling Ray's own TorchTrainer(...).fit() with TuneReportCallback, no actor reuse.

Prints per-trial start-up (trial start -> first optimizer step; median, max, and each trial's in
start order: the first wave starts cold, later trials of tune_app on warm workers) and sweep
efficiency = sum of time in optimizer steps / (wall x trial slots).

    python benchmarks/sweep_overhead.py [--steps 60] [--workers 1] [--modes tune_app,stock]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def stock_trial(params, base, trials_dir, cluster_gpus):
    """The stock Train V2 pattern: a Tune function trainable that runs Ray's TorchTrainer.fit()."""
    from ray import tune
    from ray.train._internal.session import get_session
    from ray.tune.integration.ray_train import TuneReportCallback

    from tune_app.config import build_config
    from tune_app.trainable import make_torch_trainer

    cfg = build_config(base, source="trial", overrides=params, override_source="trial parameter")
    name = f"train-{tune.get_context().get_trial_id()}"
    make_torch_trainer(cfg, trials_dir, name, cluster_gpus, callbacks=[TuneReportCallback()], stock=True).fit()
    # Ray 2.60: a trial whose last report is still queued when this returns can hang; wait for it.
    queue = get_session()._get_or_create_inter_actor_queue()
    while not queue.empty():
        time.sleep(0.05)


def run_stock(sweep, storage: str, slots: int, gpus: float) -> Path:
    from ray import tune

    run_dir = Path(storage) / sweep.name
    events = run_dir / "trial_events.jsonl"

    class Events(tune.Callback):
        def on_trial_start(self, iteration, trials, trial, **info):
            events.parent.mkdir(parents=True, exist_ok=True)
            with events.open("a") as f:
                f.write(json.dumps({"trial_id": trial.trial_id, "event": "start", "time": time.time()}) + "\n")

    trainable = tune.with_resources(tune.with_parameters(stock_trial, base=sweep.base.to_dict(), trials_dir=str(run_dir / "trials"),
                                                         cluster_gpus=gpus), {"cpu": 0, "memory": 1})
    tune.Tuner(trainable, param_space=sweep.param_space(),
               tune_config=tune.TuneConfig(metric=sweep.metric, mode=sweep.mode, num_samples=sweep.num_samples,
                                           max_concurrent_trials=slots),
               run_config=tune.RunConfig(name=sweep.name, storage_path=storage, verbose=0, callbacks=[Events()])).fit()
    return run_dir


def measure(mode: str, steps: int, workers: int, storage: str) -> dict:
    from tune_app.sweep.run import default_concurrency, run_sweep
    from tune_app.sweep.space import load_sweep

    overrides = [f"training.steps={steps}", f"training.log_freq={max(steps // 4, 1)}",
                 f"training.eval_freq={steps}", f"training.save_freq={steps}", f"ray.num_workers={workers}"]
    sweep = load_sweep(REPO / "search_spaces" / "lr_grid.yaml", overrides=overrides, storage_path=storage)
    if mode == "tune_app":
        from tune_app.cluster import connect as cluster

        conn = cluster.connect(num_cpus=2, log_to_driver=False)
        slots = default_concurrency(sweep, conn)
        t0 = time.time()
        run_sweep(sweep, conn)
        run_dir = Path(storage) / sweep.name
    else:
        import ray

        from tune_app.cluster.connect import Connection

        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(num_cpus=2, log_to_driver=False)
        res = ray.cluster_resources()
        slots = default_concurrency(sweep, Connection(None, None, res.get("CPU", 0), res.get("GPU", 0)))
        t0 = time.time()
        run_dir = run_stock(sweep, storage, slots, res.get("GPU", 0))
    wall = time.time() - t0
    starts = {}
    for line in (run_dir / "trial_events.jsonl").read_text().splitlines():
        e = json.loads(line)
        if e["event"] == "start":
            starts.setdefault(e["trial_id"], e["time"])
    startup, setup, step_time = {}, [], 0.0
    for result in run_dir.glob("*/result.json"):
        records = [json.loads(x) for x in result.read_text().splitlines()]
        final = [r for r in records if "first_step_at" in r][-1]
        startup[final["trial_id"]] = final["first_step_at"] - starts[final["trial_id"]]
        setup.append(final["setup_s"])
        step_time += final["step_time_s"]
    each = [startup[t] for t in sorted(startup, key=starts.get)]       # in the order the trials started
    startup = list(startup.values())
    return {"mode": mode, "trials": len(startup), "startup_each": each, "startup_median": statistics.median(startup),
            "startup_max": max(startup), "loop_setup_median": statistics.median(setup), "wall": wall, "slots": slots,
            "step_time": step_time, "efficiency": step_time / (wall * slots)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--workers", type=int, default=1, help="DDP workers per trial (ray.num_workers)")
    ap.add_argument("--modes", default="tune_app,stock")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        with tempfile.TemporaryDirectory(prefix=f"sweep_{args.child}_") as storage:   # checkpoints: ~1 GB a run
            stats = measure(args.child, args.steps, args.workers, storage)
        print("RESULT " + json.dumps(stats), flush=True)
        return
    results = {}
    for mode in args.modes.split(","):
        out = subprocess.run([sys.executable, __file__, "--child", mode, "--steps", str(args.steps), "--workers", str(args.workers)],
                             capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
        if not line:
            sys.exit(f"{mode} run failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
        results[mode] = json.loads(line[0][7:])
    print(f"lr_grid, 6 trials x {args.steps} steps, {args.workers} DDP worker(s) per trial, 2 CPUs")
    print(f"{'mode':10} {'start-up median':>16} {'start-up max':>13} {'of it in loop':>14} {'wall s':>8} {'slots':>6} {'step s':>7} "
          f"{'efficiency':>11}")
    for r in results.values():
        print(f"{r['mode']:10} {r['startup_median']:15.2f}s {r['startup_max']:12.2f}s {r['loop_setup_median']:13.2f}s {r['wall']:8.1f} {r['slots']:6d} "
              f"{r['step_time']:7.1f} {r['efficiency']:11.3f}")
    for r in results.values():
        print(f"{r['mode']:10} start-up of each trial, in start order: {' '.join(f'{x:.2f}s' for x in r['startup_each'])}")
    if {"tune_app", "stock"} <= results.keys():
        a, b = results["tune_app"], results["stock"]
        print(f"start-up ratio (stock / tune_app, median): {b['startup_median'] / a['startup_median']:.2f}x; "
              f"wall ratio: {b['wall'] / a['wall']:.2f}x; efficiency {a['efficiency']:.3f} vs {b['efficiency']:.3f}")


if __name__ == "__main__":
    main()
