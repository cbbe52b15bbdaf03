"""LeRobot's ACT ``pretrained_model`` files, both ways (verified against LeRobot 0.4.4).

A tune_app checkpoint's ``pretrained_model/`` *is* a LeRobot ACT ``pretrained_model`` (``config.json``,
``model.safetensors`` in LeRobot's names, the pre- and post-processor pipelines with their statistics)
plus tune_app's own ``train_config.json`` and ``data_split.json``; ``ACTPolicy.from_pretrained`` loads
it as it is. The other way, a directory that LeRobot wrote (no ``train_config.json``) is read into a
tune_app :class:`~tune_app.config.Config`, state dict and :class:`NormStats`.

The model's names are LeRobot's ``ACT`` module's: LeRobot's ``model.<name>`` is ``<name>`` here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tune_app.errors import UserError
from tune_app.policy.normalize import NormStats

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
PRE = "policy_preprocessor.json"
POST = "policy_postprocessor.json"
PRE_STATS = "policy_preprocessor_step_3_normalizer_processor.safetensors"
POST_STATS = "policy_postprocessor_step_0_unnormalizer_processor.safetensors"
FILES = (CONFIG, WEIGHTS, PRE, PRE_STATS, POST, POST_STATS)
PREFIX = "model."
STATE, ACTION, IMAGES = "observation.state", "action", "observation.images."
NORM_MAP = {"VISUAL": "MEAN_STD", "STATE": "MEAN_STD", "ACTION": "MEAN_STD"}
EPS = 1e-8


def camera_features(num_cameras: int, names: list[str] | None = None) -> list[str]:
    """The image feature keys: the names a LeRobot checkpoint brought, else ``color``, ``cam1``, ..."""
    if names and len(names) == num_cameras:
        return list(names)
    return [f"{IMAGES}color" if i == 0 else f"{IMAGES}cam{i}" for i in range(num_cameras)]


def _features(cfg, cameras: list[str]) -> tuple[dict, dict]:
    m = cfg.model
    h, w = cfg.conventions.image_resize
    inputs = {STATE: {"type": "STATE", "shape": [m.state_dim]},
              **{key: {"type": "VISUAL", "shape": [3, h, w]} for key in cameras}}
    return inputs, {ACTION: {"type": "ACTION", "shape": [m.action_dim]}}


def policy_config(cfg, cameras: list[str]) -> dict[str, Any]:
    """LeRobot's ``ACTConfig`` as ``config.json``, every field in LeRobot's order (draccus refuses others)."""
    m, t = cfg.model, cfg.training
    inputs, outputs = _features(cfg, cameras)
    return {
        "type": "act", "n_obs_steps": 1, "input_features": inputs, "output_features": outputs,
        "device": None if t.device == "auto" else t.device, "use_amp": t.precision == "bf16", "use_peft": False, "push_to_hub": False,
        "repo_id": None, "private": None, "tags": None, "license": None, "pretrained_path": None,
        "chunk_size": m.chunk_size, "n_action_steps": 1 if m.temporal_ensemble_coeff is not None else m.chunk_size,
        "normalization_mapping": dict(NORM_MAP), "vision_backbone": m.vision_backbone,
        "pretrained_backbone_weights": "ResNet18_Weights.IMAGENET1K_V1" if m.pretrained_backbone else None,
        "replace_final_stride_with_dilation": False, "pre_norm": m.pre_norm, "dim_model": m.dim_model,
        "n_heads": m.n_heads, "dim_feedforward": m.dim_feedforward,
        "feedforward_activation": m.feedforward_activation, "n_encoder_layers": m.n_encoder_layers,
        "n_decoder_layers": m.n_decoder_layers, "use_vae": m.use_vae, "latent_dim": m.latent_dim,
        "n_vae_encoder_layers": m.n_vae_encoder_layers, "temporal_ensemble_coeff": m.temporal_ensemble_coeff,
        "dropout": m.dropout, "kl_weight": t.kl_weight, "optimizer_lr": t.lr,
        "optimizer_weight_decay": t.weight_decay, "optimizer_lr_backbone": t.lr_backbone,
    }


def named_stats(stats: NormStats, cameras: list[str]) -> dict[str, torch.Tensor]:
    """The normaliser's tensors under LeRobot's keys; images per camera, shaped (3, 1, 1) as LeRobot's."""
    f32 = lambda a: torch.from_numpy(np.array(a, dtype=np.float32))  # noqa: E731 - a copy: inputs may be read-only views
    out = {f"{STATE}.mean": f32(stats.state_mean), f"{STATE}.std": f32(stats.state_std),
           f"{ACTION}.mean": f32(stats.action_mean), f"{ACTION}.std": f32(stats.action_std)}
    mean = np.broadcast_to(np.asarray(stats.image_mean, np.float32).reshape(-1, 3), (len(cameras), 3))
    std = np.broadcast_to(np.asarray(stats.image_std, np.float32).reshape(-1, 3), (len(cameras), 3))
    for i, key in enumerate(cameras):
        out[f"{key}.mean"], out[f"{key}.std"] = f32(mean[i]).view(3, 1, 1), f32(std[i]).view(3, 1, 1)
    return out


