"""External data sources (ROS 2 bags, LeRobot datasets), prepared through the per-node cache.

``load_external(cfg)`` is what training calls: it returns the memory-mapped episodes, decoding
them first only when no other process on this node has (see :mod:`.cache`).
"""

from __future__ import annotations

import sys
from pathlib import Path

from tune_app.config import Config
from tune_app.data.cache import default_root, load_or_build
from tune_app.data.episodes import EpisodeSet


def source_for(cfg: Config):
    if cfg.data.bag_dir:
        from tune_app.data.rosbag import BagSource  # deferred: only the source a config names is imported

        return BagSource(cfg)
    from tune_app.data.lerobot import LeRobotSource  # deferred: as above

    return LeRobotSource(cfg)


def cache_root(cfg: Config) -> Path:
    return Path(cfg.data.cache_dir) if cfg.data.cache_dir else default_root()


def prepare_cache(cfg: Config, log=lambda m: print(m, file=sys.stderr, flush=True)) -> tuple[EpisodeSet, bool, Path]:
    """Decode the configured source into the cache unless it is there: ``(episodes, built, folder)``."""
    source = source_for(cfg)
    key = source.key()
    eps, built = load_or_build(cache_root(cfg), key, source.build, log=log)
    return eps, built, cache_root(cfg) / key


def load_external(cfg: Config) -> EpisodeSet:
    return prepare_cache(cfg)[0]
