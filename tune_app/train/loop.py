"""The DDP training loop: build, (resume), loop, validate, report, checkpoint.

``train_loop_per_worker`` is what each Ray Train worker runs; :func:`run` is the loop itself and
takes a session (see :mod:`tune_app.train.session`), so a plain process runs exactly the same code.

Every rank computes; metrics are averaged across ranks with one all-reduce per report; rank 0 alone
writes checkpoints, and every rank calls ``session.report`` (Ray Train's report is a barrier).

Metrics per report: ``loss``, ``l1_loss``, ``kl_loss`` (training, averaged over the steps since
the last report and over ranks), ``lr`` (policy group) and ``lr_backbone``, ``step`` (optimizer
steps done), ``epoch``, ``samples_per_s`` (all ranks), and the latest validation metrics:

* ``val_loss``: L1 of the actions the policy predicts as it would at deployment (latent z = 0, no
  dropout), on the validation episodes. It does not depend on ``kl_weight``, so trials with
  different KL weights are compared fairly; this is the metric sweeps minimise by default.
* ``val_l1`` and ``val_kl``: the training objective's two terms on the validation episodes, with
  the CVAE posterior mean as the latent.

``first_step_at`` (unix time the first optimizer step of this start began), ``loop_time_s``
(wall seconds since then, validation and checkpoints included) and ``step_time_s`` (seconds
inside optimizer steps, data loading included) measure start-up, throughput and efficiency;
``setup_s`` is the loop's own share of start-up, split into ``setup_data_s`` (data), ``setup_model_s``
(model, optimizer, resume) and ``setup_val_s`` (step-0 validation and its report); ``entered_at`` and
``process_started_at`` (unix times the loop was entered and its process started) place the rest.
``worker_pid`` and ``rss_mb`` say which process rank 0 runs in and its resident memory (a reused
worker's growth from trial to trial shows there).

Validation runs before the first step of a fresh run (reported at step 0), every
``training.eval_freq`` steps and at the end; checkpoints every ``training.save_freq`` and at the end.
A run whose trial Tune stopped (``session.stop_requested()``) ends after the current step (with DDP:
within ``STOP_POLL_STEPS``, every rank at the same step) without a further report or checkpoint.
"""

from __future__ import annotations

import contextlib
import math
import os
import pickle
import random
import tempfile
import time
import warnings
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from tune_app import fastpath
from tune_app.config import Config
from tune_app.data import ChunkDataset, prepare
from tune_app.errors import UserError
from tune_app.policy.act import ACTPolicy, act_loss
from tune_app.policy.checkpoint import init_weights, load_training_state, save_pretrained, save_training_state
from tune_app.policy.lerobot_format import model_state
from tune_app.policy.manifest import is_complete, write_manifest
from tune_app.train.batches import BatchStream, ShardedEpochSampler
from tune_app.train.optim import build_optimizer
from tune_app.train.process import release_memory, rss_mb, started_at
from tune_app.train.schedule import build_scheduler
from tune_app.train.session import RayTrainSession

