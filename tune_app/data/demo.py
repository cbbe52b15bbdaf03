"""Built-in synthetic demonstrations: a 6-joint arm reaching a target seen only by the camera.

Each episode places a red target at a random spot in the image. The arm's goal joint
configuration is a fixed smooth function of that spot, so the goal is in the image and nowhere
else: a policy that ignores the camera can only predict the average motion. The arm starts at a
random configuration and moves smoothly toward the goal (``q += rate * (goal - q)`` each frame);
the action at frame t is the joint delta to frame t+1, the convention of the original trainer.
A blue marker whose position follows the first two joints makes every frame differ.

Everything is derived from one seed, so the same arguments always give the same bytes.
"""

from __future__ import annotations

import numpy as np

from tune_app.data.episodes import EpisodeSet

DEMO_SEED = 20240611
APPROACH_RATE = 0.08


def _goal_map(rng: np.random.Generator, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """A fixed map from the target's image position (2-D) to goal joint angles."""
    return rng.uniform(-1.5, 1.5, size=(dim, 2)), rng.uniform(-0.5, 0.5, size=dim)


def _draw(frames: np.ndarray, cy: np.ndarray, cx: np.ndarray, radius: float, colour: tuple[int, int, int]) -> None:
    """Paint one disk per frame (centres in [0, 1] image coordinates) in place."""
    _, h, w, _ = frames.shape
    yy = np.arange(h, dtype=np.float32)[None, :, None]
    xx = np.arange(w, dtype=np.float32)[None, None, :]
    inside = (yy - cy[:, None, None] * (h - 1)) ** 2 + (xx - cx[:, None, None] * (w - 1)) ** 2 <= radius**2
    frames[inside] = colour


def make_demo(num_episodes: int, episode_len: int, image_hw: tuple[int, int], state_dim: int = 6,
              num_cameras: int = 1, seed: int = DEMO_SEED) -> EpisodeSet:
    """Generate the demo episode set (deterministic for given arguments)."""
    rng = np.random.default_rng(seed)
    weights, bias = _goal_map(np.random.default_rng(seed + 1), state_dim)
    h, w = image_hw
    radius = max(2.0, min(h, w) / 9)
    episodes = []
    for _ in range(num_episodes):
        target = rng.uniform(0.15, 0.85, size=2)
        goal = np.tanh(weights @ (2 * target - 1) + bias) * 2.0
        q = np.empty((episode_len + 1, state_dim))
        q[0] = rng.uniform(-2.0, 2.0, size=state_dim)
        noise = rng.normal(0, 0.002, size=(episode_len, state_dim))
        for t in range(episode_len):
            q[t + 1] = q[t] + APPROACH_RATE * (goal - q[t]) + noise[t]
        states, actions = q[:-1], np.diff(q, axis=0)

        shade = rng.integers(40, 90)
        frames = np.full((episode_len, h, w, 3), shade, dtype=np.uint8)
        frames += rng.integers(0, 12, size=(1, h, w, 1), dtype=np.uint8)
        marker = 0.5 + 0.2 * np.tanh(states[:, :2])
        _draw(frames, marker[:, 0], marker[:, 1], radius * 0.6, (40, 80, 230))
        _draw(frames, np.full(episode_len, target[0]), np.full(episode_len, target[1]), radius, (230, 40, 40))
        images = np.repeat(frames[:, None], num_cameras, axis=1)
        episodes.append((states, actions, images))
    return EpisodeSet.from_episodes(episodes, source=f"built-in demo ({num_episodes} episodes x {episode_len} frames)")
