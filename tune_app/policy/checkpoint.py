"""Checkpoints in the original trainer's (LeRobot-shaped) layout, and loading them back.

A checkpoint directory holds::

    pretrained_model/
      config.json                    LeRobot-ACT-style policy config
      model.safetensors              ACTPolicy.state_dict()
      policy_preprocessor.json       + policy_preprocessor_step_3_normalizer_processor.safetensors
      policy_postprocessor.json      + policy_postprocessor_step_0_unnormalizer_processor.safetensors
      train_config.json              the resolved tune_app config
      data_split.json                the data source and which episodes trained / validated
    training_state/                  (training checkpoints only; what a restarted run resumes from)
      state.pt                       optimizer, scheduler, sampler position, RNG state of every rank
      training_step.json             {"step": N}

``pretrained_model/`` is self-contained: :func:`load_policy` needs neither Ray nor the training code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from tune_app.config import Config, config_from_dict
from tune_app.errors import UserError
from tune_app.policy.act import ACTPolicy
from tune_app.policy.ensemble import ChunkExecutor, TemporalEnsembler
from tune_app.policy.normalize import NormStats
from tune_app.yamlio import read_text

PRETRAINED = "pretrained_model"
TRAINING_STATE = "training_state"
PRE_STATS = "policy_preprocessor_step_3_normalizer_processor.safetensors"
POST_STATS = "policy_postprocessor_step_0_unnormalizer_processor.safetensors"


def _policy_config_json(cfg: Config, num_cameras: int) -> dict[str, Any]:
    m, t = cfg.model, cfg.training
    h, w = cfg.conventions.image_resize
    images = {("observation.images.color" if i == 0 else f"observation.images.cam{i}"): {"type": "VISUAL", "shape": [3, h, w]}
              for i in range(num_cameras)}
    return {
        "type": "act", "n_obs_steps": 1,
        "input_features": {"observation.state": {"type": "STATE", "shape": [m.state_dim]}, **images},
        "output_features": {"action": {"type": "ACTION", "shape": [m.action_dim]}},
        "device": t.device, "use_amp": t.precision == "bf16",
        "chunk_size": m.chunk_size, "n_action_steps": m.chunk_size,
        "normalization_mapping": {"VISUAL": "MEAN_STD", "STATE": "MEAN_STD", "ACTION": "MEAN_STD"},
        "vision_backbone": m.vision_backbone,
        "pretrained_backbone_weights": "ResNet18_Weights.IMAGENET1K_V1" if m.pretrained_backbone else None,
        "replace_final_stride_with_dilation": False, "pre_norm": False,
        "dim_model": m.dim_model, "n_heads": m.n_heads, "dim_feedforward": m.dim_feedforward,
        "feedforward_activation": "relu", "n_encoder_layers": m.n_encoder_layers,
        "n_decoder_layers": m.n_decoder_layers, "use_vae": m.use_vae, "latent_dim": m.latent_dim,
        "n_vae_encoder_layers": m.n_vae_encoder_layers, "temporal_ensemble_coeff": m.temporal_ensemble_coeff, "dropout": m.dropout,
        "kl_weight": t.kl_weight, "kl_reduction": m.kl_reduction, "optimizer_lr": t.lr,
        "optimizer_weight_decay": t.weight_decay, "optimizer_lr_backbone": t.lr_backbone,
    }


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def save_pretrained(directory: str | Path, model: torch.nn.Module, cfg: Config, stats: NormStats,
                    num_cameras: int = 1, data_info: dict | None = None) -> Path:
    """Write ``directory/pretrained_model/`` for ``model`` (unwrapped, not DDP) and return its path.

    ``data_info`` (the data source and its train/val episode split) is written as ``data_split.json``."""
    out = Path(directory) / PRETRAINED
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"))
    _write_json(out / "config.json", _policy_config_json(cfg, num_cameras))
    named = {k: torch.from_numpy(v) for k, v in stats.to_named().items()}
    eps = 1e-8
    _write_json(out / "policy_preprocessor.json", {"name": "policy_preprocessor", "steps": [{
        "registry_name": "normalizer_processor",
        "config": {"eps": eps, "features": sorted({k.rsplit(".", 1)[0] for k in named}),
                   "norm_map": {"VISUAL": "MEAN_STD", "STATE": "MEAN_STD", "ACTION": "MEAN_STD"}},
        "state_file": PRE_STATS}]})
    save_file(named, str(out / PRE_STATS))
    _write_json(out / "policy_postprocessor.json", {"name": "policy_postprocessor", "steps": [{
        "registry_name": "unnormalizer_processor",
        "config": {"eps": eps, "features": ["action"], "norm_map": {"ACTION": "MEAN_STD"}},
        "state_file": POST_STATS}]})
    save_file({k: v for k, v in named.items() if k.startswith("action.")}, str(out / POST_STATS))
    _write_json(out / "train_config.json", cfg.to_dict())
    if data_info is not None:
        _write_json(out / "data_split.json", data_info)
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
    path = Path(path)
    for candidate in (path, path / PRETRAINED):
        if (candidate / "model.safetensors").is_file() and (candidate / "train_config.json").is_file():
            return candidate
    raise UserError(f"{path}: not a tune_app checkpoint (no model.safetensors + train_config.json here or in {PRETRAINED}/)")


class LoadedPolicy:
    """A policy restored from a checkpoint, with its normalisation: raw observations in, raw actions out."""

    def __init__(self, model: ACTPolicy, stats: NormStats, cfg: Config, path: Path):
        self.model, self.stats, self.cfg, self.path = model, stats, cfg, path
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
        img = (img - torch.from_numpy(s.image_mean).view(1, 1, 3, 1, 1)) / torch.from_numpy(s.image_std).view(1, 1, 3, 1, 1)
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
    """Load ``pretrained_model/`` (or a checkpoint directory holding it) into an eval-mode policy.

    ``temporal_ensemble_coeff``: what :meth:`LoadedPolicy.predict_step` uses; ``"saved"`` (default) keeps
    the checkpoint's ``model.temporal_ensemble_coeff``, None turns ensembling off, a number turns it on.

    A damaged checkpoint (a truncated safetensors file, an unreadable config) is a :class:`UserError`
    naming the file."""
    directory = pretrained_dir(path)
    config_file = directory / "train_config.json"
    try:
        tree = json.loads(read_text(config_file, "checkpoint config"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{config_file}: not valid JSON ({exc.msg}); the checkpoint is damaged") from None
    if not isinstance(tree, dict):
        raise UserError(f"{config_file}: not a tune_app training config; the checkpoint is damaged")
    cfg = config_from_dict(tree, source=str(config_file))
    cfg.model.pretrained_backbone = False   # the weights come from model.safetensors
    if temporal_ensemble_coeff != "saved":
        if temporal_ensemble_coeff is not None and not float(temporal_ensemble_coeff) >= 0:
            raise UserError(f"temporal_ensemble_coeff must be >= 0 or None, got {temporal_ensemble_coeff}")
        cfg.model.temporal_ensemble_coeff = None if temporal_ensemble_coeff is None else float(temporal_ensemble_coeff)
    model = ACTPolicy(cfg.model)
    try:
        model.load_state_dict(_load_tensors(directory / "model.safetensors"))
    except RuntimeError as exc:
        raise UserError(f"{directory / 'model.safetensors'}: the weights do not fit the model in train_config.json "
                        f"({str(exc).splitlines()[0][:120]}); the checkpoint is damaged") from None
    model.to(device).eval()
    stats = NormStats.from_named({k: v.numpy() for k, v in _load_tensors(directory / PRE_STATS).items()})
    return LoadedPolicy(model, stats, cfg, directory)


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise UserError(f"{path}: missing; the checkpoint is incomplete") from None
    except (SafetensorError, OSError) as exc:
        raise UserError(f"{path}: unreadable safetensors file ({str(exc).splitlines()[0][:120]}); "
                        "the checkpoint is damaged or was cut short") from None
