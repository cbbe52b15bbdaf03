"""What running the training loop inside a Ray Train TorchTrainer costs, measured side by side.

The same config, data, model and steps run twice in this process's session:
  1. plain PyTorch: ``tune_app.train.loop.run`` with a LocalSession (no Ray at all);
  2. a 1-worker TorchTrainer on an embedded local Ray (the path every trial takes).
Both use one intra-op thread (Ray gives a 1-CPU worker OMP_NUM_THREADS=1).

Prints the step-throughput ratio (Ray / plain; target >= 0.97, loop wall time incl. reports,
validation and checkpoints) and the seconds from ``fit()`` to the first optimizer step.

    python benchmarks/loop_overhead.py [--steps 200] [--config configs/act_tiny.yaml]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from tune_app.cluster import connect as cluster
from tune_app.config import load_config
from tune_app.train.loop import run
from tune_app.train.session import LocalSession
from tune_app.trainable import MetricsFileCallback, fit_run

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=str(REPO / "configs" / "act_tiny.yaml"))
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--override", action="append", default=[])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="loop_overhead_") as tmp:
        measure(args, Path(tmp))


def measure(args, tmp: Path) -> None:
    overrides = [f"training.steps={args.steps}", "training.log_freq=50", "training.eval_freq=100",
                 "training.save_freq=100", "ray.num_workers=1", "ray.cpus_per_worker=1", *args.override]

    torch.set_num_threads(1)
    cfg = load_config(args.config, [*overrides, f"training.output_dir={tmp / 'plain'}"])
    t0 = time.time()
    plain = run(cfg, LocalSession(cfg.training.device, tmp / "plain"))
    plain_start = plain["first_step_at"] - t0

    cfg = load_config(args.config, [*overrides, f"training.output_dir={tmp / 'ray' / 'run'}"])
    (tmp / "ray" / "run").mkdir(parents=True)
    t_init = time.time()
    conn = cluster.connect(num_cpus=2, log_to_driver=False)
    init_s = time.time() - t_init
    t0 = time.time()
    fit_run(cfg, tmp / "ray", "run", conn.num_gpus, callbacks=[MetricsFileCallback(tmp / "ray" / "run" / "m.jsonl")])
    cluster.shutdown()
    ray_final = json.loads((tmp / "ray" / "run" / "m.jsonl").read_text().splitlines()[-1])
    ray_start = ray_final["first_step_at"] - t0

    plain_tp = args.steps / plain["loop_time_s"]
    ray_tp = args.steps / ray_final["loop_time_s"]
    print(f"config {Path(args.config).name}, {args.steps} steps, batch {cfg.training.batch_size}, 1 thread")
    print(f"plain PyTorch loop : {plain_tp:7.2f} steps/s   start-up before first step {plain_start:5.2f} s")
    print(f"1-worker TorchTrainer: {ray_tp:7.2f} steps/s   start-up before first step {ray_start:5.2f} s "
          f"(fit() -> first step; ray.init took another {init_s:.2f} s)")
    print(f"throughput ratio (TorchTrainer / plain): {ray_tp / plain_tp:.3f}  (target >= 0.97)")


if __name__ == "__main__":
    main()
