"""Ray Train jobs: the TorchTrainer for one training run, and the Tune trainable that runs one per trial.

Train V2 pattern (ray-notes.md §1): a Tune *function* trainable is the Train driver; it builds a
``TorchTrainer`` (:mod:`tune_app.fastpath.trainer`) whose workers run
:func:`tune_app.train.loop.train_loop_per_worker`, and :class:`TrialReportCallback` forwards rank 0's
reports to Tune. The trainable itself holds no CPU (``{"cpu": 0, "memory": 1}``), so a trial's
workers can use every CPU its resources name.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray.train import UserCallback

from tune_app.config import Config

if TYPE_CHECKING:
    from tune_app.fastpath.trainer import TrialStop


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


def make_torch_trainer(cfg: Config, storage_path: str | Path, name: str, cluster_gpus: float,
                       callbacks: list | None = None, progress: bool = False, keep_checkpoints: int | None = None,
                       max_failures: int = 0, trial_stop: TrialStop | None = None, janitor: str | None = None,
                       stock: bool = False):
    """The TorchTrainer that trains ``cfg`` on ``ray.num_workers`` DDP workers.

    Its run lives at ``storage_path/name``; a run restarted with the same pair resumes from its
    latest checkpoint (Train V2 restores it automatically). Inside a Tune trial, ``trial_stop``
    (the trial's stop event) and ``janitor`` (the sweep's placement-group janitor) are given: the
    Train controller then runs in the trial's process (:mod:`tune_app.fastpath.trainer`). ``stock``: Ray's
    unmodified ``TorchTrainer`` instead (what benchmarks/sweep_overhead.py compares against).
    """
    import ray.train
    import ray.train.torch
    from ray.train.v2.api.config import LoggingConfig

    from tune_app.fastpath import trainer
    from tune_app.train.loop import train_loop_per_worker

    use_gpu, resources = worker_resources(cfg, cluster_gpus)
    trainer_cls, extra = ((ray.train.torch.TorchTrainer, {}) if stock else
                          (trainer.TorchTrainer, {"trial_stop": trial_stop, "janitor": janitor}))
    return trainer_cls(
        train_loop_per_worker,
        train_loop_config={"config": cfg.to_dict(), "progress": progress},
        torch_config=ray.train.torch.TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.ray.num_workers, use_gpu=use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=name, storage_path=str(storage_path), callbacks=callbacks or [],
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=keep_checkpoints),
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            # Train logs every report at INFO; the loop's own progress line says what matters.
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
        **extra,
    )


def fit_run(cfg: Config, storage_path: str | Path, name: str, cluster_gpus: float, **kwargs: Any):
    """Train one run to the end; returns Ray Train's ``Result``."""
    return make_torch_trainer(cfg, storage_path, name, cluster_gpus, **kwargs).fit()


def run_trial(params: dict[str, Any], base: dict[str, Any], trials_dir: str, cluster_gpus: float,
              janitor: str, keep_checkpoints: int = 2) -> None:
    """The Tune function trainable: one trial = one TorchTrainer run of ``base`` + ``params``.

    The Train run is named after the trial (``train-<trial_id>``) under ``trials_dir``, so a trial
    restarted by ``resume`` (or after a failure) continues from its latest checkpoint.
    """
    from ray import tune

    from tune_app.config import build_config
    from tune_app.fastpath.trainer import TrialStop

    cfg = build_config(base, source="trial", overrides=params, override_source="trial parameter")
    trial_id = tune.get_context().get_trial_id()
    stop = TrialStop()
    fit_run(cfg, trials_dir, f"train-{trial_id}", cluster_gpus, callbacks=[TrialReportCallback(stop, cfg.training.steps)],
            keep_checkpoints=keep_checkpoints, trial_stop=stop, janitor=janitor)
    if stop.stopped():
        # End the way Tune ends a stopped function trainable's thread (its report raises SystemExit);
        # returning would make Tune's wrapper report once more, to a session nobody reads any more.
        raise SystemExit(0)


class TrialReportCallback(UserCallback):
    """Reports rank 0's metrics to Tune (``checkpoint_path`` added, as Ray's ``TuneReportCallback``).

    The Train controller runs in the trial's own thread here (:mod:`tune_app.fastpath.trainer`), so this
    calls ``tune.report`` directly, the path Tune designed for function trainables: no queue actor
    per trial, and none of the Ray 2.60 race where Tune's main thread forwarding a queued report
    after the trial function returned blocks the trial forever. When Tune stops the trial, its
    session ends the reporting thread with ``SystemExit``; that is caught and recorded in
    ``stop`` so the Train run is aborted (workers released) rather than torn through, unless it
    answered the final report (``final_step``): that run ends by itself, cleanly.
    """

    def __init__(self, stop: TrialStop, final_step: int):
        self._stop = stop
        self._final_step = final_step

    def __getstate__(self):
        # Train ships its run config (callbacks included) to the workers, which never call this.
        return {}

    def __setstate__(self, state):
        self._stop = None

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        from ray import tune

        if self._stop.stopped():
            return
        item = dict(metrics[0])
        if checkpoint:
            item["checkpoint_path"] = checkpoint.path
        try:
            tune.report(item)          # returns when Tune has taken it (synchronous reporting)
        except SystemExit:
            self._stop.set(after_run=item.get("step") == self._final_step)


def tune_trainable(base: Config, trials_dir: str | Path, cluster_gpus: float, janitor: str):
    """``run_trial`` bound to a sweep's base config, holding no CPU itself (its workers hold them)."""
    from ray import tune

    fn = tune.with_parameters(run_trial, base=base.to_dict(), trials_dir=str(trials_dir), cluster_gpus=cluster_gpus,
                              janitor=janitor)
    return tune.with_resources(fn, {"cpu": 0, "memory": 1})
