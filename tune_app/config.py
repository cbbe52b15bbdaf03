"""The training config: defaults, YAML loading, ``--override``, validation, old-key compatibility.

A config is YAML with the sections ``data``, ``conventions``, ``model``, ``training``, ``wandb``,
``mlflow`` and ``ray``. Every key has a default, so a file only says what differs. A config written
for the original single-file trainer (sections data/conventions/model/training/wandb, no
scheduler) loads unchanged and keeps its meaning:

* ``training.num_workers`` is DataLoader workers; DDP workers are ``ray.num_workers``.
* ``training.scheduler`` absent means ``none``; a missing ``wandb`` section means off.
* ``model.pretrained_backbone`` defaults to true, torchvision's ImageNet ResNet-18, downloaded once
  per node into torch's hub cache when it is not there (:mod:`tune_app.policy.weights`).
* ``model.kl_reduction`` defaults to ``mean`` (the original's KL, averaged over the latent
  dimensions) so an old config trains the same way; the shipped configs set ``sum`` (ACT/LeRobot).
* Relative paths in a file resolve against that file's directory (the original resolved them
  against ``train.py``, which sat beside its config); paths given with ``--override`` resolve
  against the current directory.

Validation happens once, here. Everything downstream gets a typed :class:`Config`.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

from tune_app.checks import is_uri
from tune_app.errors import UserError, did_you_mean, mask_secrets
from tune_app.policy.config import ModelConfig
from tune_app.yamlio import dump_yaml, load_yaml, parse_scalar


@dataclass
class DataConfig:
    bag_dir: str | None = None            # ROS 2 bags (searched recursively for metadata.yaml)
    lerobot_root: str | None = None       # a local LeRobot v3 dataset
    ros_distro: str = "ROS2_HUMBLE"
    joint_topic: str = "/joint_states"
    camera_topic: str = "/camera/camera/depth/image_rect_raw"
    camera_topics: list[str] | None = None  # several cameras; overrides camera_topic when set
    camera_keys: list[str] | None = None  # LeRobot camera features (image or video), in order; null: all of them
    joint_names: list[str] = field(default_factory=lambda: [
        "shoulder_pan_joint", "shoulder_lift_joint", "elbow_joint",
        "wrist_1_joint", "wrist_2_joint", "wrist_3_joint"])
    fps: float = 30.0
    max_offset_ms: float = 50.0
    episode_gap_s: float = 2.0
    val_fraction: float = 0.1             # share of episodes held out for validation (by episode)
    cache_dir: str | None = None          # prepared-episode cache; default: ~/.cache/tune_app
    demo_episodes: int = 48               # built-in demo data, used when no data source is named
    demo_episode_len: int = 50


@dataclass
class ConventionsConfig:
    apply_joint_sign: bool = True
    joint_sign: list[float] = field(default_factory=lambda: [1.0, -1.0, -1.0, 1.0, 1.0, 1.0])
    wrap_angles: bool = True
    image_resize: list[int] = field(default_factory=lambda: [480, 848])  # [H, W]


@dataclass
class TrainingConfig:
    device: Literal["cuda", "cpu", "auto"] = "cuda"   # cuda falls back to CPU without a GPU
    seed: int = 1000
    batch_size: int = 4                   # per DDP worker
    num_workers: int = 2                  # DataLoader worker processes per DDP worker
    steps: int = 5000                     # optimizer steps
    lr: float = 1.0e-5
    lr_backbone: float = 1.0e-5
    weight_decay: float = 1.0e-4
    grad_clip_norm: float = 10.0          # <= 0 disables clipping
    kl_weight: float = 10.0
    log_freq: int = 100                   # steps between progress reports
    eval_freq: int = 500                  # steps between validation passes (and at the end)
    val_batches: int | None = None        # cap on validation batches per pass; null = all
    save_freq: int = 1000                 # steps between checkpoints (and at the end)
    output_dir: str = "outputs/train"
    scheduler: Literal["none", "cosine"] = "none"
    warmup_steps: int = 500
    min_lr: float = 1.0e-7
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16 autocast applies on GPU only
    init_from: str | None = None          # start from these weights: a tune_app checkpoint or a LeRobot ACT pretrained_model


@dataclass
class WandbConfig:
    enabled: bool = False
    project: str = "tune_app"
    entity: str | None = None
    run_name: str | None = None
    tags: list[str] = field(default_factory=list)
    mode: Literal["online", "offline", "disabled"] = "online"


@dataclass
class MlflowConfig:
    enabled: bool = False
    tracking_uri: str | None = None
    experiment_name: str | None = None
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class RayConfig:
    address: str | None = None            # null: an embedded local Ray (or RAY_ADDRESS)
    num_workers: int = 1                  # DDP workers per training run
    cpus_per_worker: float = 1.0
    gpus_per_worker: float | None = None  # null: 1 when the cluster has GPUs, else 0
    num_cpus: int | None = None           # CPUs of an embedded local Ray; null: all
    storage_path: str | None = None
    fast_start: bool = True               # false: Ray's stock Train/Tune pattern (tune_app.fastpath)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    conventions: ConventionsConfig = field(default_factory=ConventionsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    def to_dict(self) -> dict:
        """Plain nested dict; a password written into ``mlflow.tracking_uri`` is masked, so nothing
        built from this (config dumps, checkpoints, tracked params) can carry it. Credentials belong
        in MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD / MLFLOW_TRACKING_TOKEN."""
        tree = dataclasses.asdict(self)
        uri = tree["mlflow"]["tracking_uri"]
        if uri:
            tree["mlflow"]["tracking_uri"] = mask_secrets(uri)
        return tree

    def with_params(self, params: dict[str, Any], source: str = "parameter") -> Config:
        """A copy with dotted ``params`` set (a trial's swept values, each checked when the sweep
        file was loaded), type-normalised and checked together with the rest."""
        sections = {name: getattr(self, name) for name in SECTIONS}
        for dotted, value in params.items():
            section, key = dotted.split(".", 1)
            sections[section] = dataclasses.replace(sections[section], **{key: check_value(dotted, value, f"{source} {dotted}")})
        cfg = Config(**sections)
        _check_consistency(cfg, source)
        return cfg

    def flat(self) -> dict[str, Any]:
        """``{"training.lr": 1e-5, ...}`` for every key."""
        return flatten(self.to_dict())


SECTIONS: dict[str, type] = {f.name: f.default_factory for f in dataclasses.fields(Config)}  # type: ignore[misc]

# Keys whose relative values are paths (resolved against the file that names them).
PATH_KEYS = {"data.bag_dir", "data.lerobot_root", "data.cache_dir", "model.backbone_weights",
             "training.output_dir", "training.init_from", "ray.storage_path"}


def _section_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


HINTS: dict[str, Any] = {
    f"{sec}.{name}": hint for sec, cls in SECTIONS.items() for name, hint in _section_hints(cls).items()
}


def valid_keys() -> list[str]:
    """Every dotted config key, in declaration order."""
    return list(HINTS)


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """Flatten two-level config dicts to dotted keys (values that are dicts stay whole below a section)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if not prefix and isinstance(value, dict):
            out.update(flatten(value, dotted))
        else:
            out[dotted] = value
    return out


