"""Where the training loop runs: under Ray Train, or in a plain process.

The loop in :mod:`tune_app.train.loop` talks to its surroundings only through a session: who am I
(rank, world size, device), where is the checkpoint to resume from, and report these metrics (with
this checkpoint). :class:`RayTrainSession` maps that onto ``ray.train``; :class:`LocalSession` runs
the same loop in one process without Ray (benchmarks, debugging), so every mode runs the same code.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tune_app import fastpath


def pick_device(requested: str, assigned: torch.device | None = None) -> torch.device:
    """``training.device`` -> a torch device; ``cuda`` falls back to CPU when no GPU is visible."""
    if requested == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return assigned if assigned is not None else torch.device("cuda", 0)


class RayTrainSession:
    """The session of a Ray Train worker (``TorchTrainer`` has already set up the process group)."""

    def __init__(self, requested_device: str, cpus_per_worker: float):
        import ray.train
        import ray.train.torch

        # One torch thread per CPU this worker holds: a process that imported torch before Ray set
        # OMP_NUM_THREADS would run one per core and oversubscribe its neighbours' CPUs.
        torch.set_num_threads(max(1, int(cpus_per_worker)))

        import ray

        self._train = ray.train
        self._node_id = ray.get_runtime_context().get_node_id()
        self._stop_check = fastpath.stop_check()
        ctx = ray.train.get_context()
        self.rank, self.world_size, self.local_rank = ctx.get_world_rank(), ctx.get_world_size(), ctx.get_local_rank()
        assigned = ray.train.torch.get_device() if torch.cuda.is_available() else None
        self.device = pick_device(requested_device, assigned)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)

    def resume_candidates(self) -> list[tuple[str, Callable[[], Any]]]:
        """``(name, context manager factory yielding a local folder)`` for each checkpoint of this run,
        newest first: the one Ray Train restores, then the older ones beside it (the loop falls back
        to them when the newest is incomplete)."""
        import pyarrow.fs

        ckpt = self._train.get_checkpoint()
        if ckpt is None:
            return []
        parent, name = ckpt.path.rstrip("/").rsplit("/", 1)
        infos = ckpt.filesystem.get_file_info(pyarrow.fs.FileSelector(parent, allow_not_found=True))
        older = sorted((i.base_name for i in infos if i.type == pyarrow.fs.FileType.Directory
                        and i.base_name.startswith("checkpoint_") and i.base_name < name), reverse=True)
        checkpoint = self._train.Checkpoint
        return [(name, ckpt.as_directory)] + [
            (n, checkpoint(f"{parent}/{n}", filesystem=ckpt.filesystem).as_directory) for n in older]

    def stop_requested(self) -> bool:
        """Tune stopped this trial: the loop ends after this step (all ranks at the same one)."""
        return self._stop_check()

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None, step: int) -> None:
        if self.rank == 0:      # where rank 0 ran: `status`/results show how a sweep spread and reused workers
            metrics = {**metrics, "node_id": self._node_id, "worker_pid": os.getpid()}
        checkpoint = self._train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        self._train.report(metrics, checkpoint=checkpoint,
                           checkpoint_dir_name=f"checkpoint_{step:06d}" if checkpoint else None)


class LocalSession:
    """One process, no Ray: metrics are kept in a list and checkpoints copied under ``output_dir``."""

    rank, world_size, local_rank = 0, 1, 0

    def __init__(self, requested_device: str, output_dir: str | Path, on_report: Callable[[dict], None] | None = None):
        self.device = pick_device(requested_device)
        self.output_dir = Path(output_dir)
        self.reports: list[dict[str, Any]] = []
        self.checkpoints: list[Path] = []
        self._on_report = on_report

    def resume_candidates(self) -> list[tuple[str, Callable[[], Any]]]:
        from contextlib import nullcontext

        existing = sorted(self.output_dir.glob("checkpoint_*"), reverse=True)
        return [(p.name, lambda p=p: nullcontext(str(p))) for p in existing]

    def stop_requested(self) -> bool:
        return False

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None, step: int) -> None:
        self.reports.append(dict(metrics))
        if checkpoint_dir:
            dest = self.output_dir / f"checkpoint_{step:06d}"
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(checkpoint_dir, dest)
            self.checkpoints.append(dest)
        if self._on_report:
            self._on_report(metrics)