def write(out: Path, state_dict: dict[str, torch.Tensor], cfg, stats: NormStats, cameras: list[str]) -> None:
    """Write the six LeRobot files of a ``pretrained_model`` into ``out`` (an existing folder)."""
    from safetensors.torch import save_file

    save_file({PREFIX + k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}, str(out / WEIGHTS))
    config = policy_config(cfg, cameras)
    _write_json(out / CONFIG, config)
    features = {**config["input_features"], **config["output_features"]}
    device = {"registry_name": "device_processor", "config": {"device": config["device"], "float_dtype": None}}
    _write_json(out / PRE, {"name": "policy_preprocessor", "steps": [
        {"registry_name": "rename_observations_processor", "config": {"rename_map": {}}},
        {"registry_name": "to_batch_processor", "config": {}},
        device,
        {"registry_name": "normalizer_processor",
         "config": {"eps": EPS, "features": features, "norm_map": dict(NORM_MAP)}, "state_file": PRE_STATS}]})
    _write_json(out / POST, {"name": "policy_postprocessor", "steps": [
        {"registry_name": "unnormalizer_processor",
         "config": {"eps": EPS, "features": config["output_features"], "norm_map": dict(NORM_MAP)},
         "state_file": POST_STATS},
        {**device, "config": {"device": "cpu", "float_dtype": None}}]})
    tensors = named_stats(stats, cameras)
    save_file(tensors, str(out / PRE_STATS))
    save_file(tensors, str(out / POST_STATS))


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=4) + "\n")


def model_state(tensors: dict[str, torch.Tensor], source: Path) -> dict[str, torch.Tensor]:
    """LeRobot's ``model.*`` names -> the model's. A file without them is from an older tune_app layout."""
    if not tensors or not all(k.startswith(PREFIX) for k in tensors):
        raise UserError(f"{source}: not in LeRobot's ACT layout (parameter names without 'model.'); it was written "
                        "by a tune_app from before the LeRobot-parity model, whose weights do not carry over: "
                        "train it again")
    return {k[len(PREFIX):]: v for k, v in tensors.items()}


def _fail(path: Path, what: str) -> UserError:
    return UserError(f"{path}: {what}")


def read_config(directory: Path, tree: dict[str, Any]):
    """A tune_app :class:`Config` for the ACT that LeRobot's ``config.json`` describes, and its camera keys.

    Only what this ACT implements is accepted; anything else is one line naming the field."""
    from tune_app.config import Config

    path = directory / CONFIG
    if tree.get("type") != "act":
        raise _fail(path, f"a LeRobot '{tree.get('type')}' policy; only ACT checkpoints ('type': 'act') load here")
    inputs, outputs = tree.get("input_features") or {}, tree.get("output_features") or {}
    cameras = [k for k, v in inputs.items() if isinstance(v, dict) and v.get("type") == "VISUAL"]
    others = [k for k, v in inputs.items() if k != STATE and k not in cameras]
    checks = [
        (STATE not in inputs, f"no '{STATE}' input; this ACT needs the robot state"),
        (not cameras, "no camera (VISUAL) input; this ACT needs at least one"),
        (bool(others), f"inputs {others} are not supported (state and cameras only)"),
        (ACTION not in outputs, f"no '{ACTION}' output"),
        (tree.get("vision_backbone", "resnet18") != "resnet18",
         f"vision_backbone {tree.get('vision_backbone')!r}: only resnet18 is implemented"),
        (bool(tree.get("replace_final_stride_with_dilation")), "replace_final_stride_with_dilation is not supported"),
        (tree.get("n_obs_steps", 1) != 1, "n_obs_steps must be 1"),
        (any(tree.get("normalization_mapping", NORM_MAP).get(k, "MEAN_STD") != "MEAN_STD" for k in NORM_MAP),
         f"normalization_mapping {tree.get('normalization_mapping')}: only MEAN_STD is supported"),
    ]
    for bad, what in checks:
        if bad:
            raise _fail(path, what)
    shapes = {tuple(inputs[c]["shape"]) for c in cameras}
    if len(shapes) != 1 or len(next(iter(shapes))) != 3:
        raise _fail(path, f"camera shapes {sorted(shapes)}: every camera must be (3, H, W), all the same")
    _, h, w = next(iter(shapes))
    cfg = Config()
    m, t = cfg.model, cfg.training
    m.state_dim, m.action_dim = int(inputs[STATE]["shape"][0]), int(outputs[ACTION]["shape"][0])
    for key in ("chunk_size", "dim_model", "n_heads", "dim_feedforward", "n_encoder_layers", "n_decoder_layers",
                "n_vae_encoder_layers", "latent_dim", "dropout", "use_vae", "pre_norm", "feedforward_activation",
                "temporal_ensemble_coeff"):
        if key in tree:
            setattr(m, key, tree[key])
    m.pretrained_backbone, m.kl_reduction, m.l1_reduction = False, "sum", "mean"     # LeRobot's loss
    cfg.conventions.image_resize = [int(h), int(w)]
    t.kl_weight = float(tree.get("kl_weight", t.kl_weight))
    t.device = tree.get("device") if tree.get("device") in ("cpu", "cuda") else "auto"
    for ours, theirs in (("lr", "optimizer_lr"), ("lr_backbone", "optimizer_lr_backbone"),
                         ("weight_decay", "optimizer_weight_decay")):
        if theirs in tree:
            setattr(t, ours, float(tree[theirs]))
    return cfg, cameras


def read_stats(tensors: dict[str, torch.Tensor], cameras: list[str], source: Path) -> NormStats:
    """:class:`NormStats` from the pre-processor's tensors; images per camera ((cameras, 3))."""
    def get(key: str) -> np.ndarray:
        if key not in tensors:
            raise _fail(source, f"no '{key}' statistics; the pre-processor's normaliser is incomplete")
        return tensors[key].float().numpy()

    return NormStats(state_mean=get(f"{STATE}.mean"), state_std=get(f"{STATE}.std"),
                     action_mean=get(f"{ACTION}.mean"), action_std=get(f"{ACTION}.std"),
                     image_mean=np.stack([get(f"{c}.mean").reshape(3) for c in cameras]),
                     image_std=np.stack([get(f"{c}.std").reshape(3) for c in cameras]))