def _unknown(key: str, source: str) -> UserError:
    return UserError(f"{source}: unknown config key '{key}'{did_you_mean(key, valid_keys())}")


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(hint))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(hint))
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in typing.get_args(hint))}]"
    return "null" if hint is type(None) else getattr(hint, "__name__", str(hint))


def _coerce(value: Any, hint: Any) -> tuple[bool, Any]:
    """Check ``value`` against a type hint; ints are accepted where floats are expected."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        return (value in typing.get_args(hint), value)
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(hint):
            ok, out = _coerce(value, arg)
            if ok:
                return True, out
        return False, value
    if hint is type(None):
        return value is None, None
    if origin is list:
        if not isinstance(value, (list, tuple)):
            return False, value
        (item_hint,) = typing.get_args(hint)
        items = [_coerce(v, item_hint) for v in value]
        return all(ok for ok, _ in items), [v for _, v in items]
    if origin is dict:
        if not isinstance(value, dict):
            return False, value
        key_hint, val_hint = typing.get_args(hint)
        pairs = [(_coerce(k, key_hint), _coerce(v, val_hint)) for k, v in value.items()]
        return all(k[0] and v[0] for k, v in pairs), {k[1]: v[1] for k, v in pairs}
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        return False, value
    if hint is str:
        return isinstance(value, str), value
    raise TypeError(f"unsupported config type hint {hint!r}")


def check_value(key: str, value: Any, source: str) -> Any:
    """Type-check one dotted key's value; return it normalised (ints to floats where floats are due)."""
    if key not in HINTS:
        raise _unknown(key, source)
    ok, out = _coerce(value, HINTS[key])
    if not ok:
        raise UserError(
            f"{source}: config key '{key}' must be {_type_name(HINTS[key])}, got {value!r}")
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """``"training.lr=5e-5"`` -> ``("training.lr", 5e-05)``; the value is typed as YAML would."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise UserError(f"--override {text!r}: expected KEY=VALUE, e.g. training.lr=5e-5")
    return key, parse_scalar(raw)


def _resolve_path(value: str | None, base: Path | None) -> str | None:
    if value is None or base is None or is_uri(value):
        return value
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())


def build_config(
    raw: dict,
    source: str = "config",
    base_dir: Path | None = None,
    overrides: dict[str, Any] | None = None,
    override_source: str = "--override",
    override_base_dir: Path | None = None,
) -> Config:
    """Validate a raw YAML tree plus dotted overrides into a :class:`Config`.

    Unknown sections or keys and wrong types raise :class:`UserError` naming the key, where it came
    from and the closest valid key. Relative paths resolve against ``base_dir`` (file values) or
    ``override_base_dir`` (override values).
    """
    values: dict[str, Any] = {}
    for section, body in raw.items():
        if section not in SECTIONS:
            raise UserError(f"{source}: unknown config section '{section}'{did_you_mean(str(section), list(SECTIONS), True)}")
        if body is None:
            continue
        if not isinstance(body, dict):
            raise UserError(f"{source}: config section '{section}' must be a mapping of keys, got {body!r}")
        for key, value in body.items():
            dotted = f"{section}.{key}"
            value = check_value(dotted, value, source)
            if dotted in PATH_KEYS:
                value = _resolve_path(value, base_dir)
            values[dotted] = value
    for dotted, value in (overrides or {}).items():
        if dotted in SECTIONS:
            raise UserError(f"{override_source} {dotted}=...: name a key inside the section, e.g. {dotted}.{next(iter(_section_hints(SECTIONS[dotted])))}")
        value = check_value(dotted, value, f"{override_source} {dotted}")
        if dotted in PATH_KEYS:
            value = _resolve_path(value, override_base_dir or Path.cwd())
        values[dotted] = value

    sections: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    for dotted, value in values.items():
        section, key = dotted.split(".", 1)
        sections[section][key] = value
    cfg = Config(**{name: SECTIONS[name](**kw) for name, kw in sections.items()})
    _check_consistency(cfg, source)
    return cfg


def _check_consistency(cfg: Config, source: str) -> None:
    """Cross-key rules that a type check cannot see."""
    m, t, c = cfg.model, cfg.training, cfg.conventions
    positive = {"model.chunk_size": m.chunk_size, "model.dim_model": m.dim_model, "model.n_heads": m.n_heads,
                "model.latent_dim": m.latent_dim, "model.state_dim": m.state_dim, "model.action_dim": m.action_dim,
                "training.batch_size": t.batch_size, "training.steps": t.steps, "training.log_freq": t.log_freq,
                "training.eval_freq": t.eval_freq, "training.save_freq": t.save_freq,
                "ray.num_workers": cfg.ray.num_workers, "data.fps": cfg.data.fps,
                "data.demo_episodes": cfg.data.demo_episodes, "data.demo_episode_len": cfg.data.demo_episode_len,
                "model.dim_feedforward": m.dim_feedforward, "model.n_encoder_layers": m.n_encoder_layers,
                "model.n_decoder_layers": m.n_decoder_layers}
    for key, value in positive.items():
        if value <= 0:
            raise UserError(f"{source}: config key '{key}' must be > 0, got {value}")
    if m.dim_model % m.n_heads:
        raise UserError(f"{source}: model.dim_model ({m.dim_model}) must be divisible by model.n_heads ({m.n_heads})")
    if m.dim_model % 4:
        raise UserError(f"{source}: model.dim_model ({m.dim_model}) must be a multiple of 4 (2-D sine position embedding)")
    if m.temporal_ensemble_coeff is not None and not m.temporal_ensemble_coeff >= 0:
        raise UserError(f"{source}: model.temporal_ensemble_coeff must be >= 0 (or null: off), got {m.temporal_ensemble_coeff}; "
                        "LeRobot uses 0.01")
    if len(c.image_resize) != 2 or min(c.image_resize) < 32:
        raise UserError(f"{source}: conventions.image_resize must be [H, W] with both >= 32, got {c.image_resize}")
    if len(c.joint_sign) != m.state_dim and c.apply_joint_sign:
        raise UserError(f"{source}: conventions.joint_sign has {len(c.joint_sign)} entries but model.state_dim is {m.state_dim}")
    if not 0.0 <= cfg.data.val_fraction < 1.0:
        raise UserError(f"{source}: data.val_fraction must be in [0, 1), got {cfg.data.val_fraction}")
    if t.lr <= 0 or t.lr_backbone < 0:
        raise UserError(f"{source}: training.lr must be > 0 and training.lr_backbone >= 0")
    if t.scheduler == "cosine":
        if t.min_lr < 0 or t.min_lr > t.lr:
            raise UserError(f"{source}: training.min_lr ({t.min_lr:g}) must be between 0 and training.lr ({t.lr:g}); lower min_lr")
        if t.warmup_steps < 0:
            raise UserError(f"{source}: training.warmup_steps must be >= 0, got {t.warmup_steps}")
    if cfg.ray.cpus_per_worker <= 0:
        raise UserError(f"{source}: ray.cpus_per_worker must be > 0, got {cfg.ray.cpus_per_worker}")
    at_least = {"ray.num_cpus": (cfg.ray.num_cpus, 1), "training.val_batches": (t.val_batches, 1),
                "ray.gpus_per_worker": (cfg.ray.gpus_per_worker, 0), "training.num_workers": (t.num_workers, 0),
                "training.weight_decay": (t.weight_decay, 0), "training.kl_weight": (t.kl_weight, 0),
                "model.n_vae_encoder_layers": (m.n_vae_encoder_layers, 1 if m.use_vae else 0),
                "data.max_offset_ms": (cfg.data.max_offset_ms, 0), "data.episode_gap_s": (cfg.data.episode_gap_s, 0)}
    for key, (value, low) in at_least.items():
        if value is not None and value < low:
            raise UserError(f"{source}: config key '{key}' must be >= {low}, got {value}")
    if not 0.0 <= m.dropout < 1.0:
        raise UserError(f"{source}: model.dropout must be in [0, 1), got {m.dropout}")
    for key, value in cfg.flat().items():
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"{source}: config key '{key}' must be a finite number, got {value}")


def load_config(path: str | Path | None, overrides: list[str] | dict[str, Any] | None = None) -> Config:
    """Load a config file (or only defaults when ``path`` is None) and apply overrides.

    ``overrides`` is either CLI strings (``["training.lr=5e-5"]``) or an already-typed dict.
    """
    if isinstance(overrides, dict):
        typed = dict(overrides)
    else:
        typed = dict(parse_override(o) for o in (overrides or []))
    if path is None:
        return build_config({}, overrides=typed)
    path = Path(path)
    raw = load_yaml(path, "config file")
    return build_config(raw, source=str(path), base_dir=path.resolve().parent, overrides=typed)


def config_from_dict(tree: dict, source: str = "config") -> Config:
    """Rebuild a :class:`Config` from :meth:`Config.to_dict` output (paths are already absolute)."""
    return build_config(tree, source=source)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (tune_app's configs never hold secrets; see tracking)."""
    dump_yaml(cfg.to_dict(), path)
