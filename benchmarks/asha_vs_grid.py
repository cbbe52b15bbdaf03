"""What early stopping buys: the same grid of configurations run to the end, and under ASHA, side by side.

    python benchmarks/asha_vs_grid.py [--lrs 1e-5,3e-5,1e-4,3e-4] [--kls 1,10,30] [--steps 300] [--min-iter 50] [--eta 3]
                                      [--replay-every 25]

Both sweeps train act_tiny on the demo data over the same lr x kl_weight configurations (a grid, so
the comparison is about the scheduler alone), each in its own process and embedded Ray (2 CPUs). ASHA
cuts at ``min-iter`` x eta^k steps, keeping the best 1/eta at each rung (validation every rung). Prints
each sweep's best ``val_loss``, total optimizer steps and wall time, and the ratios: the goal is ASHA
within 2 % of the grid's best with at most 40 % of its steps.

With ``--replay-every N`` the grid also validates every N steps, and its ``val_loss`` curves are replayed
through Tune's ASHA rule (a trial reaching a rung stops when its metric is worse than the best 1/eta of
those recorded there before it) for other ``min_iter`` x ``eta``: once in the grid's order, and over
500 random orders (a random search's). That is how ``search_spaces/asha_random.yaml`` was chosen.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

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
    every = math.gcd(*rungs, args.steps, *([args.replay_every] if kind == "grid" and args.replay_every else []))
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
    curves = [{int(r["step"]): r["val_loss"] for r in t.history if "val_loss" in r} for t in run.trials]
    return {"kind": kind, "trials": len(run.trials), "best": best, "steps": steps, "wall": wall, "rungs": rungs,
            "curves": curves}


def replay(curves: list[dict[int, float]], min_iter: int, eta: int, max_t: int, slots: int = 2) -> tuple[float, int]:
    """ASHA's decisions on recorded curves, trials started ``slots`` at a time in the given order (each
    wave reaches a rung before the next wave does): the best ``val_loss`` it would have seen and the
    optimizer steps it would have run."""
    rungs = [min_iter * eta**k for k in range(int(math.log(max_t / min_iter, eta)) + 1) if min_iter * eta**k < max_t]
    recorded: dict[int, list[float]] = {m: [] for m in rungs}
    ran = [max_t] * len(curves)                            # steps each trial runs
    for wave in range(0, len(curves), slots):
        alive = list(range(wave, min(wave + slots, len(curves))))
        for milestone in rungs:
            going = []
            for i in alive:
                value = curves[i][max(s for s in curves[i] if s <= milestone)]
                seen = recorded[milestone]
                if seen and value > np.nanpercentile(seen, 100 / eta):      # Tune's rule, in val_loss terms
                    ran[i] = milestone
                else:
                    going.append(i)
                seen.append(value)
            alive = going
    best = min(v for curve, last in zip(curves, ran, strict=True) for s, v in curve.items() if s <= last)
    return best, sum(ran)


def print_replay(curves: list[dict[int, float]], max_t: int, grid_best: float, orders: int = 500) -> None:
    total = max_t * len(curves)
    print(f"ASHA replayed on the grid's curves (best {grid_best:.4f}, {total} steps): grid order | {orders} random orders")
    for min_iter in sorted({max_t // 12, max_t // 6, max_t // 4, max_t // 3}):
        for eta in (2, 3, 4):
            best, steps = replay(curves, min_iter, eta, max_t)
            hits, frac = 0, 0.0
            for seed in range(orders):
                order = list(curves)
                random.Random(seed).shuffle(order)
                b, s = replay(order, min_iter, eta, max_t)
                hits += b <= grid_best * 1.02
                frac += s / total
            print(f"  min_iter {min_iter:4} eta {eta}: best {best / grid_best - 1:+6.1%}, steps {steps / total:4.0%} | "
                  f"within 2 % in {hits / orders:4.0%} of orders, mean steps {frac / orders:4.0%}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lrs", default="1e-5,3e-5,1e-4,3e-4")
    ap.add_argument("--kls", default="1,10,30")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--min-iter", type=int, default=50)
    ap.add_argument("--eta", type=int, default=3)
    ap.add_argument("--replay-every", type=int, default=0, help="grid validation every N steps, replayed under other rungs")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        with tempfile.TemporaryDirectory(prefix="asha_vs_grid_") as storage:
            print("RESULT " + json.dumps(measure(args.child, args, storage)), flush=True)
        return
    results = {}
    for kind in ("grid", "asha"):
        argv = [sys.executable, __file__, "--child", kind, "--lrs", args.lrs, "--kls", args.kls, "--steps", str(args.steps),
                "--min-iter", str(args.min_iter), "--eta", str(args.eta), "--replay-every", str(args.replay_every)]
        out = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
        if not line:
            sys.exit(f"{kind} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
        results[kind] = r = json.loads(line[0][7:])
        print(f"{kind:4}: {r['trials']} trials, best val_loss {r['best']:.4f}, {r['steps']} optimizer steps, wall {r['wall']:.0f} s",
              flush=True)
    g, a = results["grid"], results["asha"]
    # A noisy val_loss's minimum falls with the number of validations: compare at the steps both validated.
    every = math.gcd(*a["rungs"], args.steps)
    g_best = min(v for c in g["curves"] for s, v in c.items() if int(s) % every == 0)
    print(f"ASHA (min_iter {args.min_iter}, eta {args.eta}, rungs {a['rungs']}) against the full grid, act_tiny x {args.steps} steps: "
          f"best val_loss {a['best'] / g_best - 1:+.1%} (grid's best at the steps both validate, every {every}: {g_best:.4f}), "
          f"steps {a['steps'] / g['steps']:.0%}, wall {a['wall'] / g['wall']:.0%} (goal: within 2 % with <= 40 % of the steps)")
    if args.replay_every:
        print_replay([{int(k): v for k, v in c.items()} for c in g["curves"]], args.steps, g["best"])


if __name__ == "__main__":
    main()