# DDP warns once per process that the 1x1 projection's gradient layout differs from its bucket
# view; it is a memory-layout note about a tiny conv, not a correctness problem.
warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """This process's RNG streams as tensors and plain numbers (loadable with ``weights_only=True``)."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, torch.tensor(mt, dtype=torch.int64), gauss],
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(int(x) for x in mt.tolist()), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def all_reduce_sum(values: list[float], device: torch.device, world_size: int) -> list[float]:
    if world_size == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


@torch.no_grad()
def average_buffers(model: torch.nn.Module, world_size: int) -> None:
    """Average BatchNorm running statistics over ranks.

    DDP copies rank 0's buffers to every rank at the start of each forward, then each rank's
    forward updates them with its own batch, so after the last step the ranks disagree. Averaging
    before validation and checkpoints makes every rank evaluate, and rank 0 save, the same model.
    """
    if world_size == 1:
        return
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
            for buf in (module.running_mean, module.running_var):
                dist.all_reduce(buf)
                buf /= world_size


def param_spread(model: torch.nn.Module, device: torch.device, world_size: int) -> float:
    """Largest difference across ranks of a fingerprint of the weights and buffers (sum and sum of
    squares); 0 when every rank holds the identical model."""
    fp = torch.zeros(2, dtype=torch.float64, device=device)
    for p in [*model.parameters(), *(b for b in model.buffers() if b.is_floating_point())]:
        fp[0] += p.detach().double().sum()
        fp[1] += p.detach().double().pow(2).sum()
    if world_size == 1:
        return 0.0
    hi, lo = fp.clone(), -fp
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    dist.all_reduce(lo, op=dist.ReduceOp.MAX)
    return float((hi + lo).abs().max())


@torch.no_grad()
def validate(model: ACTPolicy, dataset: ChunkDataset, cfg: Config, device: torch.device, rank: int,
             world_size: int, autocast) -> dict[str, float]:
    """Validation metrics over this rank's share of the validation frames, summed over ranks."""
    model.eval()
    indices = list(range(rank, len(dataset), world_size))
    bs = cfg.training.batch_size
    batches = [indices[i:i + bs] for i in range(0, len(indices), bs)]
    if cfg.training.val_batches is not None:
        batches = batches[: cfg.training.val_batches]
    # Sums over every real (unpadded) action element and every sample, so the result does not
    # depend on how frames were batched or sharded across ranks.
    sums = [0.0, 0.0, 0.0, 0.0, 0.0]  # inference |err|, posterior |err|, KL, elements, samples
    for chunk in batches:
        batch = _to(torch.utils.data.default_collate([dataset[i] for i in chunk]), device)
        elements = float((~batch["action_is_pad"]).sum().item() * batch["action"].shape[-1])
        with autocast():
            pred, _ = model(batch["state"], batch["image"])
            _, infer_l1, _ = act_loss(pred, batch["action"], batch["action_is_pad"], None, 0.0)
            if model.cfg.use_vae:
                mu, logvar = model.posterior(batch["state"], batch["action"], batch["action_is_pad"])
                post = model.decode(batch["state"], batch["image"], mu)
                _, l1, kl = act_loss(post, batch["action"], batch["action_is_pad"], (mu, logvar), 0.0,
                                     cfg.model.kl_reduction)
            else:
                l1, kl = infer_l1, torch.zeros(())
        n = len(chunk)
        sums = [sums[0] + infer_l1.item() * elements, sums[1] + l1.item() * elements, sums[2] + kl.item() * n,
                sums[3] + elements, sums[4] + n]
    sums = all_reduce_sum(sums, device, world_size)
    model.train()
    elements, samples = max(sums[3], 1.0), max(sums[4], 1.0)
    return {"val_loss": sums[0] / elements, "val_l1": sums[1] / elements, "val_kl": sums[2] / samples}


STOP_POLL_STEPS = 4     # with DDP, ranks vote on a stop every this many steps (one tiny all-reduce)


def _stop_agreed(session, step: int, device: torch.device, world: int) -> bool:
    """Whether to end the run after this step because Tune stopped the trial. One process decides
    alone; DDP ranks vote every ``STOP_POLL_STEPS`` steps so they all stop at the same step (a rank
    that stopped alone would leave the others waiting in the next gradient all-reduce)."""
    if world == 1:
        return session.stop_requested()
    if step % STOP_POLL_STEPS:
        return False
    return all_reduce_sum([float(session.stop_requested())], device, world)[0] > 0


def _due(step: int, every: int, last: int) -> bool:
    return step % every == 0 or step == last


def progress_line(metrics: dict[str, Any], total_steps: int, elapsed_s: float, start_step: int) -> str:
    """``step 100/300 | loss 4.52 | val_loss 0.526 | lr 1.0e-04 | 66 samples/s | ETA 0:30``."""
    step = metrics["step"]
    done = step - start_step
    eta = elapsed_s / done * (total_steps - step) if done > 0 else float("nan")
    parts = [f"step {step}/{total_steps}"]
    parts += [f"{k} {metrics[k]:.4g}" for k in ("loss", "val_loss") if k in metrics]
    parts.append(f"lr {metrics['lr']:.2e}")
    if "samples_per_s" in metrics:
        parts.append(f"{metrics['samples_per_s']:.0f} samples/s")
    if math.isfinite(eta):
        parts.append(f"ETA {int(eta // 60)}:{int(eta % 60):02d}")
    return " | ".join(parts)


