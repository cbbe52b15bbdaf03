"""The training job: one Ray Train ``TorchTrainer`` run, and the Tune trainable that runs one per trial.

Train V2 pattern (ray-notes.md §1): a Tune *function* trainable is the Train driver. It builds a
``TorchTrainer`` whose DDP workers run :func:`tune_app.train.loop.train_loop_per_worker`; rank 0's
reports reach Tune through the callbacks the mode gives (:mod:`tune_app.fastpath`: Ray's
``TuneReportCallback`` in stock mode). The trainable holds no CPU itself (``{"cpu": 0}``), so a
trial's workers can use every CPU its resources name.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import ray.train
from ray import tune
from ray.train import UserCallback
from ray.train.torch import TorchConfig, TorchTrainer
from ray.tune.trainable import wrap_function

from tune_app import fastpath
from tune_app.config import Config
from tune_app.sweep.space import swept_values, trial_name
from tune_app.train.loop import train_loop_per_worker


class MetricsFileCallback(UserCallback):
    """Appends every rank-0 report of a Train run to a JSON-lines file (``metrics.jsonl``).

    It runs in the Train controller, so the file is complete even when the driver is killed.
    """

    def __init__(self, path: str | Path):
        self.path = str(path)

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        record = {**metrics[0], "time": time.time()}
        if checkpoint is not None:
            record["checkpoint_path"] = checkpoint.path
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def worker_resources(cfg: Config, cluster_gpus: float) -> tuple[bool, dict[str, float]]:
    """``(use_gpu, resources_per_worker)``: GPUs when the cluster has them and the config allows."""
    use_gpu = cfg.training.device != "cpu" and cluster_gpus > 0
    gpus = cfg.ray.gpus_per_worker if cfg.ray.gpus_per_worker is not None else (1.0 if use_gpu else 0.0)
    use_gpu = use_gpu and gpus > 0
    resources = {"CPU": cfg.ray.cpus_per_worker}
    if use_gpu:
        resources["GPU"] = gpus
    return use_gpu, resources


def make_torch_trainer(cfg: Config, storage_path: str | Path, name: str, cluster_gpus: float, *,
                       trainer_cls: type = TorchTrainer, callbacks: list | None = None, progress: bool = False,
                       keep_checkpoints: int | None = None, max_failures: int = 0, log_name: str | None = None,
                       **trainer_kwargs: Any):
    """The TorchTrainer that trains ``cfg`` on ``ray.num_workers`` DDP workers (gloo on CPU, NCCL on GPU).

    Its run lives at ``storage_path/name``; a run restarted with the same pair resumes from its
    latest checkpoint (Train V2 restores it). ``trainer_cls``/``trainer_kwargs``: the mode's trainer;
    ``log_name``: what the workers' log lines are prefixed with (a trial's name).
    """
    use_gpu, resources = worker_resources(cfg, cluster_gpus)
    # Train logs every report at INFO; the loop's own progress line says what matters (Ray >= 2.56).
    logging_config = {"logging_config": ray.train.LoggingConfig(log_level="WARNING")} if hasattr(ray.train, "LoggingConfig") else {}
    return trainer_cls(
        train_loop_per_worker,
        train_loop_config={"config": cfg, "progress": progress, "log_name": log_name},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.ray.num_workers, use_gpu=use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=name, storage_path=str(storage_path), callbacks=callbacks or [],
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=keep_checkpoints),
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            **logging_config,
        ),
        **trainer_kwargs,
    )


def fit_run(cfg: Config, storage_path: str | Path, name: str, cluster_gpus: float, mode: fastpath.Mode | None = None,
            **kwargs: Any):
    """Train one run to the end outside Tune (``tune_app train``); returns Ray Train's ``Result``."""
    mode = mode or fastpath.choose(cfg.ray.fast_start)
    return make_torch_trainer(cfg, storage_path, name, cluster_gpus, trainer_cls=fastpath.trainer_cls(mode), **kwargs).fit()


def run_trial(params: dict[str, Any], base: Config, trials_dir: str, cluster_gpus: float, mode: fastpath.Mode) -> None:
    """The Tune function trainable: one trial = one TorchTrainer run of ``base`` with the trial's swept values
    (``params`` is the trial's whole config, see :meth:`tune_app.sweep.space.Sweep.param_space`).

    The Train run is named after the trial (``train-<trial_id>``) under ``trials_dir``, so a trial
    restarted by ``resume`` (or after a failure) continues from its latest checkpoint.
    """
    swept = swept_values(params)
    cfg = base.with_params(swept, source="trial parameter")
    name = trial_name(swept, list(swept))
    fastpath.name_logs(name)                 # this process may have run another trial before (reused actor)
    with fastpath.trial(mode, final_step=cfg.training.steps) as hooks:
        make_torch_trainer(cfg, trials_dir, f"train-{tune.get_context().get_trial_id()}", cluster_gpus,
                           trainer_cls=hooks.trainer_cls, callbacks=hooks.callbacks, keep_checkpoints=2,
                           log_name=name, **hooks.trainer_kwargs).fit()


def tune_trainable(base: Config, trials_dir: str | Path, cluster_gpus: float, mode: fastpath.Mode, keys: list[str]):
    """``run_trial`` bound to a sweep's base config, holding no CPU itself (its workers hold them), as a
    Tune trainable class whose actors Ray's dashboard shows under their trial's name (``lr=5e-05,...``:
    the Actors page's name, taken when the actor starts, and the prefix of its log lines)."""
    fn = tune.with_parameters(run_trial, base=base, trials_dir=str(trials_dir), cluster_gpus=cluster_gpus, mode=mode)

    class NamedTrial(wrap_function(tune.with_resources(fn, {"cpu": 0, "memory": 1}))):
        def __repr__(self) -> str:
            return trial_name(self.config, keys)

    NamedTrial.__name__ = NamedTrial.__qualname__ = "run_trial"     # Tune's name for the trainable, as before
    return NamedTrial
