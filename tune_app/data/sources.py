"""External data sources (ROS 2 bags, LeRobot datasets).

Reading them is tracked as its own piece of work (issue #6). Until it lands, a config that names
one fails with one clear line instead of silently training on something else.
"""

from __future__ import annotations

from ..config import Config
from ..errors import UserError
from .episodes import EpisodeSet


def load_external(cfg: Config) -> EpisodeSet:
    key = "data.bag_dir" if cfg.data.bag_dir else "data.lerobot_root"
    raise UserError(f"{key}: reading this data source is not supported by this tune_app version yet; "
                    "remove the key to train on the built-in demo data")