def run(cfg: Config, session, progress: bool = False) -> dict[str, Any]:
    """Train ``cfg`` in ``session``; returns the last reported metrics.

    With ``progress``, rank 0 prints one line per report (step, losses, lr, samples/s, ETA).
    """
    entered, entered_at = time.perf_counter(), time.time()
    t, rank, world, device = cfg.training, session.rank, session.world_size, session.device
    seed_everything(t.seed + rank)

    prepared = prepare(cfg)
    train_ds, val_ds = prepared.datasets(cfg.model.chunk_size)
    sampler = ShardedEpochSampler(len(train_ds), rank, world, t.seed, t.batch_size)
    if sampler.batches_per_epoch == 0:
        raise UserError(f"training.batch_size ({t.batch_size}) x ray.num_workers ({world}) is larger than the "
                        f"{len(train_ds)} training samples; lower the batch size")
    loader = DataLoader(train_ds, batch_size=t.batch_size, sampler=sampler, drop_last=True,
                        num_workers=t.num_workers, persistent_workers=t.num_workers > 0,
                        pin_memory=device.type == "cuda")
    stream = BatchStream(loader, sampler)
    data_ready = time.perf_counter()

    model = ACTPolicy(cfg.model)
    if t.init_from:
        init_weights(model, t.init_from)          # a resumed run's checkpoint replaces these below
    model = model.to(device)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, t)
    start_step = _resume(session, model, optimizer, scheduler, stream, progress and rank == 0)
    ddp = DistributedDataParallel(model) if world > 1 else model   # broadcasts rank 0's weights
    use_bf16 = t.precision == "bf16" and device.type == "cuda"
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_bf16 else contextlib.nullcontext
    model_ready = time.perf_counter()

    last_val = validate(model, val_ds, cfg, device, rank, world, autocast) if len(val_ds) else {}
    metrics: dict[str, Any] = {}
    # Step 0's validation; or a run resumed from its final checkpoint, which has no step left to report
    # at: its one report says where it ended (the driver may have died before it heard the last one).
    if (start_step == 0 and last_val) or start_step >= t.steps:
        metrics = {"step": start_step, "epoch": stream.epoch if start_step else 0, "lr": optimizer.param_groups[0]["lr"],
                   **last_val}
        session.report(metrics, None, start_step)

    # Loss sums stay on the device between reports: a .item() per step would sync the GPU every step.
    window, window_steps = torch.zeros(3, dtype=torch.float64, device=device), 0
    window_start = run_start = time.perf_counter()
    batches = iter(stream)
    first_step_at, step_time = None, 0.0
    for step in range(start_step + 1, t.steps + 1):
        step_start = time.perf_counter()
        if first_step_at is None:
            first_step_at, loop_start, setup_s = time.time(), step_start, step_start - entered
            # Where a start's seconds went: process start -> loop entered -> data -> model -> step-0 validation.
            start_up = {"process_started_at": started_at(), "entered_at": entered_at, "setup_data_s": data_ready - entered,
                        "setup_model_s": model_ready - data_ready, "setup_val_s": step_start - model_ready}
        batch = _to(next(batches), device)
        with autocast():
            pred, latent = ddp(batch["state"], batch["image"], batch["action"], batch["action_is_pad"])
            loss, l1, kl = act_loss(pred, batch["action"], batch["action_is_pad"], latent, t.kl_weight,
                                    cfg.model.kl_reduction, cfg.model.l1_reduction)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if t.grad_clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(ddp.parameters(), t.grad_clip_norm)
        optimizer.step()
        scheduler.step()
        window += torch.stack([loss.detach(), l1.detach(), kl.detach()]).double()
        window_steps += 1
        step_time += time.perf_counter() - step_start

        evaluate, save = _due(step, t.eval_freq, t.steps), _due(step, t.save_freq, t.steps)
        if not (evaluate or save or _due(step, t.log_freq, t.steps)):
            if _stop_agreed(session, step, device, world):
                break                      # Tune stopped the trial: end now, cleanly (its workers stay warm)
            continue
        elapsed = time.perf_counter() - window_start
        # At a report the stop vote rides in the metrics' all-reduce.
        *sums, stop = all_reduce_sum([*window.tolist(), float(session.stop_requested())], device, world)
        if stop:
            break
        n = window_steps * world
        if evaluate or save:
            average_buffers(model, world)
        if evaluate and len(val_ds):
            last_val = validate(model, val_ds, cfg, device, rank, world, autocast)
        metrics = {"step": step, "epoch": stream.epoch, "loss": sums[0] / n, "l1_loss": sums[1] / n,
                   "kl_loss": sums[2] / n, "lr": optimizer.param_groups[0]["lr"],
                   "lr_backbone": optimizer.param_groups[1]["lr"],
                   "samples_per_s": n * t.batch_size / max(elapsed, 1e-9), **last_val,
                   "first_step_at": first_step_at, "loop_time_s": time.perf_counter() - loop_start,
                   "step_time_s": step_time, "setup_s": setup_s, **start_up,
                   "worker_pid": os.getpid(), "rss_mb": rss_mb()}     # rank 0's process: a reused worker's growth
        if save:
            metrics["param_spread"] = param_spread(model, device, world)
        if not all(math.isfinite(v) for v in (metrics["loss"],)):
            raise FloatingPointError(f"loss became {metrics['loss']} at step {step}; lower training.lr")
        _report(session, metrics, step, save, model, optimizer, scheduler, stream, prepared, cfg)
        if progress and rank == 0:
            print(progress_line(metrics, t.steps, time.perf_counter() - run_start, start_step), flush=True)
        window, window_steps, window_start = torch.zeros_like(window), 0, time.perf_counter()
    return metrics


