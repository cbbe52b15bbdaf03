"""Checkpoints: LeRobot ACT ``pretrained_model`` folders with tune_app's config beside, and loading them back.

A checkpoint directory holds::

    pretrained_model/
      config.json                    LeRobot's ACTConfig            } a LeRobot ACT pretrained_model:
      model.safetensors              weights in LeRobot's names     } ACTPolicy.from_pretrained loads it
      policy_preprocessor.json       + policy_preprocessor_step_3_normalizer_processor.safetensors
      policy_postprocessor.json      + policy_postprocessor_step_0_unnormalizer_processor.safetensors
      train_config.json              the resolved tune_app config
      data_split.json                the data source and which episodes trained / validated
    training_state/                  (training checkpoints only; what a restarted run resumes from)
      state.pt                       optimizer, scheduler, sampler position, RNG state of every rank
      training_step.json             {"step": N}

``pretrained_model/`` is self-contained: :func:`load_policy` needs neither Ray nor the training code. It
also loads a ``pretrained_model`` that LeRobot wrote (no ``train_config.json``): see
:mod:`tune_app.policy.lerobot_format`.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from tune_app.config import Config, config_from_dict
from tune_app.errors import UserError
from tune_app.policy import lerobot_format as lr
from tune_app.policy.act import ACTPolicy
from tune_app.policy.ensemble import ChunkExecutor, TemporalEnsembler
from tune_app.policy.normalize import NormStats
from tune_app.yamlio import read_text

PRETRAINED = "pretrained_model"
TRAINING_STATE = "training_state"
TRAIN_CONFIG = "train_config.json"


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def save_pretrained(directory: str | Path, model: torch.nn.Module, cfg: Config, stats: NormStats,
                    num_cameras: int = 1, data_info: dict | None = None, cameras: list[str] | None = None) -> Path:
    """Write ``directory/pretrained_model/`` for ``model`` (unwrapped, not DDP) and return its path.

    ``cameras``: the image feature keys (default ``observation.images.color``, ``...cam1``, ...).
    ``data_info`` (the data source and its train/val episode split) is written as ``data_split.json``."""
    out = Path(directory) / PRETRAINED
    out.mkdir(parents=True, exist_ok=True)
    lr.write(out, model.state_dict(), cfg, stats, lr.camera_features(num_cameras, cameras))
    _write_json(out / TRAIN_CONFIG, cfg.to_dict())
    if data_info is not None:
        _write_json(out / "data_split.json", data_info)
    return out


def export_lerobot(checkpoint: str | Path, out: str | Path) -> Path:
    """Copy a checkpoint's LeRobot files (and nothing of tune_app's) into ``out``, a new folder.

    The copy goes to a hidden sibling first and is renamed into place, so ``out`` is whole or absent."""
    directory = pretrained_dir(checkpoint)
    if not (directory / TRAIN_CONFIG).is_file():
        raise UserError(f"{directory}: already a LeRobot checkpoint (no {TRAIN_CONFIG}); use it as it is")
    load_policy(directory)                          # refuses an old-layout or damaged checkpoint, before writing
    out = Path(out)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    tmp.mkdir(parents=True)                         # outside the try: a folder that was already there is not ours
    try:
        for name in lr.FILES:
            shutil.copy2(directory / name, tmp / name)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def save_training_state(directory: str | Path, state: dict[str, Any]) -> None:
    out = Path(directory) / TRAINING_STATE
    out.mkdir(parents=True, exist_ok=True)
    torch.save(state, out / "state.pt")
    _write_json(out / "training_step.json", {"step": int(state["step"])})


def load_training_state(directory: str | Path) -> dict[str, Any] | None:
    path = Path(directory) / TRAINING_STATE / "state.pt"
    if not path.is_file():
        return None
    # weights_only: a run directory may be shared (NFS, a bucket); unpickling arbitrary objects from it
    # would run whatever code someone who can write there put in.
    return torch.load(path, map_location="cpu", weights_only=True)


def pretrained_dir(path: str | Path) -> Path:
    """The folder holding ``model.safetensors`` and a config: ``path`` or ``path/pretrained_model``."""
    path = Path(path)
    for candidate in (path, path / PRETRAINED):
        if (candidate / lr.WEIGHTS).is_file() and ((candidate / TRAIN_CONFIG).is_file() or (candidate / lr.CONFIG).is_file()):
            return candidate
    raise UserError(f"{path}: not a tune_app or LeRobot ACT checkpoint (no model.safetensors with train_config.json "
                    f"or config.json here or in {PRETRAINED}/)")


def _read_json(path: Path, what: str) -> dict:
    try:
        tree = json.loads(read_text(path, what))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc.msg}); the checkpoint is damaged") from None
    if not isinstance(tree, dict):
        raise UserError(f"{path}: not a JSON object; the checkpoint is damaged")
    return tree


def read_checkpoint(path: str | Path) -> tuple[Path, Config, list[str]]:
    """``(folder, config, camera keys)`` of a tune_app checkpoint or a LeRobot ACT ``pretrained_model``."""
    directory = pretrained_dir(path)
    if (directory / TRAIN_CONFIG).is_file():
        cfg = config_from_dict(_read_json(directory / TRAIN_CONFIG, "checkpoint config"), source=str(directory / TRAIN_CONFIG))
        cameras: list[str] = []
        if (directory / lr.CONFIG).is_file():
            inputs = _read_json(directory / lr.CONFIG, "checkpoint config").get("input_features") or {}
            cameras = [k for k, v in inputs.items() if isinstance(v, dict) and v.get("type") == "VISUAL"]
    else:
        cfg, cameras = lr.read_config(directory, _read_json(directory / lr.CONFIG, "LeRobot config"))
    cfg.model.pretrained_backbone = False   # the weights come from model.safetensors
    return directory, cfg, cameras


def model_weights(directory: Path) -> dict[str, torch.Tensor]:
    """The model's state dict from ``model.safetensors`` (LeRobot's names, prefix removed)."""
    return lr.model_state(_load_tensors(directory / lr.WEIGHTS), directory / lr.WEIGHTS)


def load_state(model: ACTPolicy, state: dict[str, torch.Tensor], source: Path) -> None:
    """``model.load_state_dict(state)``, with a mismatch as one line naming ``source``."""
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        detail = str(exc).replace("\n", " ").replace("\t", "")
        raise UserError(f"{source}: the weights do not fit this model ({detail[:200]}); the model settings "
                        "(model.dim_model, chunk_size, layers, state/action dims) must match the checkpoint's") from None


ARCHITECTURE = ("state_dim", "action_dim", "chunk_size", "dim_model", "n_heads", "dim_feedforward", "n_encoder_layers",
                "n_decoder_layers", "n_vae_encoder_layers", "latent_dim", "use_vae", "pre_norm", "feedforward_activation")


def check_init_from(cfg: Config) -> None:
    """``training.init_from``'s checkpoint must exist, load, and have this config's model shape (before any write)."""
    if not cfg.training.init_from:
        return
    try:
        directory, saved, _ = read_checkpoint(cfg.training.init_from)
        for key in ARCHITECTURE:
            ours, theirs = getattr(cfg.model, key), getattr(saved.model, key)
            if ours != theirs:
                raise UserError(f"{directory}: its model.{key} is {theirs!r} but this config's is {ours!r}; "
                                f"set model.{key}={theirs!r} to fine-tune from it")
        load_state(ACTPolicy(saved.model), model_weights(directory), directory / lr.WEIGHTS)
    except UserError as exc:
        raise UserError(f"training.init_from: {exc}") from None


def init_weights(model: ACTPolicy, path: str) -> None:
    """Load ``training.init_from``'s weights into a fresh ``model`` (optimizer and step start anew)."""
    directory = pretrained_dir(path)
    load_state(model, model_weights(directory), directory / lr.WEIGHTS)


