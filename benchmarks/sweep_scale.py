"""Bookkeeping and memory at scale: a random search of many short trials on 2 slots, fast mode against
the stock pattern, with and without ASHA, side by side in one run.

    python benchmarks/sweep_scale.py [--trials 200] [--stock-trials 200] [--steps 30] [--schedulers none,asha]

Each (mode, scheduler) runs in its own process with its own embedded Ray (2 CPUs, 2 trial slots) on the
demo data, act_tiny shortened to ``--steps`` optimizer steps a trial. For each it prints:

* the wall time, and the ideal: the sum of every trial's time inside optimizer steps / slots;
* the overhead: wall / ideal - 1 (start-up, validation, checkpoints, Tune and Ray Train bookkeeping);
* Tune's experiment-state writes (``TuneController.save_to_dir``, what ``resume`` restores): how many,
  their seconds in all, and the mean per trial;
* the resident memory of each reused worker (rank 0's process) in its 1st, 5th, 10th, ... trial
  (finished or stopped), from the ``rss_mb`` of the trial's first training report: the same point of
  every run, so a trial ASHA stopped compares with one that ran to its final checkpoint.

The stock pattern starts every trial cold (tens of seconds here), so ``--stock-trials`` may be set lower
than ``--trials`` to keep the run short; the per-trial figures stay comparable.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SPACE = """\
method: random
metric: {{name: val_loss, goal: minimize}}
base_config: {base}
run_cap: {trials}
parameters:
  training.lr: {{distribution: log_uniform_values, min: 1.0e-5, max: 3.0e-4}}
  training.kl_weight: {{distribution: categorical, values: [1, 10, 30]}}
{early}ray: {{num_workers: 1, cpus_per_worker: 1, name: scale}}
"""
ASHA = "early_terminate: {{type: hyperband, min_iter: {rung}, eta: 2}}\n"


def instrument_state_writes() -> dict:
    """Count and time Tune's experiment-state writes (the seam every controller, stock or durable, uses)."""
    from ray.tune.execution.tune_controller import TuneController

    stats = {"writes": 0, "seconds": 0.0}
    original = TuneController.save_to_dir

    def timed(self):
        start = time.perf_counter()
        try:
            return original(self)
        finally:
            stats["writes"] += 1
            stats["seconds"] += time.perf_counter() - start

    TuneController.save_to_dir = timed
    return stats


def measure(mode: str, scheduler: str, trials: int, steps: int, storage: str) -> dict:
    from tune_app import fastpath
    from tune_app.cluster import connect as cluster
    from tune_app.sweep.run import default_concurrency, run_sweep
    from tune_app.sweep.space import load_sweep

    writes = instrument_state_writes()
    rung = max(steps // 4, 1)
    space = Path(storage) / "space.yaml"
    space.write_text(SPACE.format(base=REPO / "configs" / "act_tiny.yaml", trials=trials,
                                  early=ASHA.format(rung=rung) if scheduler == "asha" else ""))
    every = rung if scheduler == "asha" else steps          # ASHA needs val_loss at each rung
    overrides = [f"training.steps={steps}", f"training.log_freq={every}", f"training.eval_freq={every}",
                 f"training.save_freq={steps}", "training.val_batches=1", "data.demo_episodes=6",
                 "data.demo_episode_len=20", "training.device=cpu"]
    sweep = load_sweep(space, overrides=overrides, storage_path=str(Path(storage) / "runs"))
    conn = cluster.connect(num_cpus=2, log_to_driver=False)
    slots = default_concurrency(sweep, conn)
    chosen = fastpath.choose() if mode == "fast" else fastpath.Mode(False, "benchmark")
    t0 = time.time()
    run_sweep(sweep, conn, mode=chosen)
    wall = time.time() - t0
    run_dir = Path(storage) / "runs" / sweep.name
    step_time, finished, rss = 0.0, 0, {}
    for result in run_dir.glob("*/result.json"):
        records = [json.loads(x) for x in result.read_text().splitlines() if x.strip()]
        timed = [r for r in records if "step_time_s" in r]
        if timed:
            step_time += timed[-1]["step_time_s"]
        finished += int(bool(timed) and timed[-1].get("step") == steps)              # the others: stopped by ASHA
        # The first training report: the same point of every run, so stopped and finished trials compare (a
        # trial's last report is its final checkpoint's, +~100 MB, or an early stop's, without one).
        reported = [r for r in records if "rss_mb" in r]
        if reported:
            rss.setdefault(reported[0]["worker_pid"], []).append((reported[0]["first_step_at"], reported[0]["rss_mb"]))
    ideal = step_time / slots
    return {"mode": mode, "scheduler": scheduler, "trials": trials, "finished": finished, "slots": slots, "wall": wall,
            "ideal": ideal, "overhead": wall / ideal - 1 if ideal else float("nan"), "writes": writes["writes"],
            "write_s": writes["seconds"],
            "rss": {str(pid): [mb for _, mb in sorted(v)] for pid, v in rss.items()}}


def rss_line(pid: str, values: list[float]) -> str:
    marks = [i for i in (1, 5, 10, 20, 50, 100, 200, 500) if i <= len(values)]
    text = ", ".join(f"trial {i}: {values[i - 1]:.0f} MB" for i in marks)
    growth = "".join(f"; trial {i} / trial 5: {values[i - 1] / values[4]:.3f}" for i in sorted({min(50, marks[-1]), marks[-1]})
                     if len(values) >= 5)
    return f"    worker {pid} ({len(values)} trials): {text}{growth}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--stock-trials", type=int, default=None, help="trials in stock mode (default: --trials)")
    ap.add_argument("--steps", type=int, default=30, help="optimizer steps per trial")
    ap.add_argument("--modes", default="fast,stock")
    ap.add_argument("--schedulers", default="none,asha")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        mode, scheduler, trials = args.child.split(":")
        with tempfile.TemporaryDirectory(prefix="sweep_scale_") as storage:
            stats = measure(mode, scheduler, int(trials), args.steps, storage)
        print("RESULT " + json.dumps(stats), flush=True)
        return
    results = []
    for scheduler in args.schedulers.split(","):
        for mode in args.modes.split(","):
            trials = args.stock_trials if mode == "stock" and args.stock_trials else args.trials
            out = subprocess.run([sys.executable, __file__, "--child", f"{mode}:{scheduler}:{trials}", "--steps", str(args.steps)],
                                 capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
            line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
            if not line:
                sys.exit(f"{mode}/{scheduler} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
            results.append(json.loads(line[0][7:]))
            r = results[-1]
            print(f"{r['mode']:5} {r['scheduler']:5} {r['trials']} trials ({r['finished']} ran every step): wall {r['wall']:7.1f} s, ideal "
                  f"{r['ideal']:6.1f} s, overhead {100 * r['overhead']:6.0f} %, wall per trial {r['wall'] / r['trials']:.2f} s; "
                  f"state writes {r['writes']} ({r['write_s']:.1f} s, {r['write_s'] / r['trials'] * 1000:.0f} ms a trial, "
                  f"{r['write_s'] / max(r['writes'], 1) * 1000:.1f} ms a write)", flush=True)
            for pid, values in r["rss"].items():
                print(rss_line(pid, values), flush=True)
    print(f"random search, act_tiny x {args.steps} steps a trial, 2 slots, demo data; "
          f"overhead = wall / (sum of optimizer-step time / slots) - 1")


if __name__ == "__main__":
    main()