def _report(session, metrics, step, save, model, optimizer, scheduler, stream, prepared, cfg) -> None:
    rngs = None
    if save:
        # Every rank's RNG state goes into rank 0's checkpoint so a restart continues each stream.
        rngs = [rng_state()]
        if session.world_size > 1:
            rngs = [None] * session.world_size
            dist.all_gather_object(rngs, rng_state())
    if not (save and session.rank == 0):
        session.report(metrics, None, step)
        return
    with tempfile.TemporaryDirectory(prefix="tune_app_ckpt_") as tmp:
        save_pretrained(tmp, model, cfg, prepared.stats, prepared.episodes.num_cameras, data_info=prepared.split_info(cfg))
        save_training_state(tmp, {"step": step, "optimizer": optimizer.state_dict(),
                                  "scheduler": scheduler.state_dict(), "epoch": stream.epoch,
                                  "batch": stream.batch, "rng": rngs, "world_size": session.world_size})
        write_manifest(tmp)
        session.report(metrics, tmp, step)


def _resume(session, model, optimizer, scheduler, stream: BatchStream, say: bool) -> int:
    """Restore the newest complete checkpoint the session offers; returns its step (0: a fresh start).

    A checkpoint that is incomplete (no manifest, a file missing or cut short) or unreadable is
    skipped for the one before it, and the choice is printed."""
    skipped = []
    for name, opened in session.resume_candidates():
        with opened() as ckpt_dir:
            if not is_complete(ckpt_dir):
                skipped.append(name)
                continue
            try:
                weights = load_file(f"{ckpt_dir}/pretrained_model/model.safetensors")
                state = load_training_state(ckpt_dir)
            except (OSError, SafetensorError, RuntimeError, pickle.UnpicklingError, EOFError) as exc:
                skipped.append(f"{name} ({type(exc).__name__})")
                continue
            step = _restore(model_state(weights, ckpt_dir), state, model, optimizer, scheduler, stream, session.rank, session.world_size)
            if say:
                extra = f"; skipped incomplete or unreadable {', '.join(skipped)}" if skipped else ""
                print(f"resumed from checkpoint {name} at step {step}{extra}", flush=True)
            return step
    if skipped and say:
        print(f"no complete checkpoint to resume from (skipped {', '.join(skipped)}); starting at step 0", flush=True)
    return 0


def _restore(weights, state, model, optimizer, scheduler, stream: BatchStream, rank: int, world: int) -> int:
    model.load_state_dict(weights)
    if state is None:
        return 0
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    stream.epoch, stream.batch = state["epoch"], state["batch"]
    if state.get("world_size") == world and state.get("rng"):
        set_rng_state(state["rng"][rank])
    return int(state["step"])


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Entry point for Ray Train workers: ``loop_config["config"]`` is the run's :class:`Config`."""
    fastpath.quiet_worker_logs(UserError)
    if loop_config.get("log_name"):
        fastpath.name_logs(loop_config["log_name"])
    cfg: Config = loop_config["config"]
    try:
        run(cfg, RayTrainSession(cfg.training.device, cfg.ray.cpus_per_worker), progress=bool(loop_config.get("progress")))
    finally:
        release_memory()           # a kept worker starts its next trial without this one's freed heap

