"""Trial start-up and sweep efficiency of `tune_app run`, next to the stock Ray pattern, in one run.

Runs search_spaces/lr_grid.yaml (shortened with --steps) twice, each in its own process and Ray
session: "tune_app" (tune_app.cluster.connect: preloaded worker modules, fast Train polling, no
preemption watcher) and "stock" (a plain ray.init with Ray's defaults; the same Tune function
trainable calling TorchTrainer.fit()). Prints per-trial start-up (trial start -> first optimizer
step; median, max) and sweep efficiency = sum of time in optimizer steps / (wall x trial slots).

    python benchmarks/sweep_overhead.py [--steps 60] [--modes tune_app,stock]
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


def measure(mode: str, steps: int, storage: str) -> dict:
    from tune_app.cluster import Connection
    from tune_app.search_space import load_sweep
    from tune_app.sweep import default_concurrency, run_sweep

    overrides = [f"training.steps={steps}", f"training.log_freq={max(steps // 4, 1)}",
                 f"training.eval_freq={steps}", f"training.save_freq={steps}"]
    sweep = load_sweep(REPO / "search_spaces" / "lr_grid.yaml", overrides=overrides, storage_path=storage)
    if mode == "tune_app":
        from tune_app import cluster

        conn = cluster.connect(num_cpus=2, log_to_driver=False)
    else:
        import ray

        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(num_cpus=2, log_to_driver=False)
        res = ray.cluster_resources()
        conn = Connection(None, None, res.get("CPU", 0), res.get("GPU", 0))
    slots = default_concurrency(sweep, conn)
    t0 = time.time()
    run_sweep(sweep, conn)
    wall = time.time() - t0
    run_dir = Path(storage) / sweep.name
    starts = {}
    for line in (run_dir / "trial_events.jsonl").read_text().splitlines():
        e = json.loads(line)
        if e["event"] == "start":
            starts.setdefault(e["trial_id"], e["time"])
    startup, setup, step_time = [], [], 0.0
    for result in run_dir.glob("*/result.json"):
        records = [json.loads(x) for x in result.read_text().splitlines()]
        final = [r for r in records if "first_step_at" in r][-1]
        startup.append(final["first_step_at"] - starts[final["trial_id"]])
        setup.append(final["setup_s"])
        step_time += final["step_time_s"]
    return {"mode": mode, "trials": len(startup), "startup_median": statistics.median(startup),
            "startup_max": max(startup), "loop_setup_median": statistics.median(setup), "wall": wall, "slots": slots, "step_time": step_time,
            "efficiency": step_time / (wall * slots)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--modes", default="tune_app,stock")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        stats = measure(args.child, args.steps, tempfile.mkdtemp(prefix=f"sweep_{args.child}_"))
        print("RESULT " + json.dumps(stats), flush=True)
        return
    results = {}
    for mode in args.modes.split(","):
        out = subprocess.run([sys.executable, __file__, "--child", mode, "--steps", str(args.steps)],
                             capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
        if not line:
            sys.exit(f"{mode} run failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
        results[mode] = json.loads(line[0][7:])
    print(f"lr_grid, 6 trials x {args.steps} steps, 2 CPUs")
    print(f"{'mode':10} {'start-up median':>16} {'start-up max':>13} {'of it in loop':>14} {'wall s':>8} {'slots':>6} {'step s':>7} "
          f"{'efficiency':>11}")
    for r in results.values():
        print(f"{r['mode']:10} {r['startup_median']:15.2f}s {r['startup_max']:12.2f}s {r['loop_setup_median']:13.2f}s {r['wall']:8.1f} {r['slots']:6d} "
              f"{r['step_time']:7.1f} {r['efficiency']:11.3f}")
    if {"tune_app", "stock"} <= results.keys():
        a, b = results["tune_app"], results["stock"]
        print(f"start-up ratio (stock / tune_app, median): {b['startup_median'] / a['startup_median']:.2f}x; "
              f"wall ratio: {b['wall'] / a['wall']:.2f}x; efficiency {a['efficiency']:.3f} vs {b['efficiency']:.3f}")


if __name__ == "__main__":
    main()
