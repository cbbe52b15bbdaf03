"""Data: choose the source the config names, split by episode, build the train/val datasets.

Sources follow the config: ``data.bag_dir`` -> ROS 2 bags, ``data.lerobot_root`` -> a LeRobot
dataset, neither -> the built-in demo. A named source never falls back to the demo.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tune_app.config import Config
from tune_app.data.dataset import ChunkDataset, compute_stats
from tune_app.data.demo import make_demo
from tune_app.data.episodes import EpisodeSet, split_episodes
from tune_app.data.sources import load_external, prepare_cache
from tune_app.errors import UserError
from tune_app.policy.normalize import NormStats

__all__ = ["ChunkDataset", "EpisodeSet", "NormStats", "Prepared", "describe_source", "ensure_data", "load_episode_set", "prepare"]


def describe_source(cfg: Config) -> str:
    if cfg.data.bag_dir:
        return f"ROS 2 bags in {cfg.data.bag_dir}"
    if cfg.data.lerobot_root:
        return f"LeRobot dataset at {cfg.data.lerobot_root}"
    return f"built-in demo data ({cfg.data.demo_episodes} episodes)"


def check_source(cfg: Config) -> None:
    """Fail early (one line) when a named data source does not exist."""
    for key, value in (("data.bag_dir", cfg.data.bag_dir), ("data.lerobot_root", cfg.data.lerobot_root)):
        if value and not Path(value).is_dir():
            raise UserError(f"{key}: directory {value} does not exist; fix the path or remove the key to use the built-in demo data")


def load_episode_set(cfg: Config) -> EpisodeSet:
    """All episodes of the configured source."""
    check_source(cfg)
    if cfg.data.bag_dir or cfg.data.lerobot_root:
        return load_external(cfg)
    h, w = cfg.conventions.image_resize
    return make_demo(cfg.data.demo_episodes, cfg.data.demo_episode_len, (h, w), state_dim=cfg.model.state_dim)


def ensure_data(cfg: Config, log=print) -> None:
    """Before any Ray work: fail on a bad source, and decode a bag/LeRobot source into this node's
    cache once (with a progress bar), so trials start by mapping it instead of decoding it."""
    check_source(cfg)
    if cfg.data.bag_dir or cfg.data.lerobot_root:
        eps, built, folder = prepare_cache(cfg)
        check_dims(eps, cfg)
        log(f"data: {eps.source}: {eps.num_episodes} episodes, {eps.num_frames} frames "
            f"({'decoded into' if built else 'cached in'} {folder})")


def check_dims(eps: EpisodeSet, cfg: Config) -> None:
    if eps.states.shape[1] != cfg.model.state_dim or eps.actions.shape[1] != cfg.model.action_dim:
        raise UserError(f"{eps.source}: data has state dim {eps.states.shape[1]} and action dim {eps.actions.shape[1]} "
                        f"but model.state_dim/action_dim are {cfg.model.state_dim}/{cfg.model.action_dim}; set them to match")


def train_samples(cfg: Config) -> int:
    """Training samples (frames of the training episodes) the config's data gives, without images."""
    if cfg.data.bag_dir or cfg.data.lerobot_root:
        lengths = prepare_cache(cfg, log=lambda m: None)[0].episode_lengths()
    else:
        lengths = np.full(cfg.data.demo_episodes, cfg.data.demo_episode_len)
    train_ids, _ = split_episodes(len(lengths), cfg.data.val_fraction, cfg.training.seed)
    return int(np.asarray(lengths)[train_ids].sum())


def check_batches_fit(configs: list[Config]) -> None:
    """Every config's ``training.batch_size x ray.num_workers`` fits its training samples (checked
    before Ray starts: inside a worker the same mistake would surface only as a failed trial)."""
    for cfg in configs:
        need = cfg.training.batch_size * cfg.ray.num_workers
        have = train_samples(cfg)
        if need > have:
            raise UserError(f"training.batch_size ({cfg.training.batch_size}) x ray.num_workers ({cfg.ray.num_workers}) "
                            f"is larger than the {have} training samples of {describe_source(cfg)}; lower the batch size")


@dataclass
class Prepared:
    episodes: EpisodeSet
    train_ids: list[int]
    val_ids: list[int]
    stats: NormStats

    def split_info(self, cfg: Config) -> dict:
        """Which episodes trained and which validated (written beside every checkpoint)."""
        lengths = self.episodes.episode_lengths()
        return {"source": self.episodes.source, "episodes": self.episodes.num_episodes, "frames": self.episodes.num_frames,
                "val_fraction": cfg.data.val_fraction, "seed": cfg.training.seed,
                "train_episodes": self.train_ids, "val_episodes": self.val_ids,
                "train_frames": int(lengths[self.train_ids].sum()), "val_frames": int(lengths[self.val_ids].sum())}

    def datasets(self, chunk_size: int) -> tuple[ChunkDataset, ChunkDataset]:
        return (ChunkDataset(self.episodes, self.train_ids, chunk_size, self.stats),
                ChunkDataset(self.episodes, self.val_ids, chunk_size, self.stats))


def prepare(cfg: Config) -> Prepared:
    """Load the episodes, split them by episode (seeded by ``training.seed``), compute train stats."""
    eps = load_episode_set(cfg)
    check_dims(eps, cfg)
    train_ids, val_ids = split_episodes(eps.num_episodes, cfg.data.val_fraction, cfg.training.seed)
    return Prepared(eps, train_ids, val_ids, compute_stats(eps, train_ids))
