"""Normalisation statistics of a policy's inputs and outputs, under LeRobot's processor key names."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class NormStats:
    state_mean: np.ndarray
    state_std: np.ndarray
    action_mean: np.ndarray
    action_std: np.ndarray
    image_mean: np.ndarray  # (3,), on the 0-1 scale
    image_std: np.ndarray

    # LeRobot's processor key names, used in checkpoints.
    KEYS = {"state_mean": "observation.state.mean", "state_std": "observation.state.std",
            "action_mean": "action.mean", "action_std": "action.std",
            "image_mean": "observation.images.color.mean", "image_std": "observation.images.color.std"}

    def to_named(self) -> dict[str, np.ndarray]:
        return {name: np.asarray(getattr(self, attr), dtype=np.float32) for attr, name in self.KEYS.items()}

    @classmethod
    def from_named(cls, named: dict) -> NormStats:
        return cls(**{attr: np.asarray(named[name], dtype=np.float32) for attr, name in cls.KEYS.items()})
