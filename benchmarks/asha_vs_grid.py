"""What early stopping buys: the same grid of configurations run to the end, and under ASHA, side by side.

    python benchmarks/asha_vs_grid.py [--lrs 1e-5,3e-5,1e-4,3e-4] [--kls 1,10,30] [--steps 300] [--min-iter 50] [--eta 3]

Both sweeps train act_tiny on the demo data over the same lr x kl_weight configurations (a grid, so
the comparison is about the scheduler alone), each in its own process and embedded Ray (2 CPUs). ASHA
cuts at ``min-iter`` x eta^k steps, keeping the best 1/eta at each rung (validation every rung). Prints
each sweep's best ``val_loss``, total optimizer steps and wall time, and the ratios: the goal is ASHA
within 2 % of the grid's best with at most 40 % of its steps.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def space_text(lrs: list[float], kls: list[float], early: str) -> str:
    return (f"method: grid\nmetric: {{name: val_loss, goal: minimize}}\nbase_config: {REPO / 'configs' / 'act_tiny.yaml'}\n"
            f"parameters:\n  training.lr: {{values: {json.dumps(lrs)}}}\n  training.kl_weight: {{values: {json.dumps(kls)}}}\n"
            f"{early}ray: {{num_workers: 1, cpus_per_worker: 1, name: cmp}}\n")


def measure(kind: str, args: argparse.Namespace, storage: str) -> dict:
    from tune_app import fastpath
    from tune_app.cluster import connect as cluster
    from tune_app.sweep.results import load_run
    from tune_app.sweep.run import run_sweep
    from tune_app.sweep.space import load_sweep

    lrs = [float(x) for x in args.lrs.split(",")]
    kls = [float(x) for x in args.kls.split(",")]
    early = f"early_terminate: {{type: hyperband, min_iter: {args.min_iter}, eta: {args.eta}}}\n" if kind == "asha" else ""
    space = Path(storage) / "space.yaml"
    space.write_text(space_text(lrs, kls, early))
    # Validation at every rung (and no more often than that for the grid, so both pay the same for it).
    rungs = [args.min_iter * args.eta**k for k in range(int(math.log(args.steps / args.min_iter, args.eta)) + 1)]
    every = math.gcd(*rungs, args.steps)
    overrides = [f"training.steps={args.steps}", f"training.eval_freq={every}", f"training.log_freq={every}",
                 f"training.save_freq={args.steps}", "training.device=cpu"]
    sweep = load_sweep(space, overrides=overrides, storage_path=str(Path(storage) / "runs"))
    conn = cluster.connect(num_cpus=2, log_to_driver=False)
    t0 = time.time()
    run_sweep(sweep, conn, mode=fastpath.choose())
    wall = time.time() - t0
    run = load_run(Path(storage) / "runs" / sweep.name)
    best = min(min(t.values("val_loss")) for t in run.trials if t.values("val_loss"))
    steps = sum(t.last_step or 0 for t in run.trials)
    return {"kind": kind, "trials": len(run.trials), "best": best, "steps": steps, "wall": wall, "rungs": rungs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lrs", default="1e-5,3e-5,1e-4,3e-4")
    ap.add_argument("--kls", default="1,10,30")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--min-iter", type=int, default=50)
    ap.add_argument("--eta", type=int, default=3)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        with tempfile.TemporaryDirectory(prefix="asha_vs_grid_") as storage:
            print("RESULT " + json.dumps(measure(args.child, args, storage)), flush=True)
        return
    results = {}
    for kind in ("grid", "asha"):
        argv = [sys.executable, __file__, "--child", kind, "--lrs", args.lrs, "--kls", args.kls, "--steps", str(args.steps),
                "--min-iter", str(args.min_iter), "--eta", str(args.eta)]
        out = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
        if not line:
            sys.exit(f"{kind} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
        results[kind] = r = json.loads(line[0][7:])
        print(f"{kind:4}: {r['trials']} trials, best val_loss {r['best']:.4f}, {r['steps']} optimizer steps, wall {r['wall']:.0f} s",
              flush=True)
    g, a = results["grid"], results["asha"]
    print(f"ASHA (min_iter {args.min_iter}, eta {args.eta}, rungs {a['rungs']}) against the full grid, act_tiny x {args.steps} steps: "
          f"best val_loss {a['best'] / g['best'] - 1:+.1%}, steps {a['steps'] / g['steps']:.0%}, wall {a['wall'] / g['wall']:.0%} "
          f"(goal: within 2 % with <= 40 % of the steps)")


if __name__ == "__main__":
    main()
