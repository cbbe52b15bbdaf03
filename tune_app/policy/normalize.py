"""Normalisation statistics of a policy's inputs and outputs (LeRobot's MEAN_STD normalisation).

On disk they are the LeRobot pre-/post-processor tensors (:mod:`tune_app.policy.lerobot_format`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class NormStats:
    state_mean: np.ndarray
    state_std: np.ndarray
    action_mean: np.ndarray
    action_std: np.ndarray
    image_mean: np.ndarray  # (3,) shared by every camera, or (cameras, 3); on the 0-1 scale
    image_std: np.ndarray
