"""Episodes held as one set of contiguous arrays, the form every data source produces.

Frames of all episodes are concatenated (``states``, ``actions``, ``images``), and
``episode_starts``/``episode_ends`` mark the boundaries. The arrays may be in-memory or
``np.memmap`` views of a prepared cache; nothing here copies images to float.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class EpisodeSet:
    states: np.ndarray          # (N, state_dim) float32
    actions: np.ndarray         # (N, action_dim) float32; action[t] is taken at frame t
    images: np.ndarray          # (N, cameras, H, W, 3) uint8
    episode_starts: np.ndarray  # (E,) int64, first frame of each episode
    episode_ends: np.ndarray    # (E,) int64, one past the last frame
    source: str                 # a human-readable description ("demo: 48 episodes", a path, ...)
    image_moments: np.ndarray | None = None  # (E, 3, 3) per episode/channel [count, sum, sum sq] (see data.cache)

    def __post_init__(self):
        n = len(self.states)
        if not (len(self.actions) == len(self.images) == n):
            raise ValueError("states, actions and images must have the same number of frames")
        if len(self.episode_starts) != len(self.episode_ends):
            raise ValueError("episode_starts and episode_ends differ in length")

    @property
    def num_episodes(self) -> int:
        return len(self.episode_starts)

    @property
    def num_frames(self) -> int:
        return len(self.states)

    @property
    def num_cameras(self) -> int:
        return self.images.shape[1]

    def episode_lengths(self) -> np.ndarray:
        return self.episode_ends - self.episode_starts

    @classmethod
    def from_episodes(cls, episodes: list[tuple[np.ndarray, np.ndarray, np.ndarray]], source: str) -> EpisodeSet:
        """Concatenate ``[(states, actions, images), ...]``, one tuple per episode."""
        lengths = np.array([len(s) for s, _, _ in episodes], dtype=np.int64)
        ends = np.cumsum(lengths)
        return cls(
            states=np.concatenate([s for s, _, _ in episodes]).astype(np.float32, copy=False),
            actions=np.concatenate([a for _, a, _ in episodes]).astype(np.float32, copy=False),
            images=np.concatenate([i for _, _, i in episodes]),
            episode_starts=ends - lengths,
            episode_ends=ends,
            source=source,
        )


def split_episodes(num_episodes: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded split of episode indices into (train, val); val gets round(fraction * E), at least 1
    when the fraction is positive and there are at least two episodes."""
    order = np.random.default_rng(seed).permutation(num_episodes)
    n_val = int(round(val_fraction * num_episodes))
    if val_fraction > 0 and num_episodes >= 2:
        n_val = min(max(n_val, 1), num_episodes - 1)
    else:
        n_val = 0
    return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())