class LoadedPolicy:
    """A policy restored from a checkpoint, with its normalisation: raw observations in, raw actions out."""

    def __init__(self, model: ACTPolicy, stats: NormStats, cfg: Config, path: Path, cameras: list[str] | None = None):
        self.model, self.stats, self.cfg, self.path = model, stats, cfg, path
        self.cameras = cameras or []
        self.device = next(model.parameters()).device
        self._runner: TemporalEnsembler | ChunkExecutor | None = None

    def normalise(self, state: np.ndarray | torch.Tensor, images: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.stats
        state = torch.as_tensor(state, dtype=torch.float32)
        if isinstance(images, np.ndarray) and not images.flags.writeable:   # frames memory-mapped from the data cache
            images = np.array(images)
        images = torch.as_tensor(images)
        if images.dim() == 4:                       # (B, H, W, 3): one camera
            images = images[:, None]
        img = images.permute(0, 1, 4, 2, 3).float() / 255.0
        mean, std = (torch.from_numpy(np.asarray(a, np.float32)).view(1, -1, 3, 1, 1) for a in (s.image_mean, s.image_std))
        img = (img - mean) / std
        st = (state - torch.from_numpy(s.state_mean)) / torch.from_numpy(s.state_std)
        return st.to(self.device), img.to(self.device)

    @torch.no_grad()
    def predict(self, state, images) -> np.ndarray:
        """Raw state (B, state_dim) and uint8 images (B, [cams,] H, W, 3) -> raw actions (B, chunk, action_dim)."""
        st, img = self.normalise(state, images)
        pred, _ = self.model(st, img)
        s = self.stats
        return (pred.float().cpu() * torch.from_numpy(s.action_std) + torch.from_numpy(s.action_mean)).numpy()

    @property
    def temporal_ensemble_coeff(self) -> float | None:
        return self.cfg.model.temporal_ensemble_coeff

    def reset(self) -> None:
        """Start a new episode: forget the chunks of the last one (call before the first ``predict_step``)."""
        coeff, chunk = self.temporal_ensemble_coeff, self.cfg.model.chunk_size
        self._runner = TemporalEnsembler(coeff, chunk) if coeff is not None else ChunkExecutor(chunk)

    def predict_step(self, state, images) -> np.ndarray:
        """One control step: raw state (state_dim,) and uint8 image(s) ([cams,] H, W, 3) -> the raw action
        (action_dim,) to execute now. With ``model.temporal_ensemble_coeff`` set, the policy is queried every
        step and the overlapping chunks are averaged; without, it is queried once per chunk."""
        if self._runner is None:
            self.reset()
        runner = self._runner
        query = isinstance(runner, TemporalEnsembler) or runner.needs_query()
        chunk = self.predict(np.asarray(state)[None], np.asarray(images)[None])[0] if query else None
        return runner.step(chunk).astype(np.float32)


def load_policy(path: str | Path, device: str | torch.device = "cpu", temporal_ensemble_coeff: float | None | str = "saved",
                ) -> LoadedPolicy:
    """Load ``pretrained_model/`` (or a checkpoint directory holding it) into an eval-mode policy; a LeRobot
    ACT ``pretrained_model`` loads too.

    ``temporal_ensemble_coeff``: what :meth:`LoadedPolicy.predict_step` uses; ``"saved"`` (default) keeps
    the checkpoint's ``model.temporal_ensemble_coeff``, None turns ensembling off, a number turns it on.

    A damaged checkpoint (a truncated safetensors file, an unreadable config) is a :class:`UserError`
    naming the file."""
    directory, cfg, cameras = read_checkpoint(path)
    if temporal_ensemble_coeff != "saved":
        if temporal_ensemble_coeff is not None and not float(temporal_ensemble_coeff) >= 0:
            raise UserError(f"temporal_ensemble_coeff must be >= 0 or None, got {temporal_ensemble_coeff}")
        cfg.model.temporal_ensemble_coeff = None if temporal_ensemble_coeff is None else float(temporal_ensemble_coeff)
    model = ACTPolicy(cfg.model)
    load_state(model, model_weights(directory), directory / lr.WEIGHTS)
    model.to(device).eval()
    stats = lr.read_stats(_load_tensors(directory / lr.PRE_STATS), cameras, directory / lr.PRE_STATS)
    return LoadedPolicy(model, stats, cfg, directory, cameras)


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise UserError(f"{path}: missing; the checkpoint is incomplete") from None
    except (SafetensorError, OSError) as exc:
        raise UserError(f"{path}: unreadable safetensors file ({str(exc).splitlines()[0][:120]}); "
                        "the checkpoint is damaged or was cut short") from None
