"""The torch Dataset: one sample per frame, an action chunk that stops at its episode's end.

A sample at frame t holds the normalised state and image(s) at t and the next ``chunk_size``
actions of the same episode; past the episode's end the chunk is zero-padded and
``action_is_pad`` marks those steps so the loss ignores them. Chunks never cross episodes.

Normalisation statistics come from the training episodes only, computed streaming: images are
summed per channel in float64 a block at a time, never copied to float32 whole.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from tune_app.data.cache import image_moments
from tune_app.data.episodes import EpisodeSet
from tune_app.policy.normalize import NormStats

STD_FLOOR = 1e-6


def _frame_indices(eps: EpisodeSet, episode_ids: list[int]) -> np.ndarray:
    if not episode_ids:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate([np.arange(eps.episode_starts[e], eps.episode_ends[e]) for e in episode_ids])


def compute_stats(eps: EpisodeSet, episode_ids: list[int]) -> NormStats:
    """Per-dimension mean/std of states and actions and per-channel image mean/std over the episodes.

    Image moments come from the cache's per-episode sums when the set has them, else from one
    streaming pass over the frames."""
    idx = _frame_indices(eps, episode_ids)
    states, actions = eps.states[idx], eps.actions[idx]
    if eps.image_moments is not None:
        count, total, total_sq = eps.image_moments[episode_ids].sum(0) if episode_ids else np.zeros((3, 3))
    else:
        starts, ends = eps.episode_starts[episode_ids], eps.episode_ends[episode_ids]
        count, total, total_sq = image_moments(eps.images, starts, ends).sum(0) if episode_ids else np.zeros((3, 3))
    img_mean = total / np.maximum(count, 1)
    img_std = np.sqrt(np.maximum(total_sq / np.maximum(count, 1) - img_mean**2, 0.0))
    return NormStats(
        state_mean=states.mean(0), state_std=np.maximum(states.std(0), STD_FLOOR),
        action_mean=actions.mean(0), action_std=np.maximum(actions.std(0), STD_FLOOR),
        image_mean=img_mean, image_std=np.maximum(img_std, STD_FLOOR),
    )


class ChunkDataset(Dataset):
    """Samples ``{"state", "image", "action", "action_is_pad"}`` for the frames of some episodes."""

    def __init__(self, eps: EpisodeSet, episode_ids: list[int], chunk_size: int, stats: NormStats):
        self.eps = eps
        self.chunk_size = chunk_size
        self.frames = _frame_indices(eps, episode_ids)
        ends = np.zeros(eps.num_frames, dtype=np.int64)
        for s, e in zip(eps.episode_starts, eps.episode_ends, strict=False):
            ends[s:e] = e
        self.frame_end = ends
        f32 = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float32))  # noqa: E731
        self.state_mean, self.state_std = f32(stats.state_mean), f32(stats.state_std)
        self.action_mean, self.action_std = f32(stats.action_mean), f32(stats.action_std)
        self.image_mean = f32(stats.image_mean).view(-1, 3, 1, 1)      # (1 or cameras, 3, 1, 1)
        self.image_std = f32(stats.image_std).view(-1, 3, 1, 1)

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        t = int(self.frames[i])
        stop = min(t + self.chunk_size, int(self.frame_end[t]))
        n = stop - t
        action = torch.zeros(self.chunk_size, self.eps.actions.shape[1])
        action[:n] = (torch.from_numpy(np.asarray(self.eps.actions[t:stop])) - self.action_mean) / self.action_std
        is_pad = torch.ones(self.chunk_size, dtype=torch.bool)
        is_pad[:n] = False
        image = torch.from_numpy(np.array(self.eps.images[t])).permute(0, 3, 1, 2).float() / 255.0
        return {
            "state": (torch.from_numpy(np.asarray(self.eps.states[t])) - self.state_mean) / self.state_std,
            "image": (image - self.image_mean) / self.image_std,
            "action": action,
            "action_is_pad": is_pad,
        }
