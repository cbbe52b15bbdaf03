"""Trial start-up and sweep efficiency of `tune_app run` in its two modes, side by side in one run.

Runs search_spaces/lr_grid.yaml (shortened with --steps) once per mode, each in its own process and
embedded Ray session, with the same train loop, data and trials:

* "fast": the fast path (tune_app/fastpath: the Train controller in the trial's process, trial
  processes and their DDP workers reused, one placement-group janitor per sweep);
* "stock": stock Ray mode (TUNE_APP_FAST=0): a Tune function trainable calling Ray's own
  TorchTrainer(...).fit() with TuneReportCallback, no actor reuse -- what runs on an untested Ray.

Prints per-trial start-up (trial start -> first optimizer step; median, max, and each trial's in
start order: the first wave starts cold, later fast trials on warm workers) and sweep
efficiency = sum of time in optimizer steps / (wall x trial slots).

    python benchmarks/sweep_overhead.py [--steps 60] [--workers 1] [--modes fast,stock]
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
# Where a trial's start-up goes, trial start -> first optimizer step (means over cold and over warm trials):
PARTS = {"process": "Ray starts the rank-0 worker process (placement group, actor; 0 when reused)",
         "ready": "that process gets to the loop (imports, Train context, process group)",
         "data": "the loop prepares data (cached: opens it)", "model": "builds model and optimizer",
         "val0": "step-0 validation and its report"}


def measure(mode: str, steps: int, workers: int, storage: str) -> dict:
    from tune_app.sweep.run import default_concurrency, run_sweep
    from tune_app.sweep.space import load_sweep

    overrides = [f"training.steps={steps}", f"training.log_freq={max(steps // 4, 1)}",
                 f"training.eval_freq={steps}", f"training.save_freq={steps}", f"ray.num_workers={workers}"]
    sweep = load_sweep(REPO / "search_spaces" / "lr_grid.yaml", overrides=overrides, storage_path=storage)
    from tune_app import fastpath
    from tune_app.cluster import connect as cluster

    conn = cluster.connect(num_cpus=2, log_to_driver=False)
    slots = default_concurrency(sweep, conn)
    chosen = fastpath.choose() if mode == "fast" else fastpath.Mode(False, "benchmark")
    assert chosen.fast == (mode == "fast"), chosen.line()
    t0 = time.time()
    run_sweep(sweep, conn, mode=chosen)
    run_dir = Path(storage) / sweep.name
    wall = time.time() - t0
    starts = {}
    for line in (run_dir / "trial_events.jsonl").read_text().splitlines():
        e = json.loads(line)
        if e["event"] == "start":
            starts.setdefault(e["trial_id"], e["time"])
    startup, setup, parts, step_time = {}, [], {"cold": [], "warm": []}, 0.0
    for result in run_dir.glob("*/result.json"):
        records = [json.loads(x) for x in result.read_text().splitlines()]
        final = [r for r in records if "first_step_at" in r][-1]
        start = starts[final["trial_id"]]
        startup[final["trial_id"]] = final["first_step_at"] - start
        setup.append(final["setup_s"])
        step_time += final["step_time_s"]
        made = max(final["process_started_at"], start)                # a kept worker's process predates its trial
        parts["cold" if final["process_started_at"] > start else "warm"].append(
            {"process": made - start, "ready": final["entered_at"] - made, "data": final["setup_data_s"],
             "model": final["setup_model_s"], "val0": final["setup_val_s"]})
    each = [startup[t] for t in sorted(startup, key=starts.get)]       # in the order the trials started
    startup = list(startup.values())
    return {"mode": mode, "trials": len(startup), "startup_each": each, "startup_median": statistics.median(startup),
            "startup_max": max(startup), "loop_setup_median": statistics.median(setup), "wall": wall, "slots": slots,
            "step_time": step_time, "efficiency": step_time / (wall * slots),
            "parts": {k: {p: statistics.mean(x[p] for x in v) for p in PARTS} for k, v in parts.items() if v},
            "count": {k: len(v) for k, v in parts.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--workers", type=int, default=1, help="DDP workers per trial (ray.num_workers)")
    ap.add_argument("--modes", default="fast,stock")
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
        for kind, mean in r["parts"].items():
            print(f"{r['mode']:10} {kind} start ({r['count'][kind]} trials), mean seconds: "
                  + ", ".join(f"{p} {mean[p]:.2f}" for p in PARTS) + f" = {sum(mean.values()):.2f}")
    print("  " + "; ".join(f"{p}: {text}" for p, text in PARTS.items()))
    for r in results.values():
        print(f"{r['mode']:10} start-up of each trial, in start order: {' '.join(f'{x:.2f}s' for x in r['startup_each'])}")
    if {"fast", "stock"} <= results.keys():
        a, b = results["fast"], results["stock"]
        print(f"start-up ratio (stock / fast, median): {b['startup_median'] / a['startup_median']:.2f}x; "
              f"wall ratio: {b['wall'] / a['wall']:.2f}x; efficiency {a['efficiency']:.3f} vs {b['efficiency']:.3f}")


if __name__ == "__main__":
    main()
