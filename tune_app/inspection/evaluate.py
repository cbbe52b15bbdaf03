"""``python -m tune_app eval CHECKPOINT``: how well an exported policy predicts held-out actions.

The policy is loaded the way a deployment loads it (:func:`load_policy`: its own normalisation
statistics, latent z = 0) and run over the validation episodes of the data it trained on (or of
``--data CONFIG``). Reported:

* per-joint MAE of predicted vs. recorded actions, in the data's units, over every real (unpadded)
  step of every chunk;
* ``l1``: the mean absolute error in normalised units, the number training reports as
  ``val_loss`` (same frames, same masking: equal when training validated on all batches);
* per-joint MAE of the actions a deployment *executes* at each step (observations as recorded), two
  ways: ACT's open-loop chunks (one query every ``chunk_size`` steps) and temporal ensembling (a query
  every step, overlapping chunks averaged with weights ``exp(-coeff * i)``; coeff from
  ``--temporal-ensemble-coeff``, else the checkpoint's ``model.temporal_ensemble_coeff``, else 0.01);
* inference latency per control step (one observation, batch 1) on the chosen device: median, p95.

Per-frame values (episode, frame, l1, MAE per joint) go to a CSV or parquet file.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tune_app.checks import check_writable_file
from tune_app.config import build_config, load_config, parse_override
from tune_app.data import ChunkDataset, prepare
from tune_app.errors import UserError
from tune_app.policy.checkpoint import TRAIN_CONFIG, load_policy, pretrained_dir
from tune_app.policy.ensemble import LEROBOT_DEFAULT_COEFF, executed_actions


@dataclass
class EvalResult:
    checkpoint: str
    data_source: str
    episodes: list[int]
    frames: int
    joint_names: list[str]
    mae: list[float]
    mae_open_loop: list[float]
    mae_ensembled: list[float]
    ensemble_coeff: float
    l1: float
    latency_ms_median: float
    latency_ms_p95: float
    device: str
    rows: list[dict]

    def summary(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "rows"}

    def table(self) -> str:
        width = max(len(n) for n in self.joint_names)
        heads = ("chunk MAE", "executed: open loop", f"ensembled ({self.ensemble_coeff:g})")
        columns = (self.mae, self.mae_open_loop, self.mae_ensembled)

        def row(name: str, values) -> str:
            return "  ".join([name.ljust(width), *(f"{v:{len(h)}.5g}" for v, h in zip(values, heads, strict=True))])

        lines = [f"eval {self.checkpoint}", f"data: {self.data_source}, validation episodes {self.episodes} ({self.frames} frames)",
                 "  ".join(["joint".ljust(width), *heads])]
        lines += [row(n, vals) for n, *vals in zip(self.joint_names, *columns, strict=True)]
        lines += [row("mean", [float(np.mean(c)) for c in columns]),
                  "chunk MAE: every step of every predicted chunk; executed: the action run at each step, "
                  "one query per chunk (open loop) or temporal ensembling",
                  f"l1 (normalised, as training's val_loss): {self.l1:.5g}",
                  f"latency per step on {self.device}: median {self.latency_ms_median:.2f} ms, p95 {self.latency_ms_p95:.2f} ms"]
        return "\n".join(lines)


def _with_data_overrides(cfg, overrides: list[str]):
    """``cfg`` with ``data.*`` overrides applied (paths relative to the current directory)."""
    return build_config(cfg.to_dict(), source="checkpoint train_config.json", overrides=dict(parse_override(o) for o in overrides))


def evaluate(checkpoint: str | Path, data_config: str | None = None, overrides: list[str] | None = None,
             device: str = "cpu", batch_size: int = 32, latency_steps: int = 50,
             ensemble_coeff: float | None = None) -> EvalResult:
    policy = load_policy(checkpoint, device=device)
    cfg = policy.cfg
    if ensemble_coeff is None:
        ensemble_coeff = cfg.model.temporal_ensemble_coeff if cfg.model.temporal_ensemble_coeff is not None \
            else LEROBOT_DEFAULT_COEFF
    for item in overrides or []:
        if not item.split("=", 1)[0].startswith("data."):
            raise UserError(f"--override {item.split('=', 1)[0]}: eval takes data.* overrides only")
    if data_config:
        # The other data's source and decoding conventions; the image size stays the policy's own.
        other = load_config(data_config)
        other.conventions.image_resize = cfg.conventions.image_resize
        cfg.data, cfg.conventions = other.data, other.conventions
    if overrides:
        cfg = _with_data_overrides(cfg, overrides)
    if cfg.data.lerobot_root and cfg.data.camera_keys is None and not (policy.path / TRAIN_CONFIG).is_file():
        cfg.data.camera_keys = list(policy.cameras)       # a LeRobot checkpoint on a LeRobot dataset: its cameras by name
    prepared = prepare(cfg)
    if len(policy.cameras) not in (0, prepared.episodes.num_cameras):
        raise UserError(f"{prepared.episodes.source}: {prepared.episodes.num_cameras} camera(s), but the policy takes "
                        f"{len(policy.cameras)} ({', '.join(policy.cameras)}); pick them with data.camera_keys or "
                        "data.camera_topics")
    if not prepared.val_ids:
        raise UserError(f"{prepared.episodes.source}: no validation episodes (data.val_fraction={cfg.data.val_fraction}); "
                        "set data.val_fraction > 0 with --override")
    ds = ChunkDataset(prepared.episodes, prepared.val_ids, cfg.model.chunk_size, policy.stats)
    act_std = torch.from_numpy(np.asarray(policy.stats.action_std, np.float32))
    abs_sum = torch.zeros(cfg.model.action_dim, dtype=torch.float64)
    norm_sum, steps_total, rows = 0.0, 0, []
    names = list(cfg.data.joint_names) if len(cfg.data.joint_names) == cfg.model.action_dim else \
        [f"joint_{k}" for k in range(cfg.model.action_dim)]
    model = policy.model
    act_mean = torch.from_numpy(np.asarray(policy.stats.action_mean, np.float32))
    chunks = np.zeros((len(ds), cfg.model.chunk_size, cfg.model.action_dim), np.float32)   # raw, per frame
    with torch.no_grad():
        for lo in range(0, len(ds), batch_size):
            idx = list(range(lo, min(lo + batch_size, len(ds))))
            batch = torch.utils.data.default_collate([ds[i] for i in idx])
            pred, _ = model(batch["state"].to(policy.device), batch["image"].to(policy.device))
            pred = pred.float().cpu()
            chunks[idx[0]:idx[-1] + 1] = (pred * act_std + act_mean).numpy()
            valid = (~batch["action_is_pad"]).unsqueeze(-1).float()           # (B, chunk, 1)
            norm_err = (pred - batch["action"]).abs() * valid
            raw_err = norm_err * act_std                                      # |a - b| in data units
            n_valid = valid.sum(dim=(1, 2))                                   # real steps per sample
            abs_sum += raw_err.sum(dim=(0, 1)).double()
            norm_sum += float(norm_err.sum())
            steps_total += int(n_valid.sum())
            per_joint = raw_err.sum(dim=1) / n_valid[:, None]
            l1 = norm_err.sum(dim=(1, 2)) / (n_valid * cfg.model.action_dim)
            for j, i in enumerate(idx):
                frame = int(ds.frames[i])
                episode = int(np.searchsorted(prepared.episodes.episode_ends, frame, side="right"))
                rows.append({"episode": episode, "frame": frame - int(prepared.episodes.episode_starts[episode]),
                             "chunk_steps": int(n_valid[j]), "l1": float(l1[j]),
                             **{f"mae_{n}": float(per_joint[j, k]) for k, n in enumerate(names)}})
    latencies = _latency(policy, prepared, latency_steps)
    open_loop, ensembled = (_executed_mae(prepared, chunks, coeff) for coeff in (None, ensemble_coeff))
    return EvalResult(checkpoint=str(policy.path), data_source=prepared.episodes.source, episodes=prepared.val_ids,
                      frames=len(ds), joint_names=names, mae=(abs_sum / max(steps_total, 1)).tolist(),
                      mae_open_loop=open_loop, mae_ensembled=ensembled, ensemble_coeff=float(ensemble_coeff),
                      l1=norm_sum / max(steps_total * cfg.model.action_dim, 1),
                      latency_ms_median=float(np.median(latencies)), latency_ms_p95=float(np.percentile(latencies, 95)),
                      device=str(policy.device), rows=rows)


def _executed_mae(prepared, chunks: np.ndarray, coeff: float | None) -> list[float]:
    """Per-joint MAE of the executed actions over the validation episodes (``chunks``: the raw chunk
    predicted at each of their frames, episodes in ``val_ids`` order)."""
    eps, errors, lo = prepared.episodes, [], 0
    for e in prepared.val_ids:
        start, end = int(eps.episode_starts[e]), int(eps.episode_ends[e])
        done = executed_actions(chunks[lo:lo + end - start], coeff)
        errors.append(np.abs(done - np.asarray(eps.actions[start:end], np.float64)))
        lo += end - start
    return np.concatenate(errors).mean(0).tolist()


def _latency(policy, prepared, steps: int) -> np.ndarray:
    """Milliseconds per ``policy.predict`` of one observation (normalise, forward, unnormalise)."""
    eps = prepared.episodes
    frames = np.concatenate([np.arange(eps.episode_starts[e], eps.episode_ends[e]) for e in prepared.val_ids])
    picks = frames[np.linspace(0, len(frames) - 1, steps + 3).astype(int)]
    out = []
    for n, f in enumerate(picks):
        state, images = eps.states[f:f + 1], np.asarray(eps.images[f:f + 1])
        t0 = time.perf_counter()
        policy.predict(state, images)
        if policy.device.type == "cuda":
            torch.cuda.synchronize()
        if n >= 3:                                      # the first calls warm up kernels and caches
            out.append((time.perf_counter() - t0) * 1000)
    return np.asarray(out)


def write_rows(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
        return
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def check_device(device: str) -> None:
    """``--device`` names a device torch knows and this machine has."""
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise UserError(f"--device {device!r}: not a torch device; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise UserError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s); use cpu")
    if dev.type not in ("cpu", "cuda"):
        raise UserError(f"--device {device}: eval runs on cpu or cuda")


def run_eval(checkpoint: str, data_config: str | None, overrides: list[str], device: str, output: str | None,
             ensemble_coeff: float | None = None) -> EvalResult:
    """Evaluate, print the table, write per-frame values and ``<output>.json`` with the summary."""
    check_device(device)
    directory = pretrained_dir(checkpoint)
    out = Path(output) if output else directory.parent / "eval" / "eval.csv"
    if out.suffix not in (".csv", ".parquet"):
        raise UserError(f"-o {out}: the per-frame file must end in .csv or .parquet")
    check_writable_file(out, "-o")
    check_writable_file(out.with_suffix(".json"), "-o")
    if data_config:
        load_config(data_config)
    if ensemble_coeff is not None and not ensemble_coeff >= 0:
        raise UserError(f"--temporal-ensemble-coeff must be >= 0, got {ensemble_coeff}")
    result = evaluate(checkpoint, data_config, overrides, device=device, ensemble_coeff=ensemble_coeff)
    write_rows(result.rows, out)
    out.with_suffix(".json").write_text(json.dumps(result.summary(), indent=1) + "\n")
    print(result.table())
    print(f"per-frame values: {out}; summary: {out.with_suffix('.json')}")
    return result
