"""Demo data, the episode split, chunking that never crosses an episode, and data-source errors."""

import numpy as np
import pytest

from tune_app.config import load_config
from tune_app.data import load_episode_set, prepare
from tune_app.data.demo import make_demo
from tune_app.data.episodes import split_episodes
from tune_app.errors import UserError

from .conftest import TINY


def test_demo_is_deterministic():
    a, b = make_demo(4, 20, (48, 64)), make_demo(4, 20, (48, 64))
    assert np.array_equal(a.images, b.images) and np.array_equal(a.states, b.states)
    assert a.images.shape == (80, 1, 48, 64, 3) and a.images.dtype == np.uint8


def test_demo_goal_is_only_in_the_image():
    """Episodes that start at the same joints still move differently: the target (in the image) decides."""
    eps = make_demo(8, 30, (48, 64))
    final = eps.states[eps.episode_ends - 1]
    assert np.std(final, axis=0).min() > 0.1                   # goals differ between episodes
    first_imgs = eps.images[eps.episode_starts]
    assert len({img.tobytes() for img in first_imgs}) == 8     # and so do the images


def test_split_is_by_episode_and_seeded():
    train, val = split_episodes(20, 0.2, seed=1)
    assert len(val) == 4 and not set(train) & set(val) and sorted(train + val) == list(range(20))
    assert split_episodes(20, 0.2, seed=1) == (train, val)
    assert split_episodes(20, 0.2, seed=2) != (train, val)
    assert split_episodes(20, 0.0, seed=1)[1] == []


def test_chunks_never_cross_episode_boundaries():
    cfg = load_config(TINY, ["data.demo_episodes=5", "data.demo_episode_len=30", "model.chunk_size=20"])
    prepared = prepare(cfg)
    train, _ = prepared.datasets(cfg.model.chunk_size)
    eps, stats = prepared.episodes, prepared.stats
    for i in range(len(train)):
        t = int(train.frames[i])
        ep = int(np.searchsorted(eps.episode_ends, t, side="right"))
        remaining = int(eps.episode_ends[ep]) - t
        sample = train[i]
        valid = (~sample["action_is_pad"]).sum().item()
        assert valid == min(20, remaining)
        raw = sample["action"][:valid].numpy() * stats.action_std + stats.action_mean
        np.testing.assert_allclose(raw, eps.actions[t:t + valid], rtol=1e-4, atol=1e-5)
        assert sample["action"][valid:].abs().sum() == 0


def test_stats_come_from_training_episodes_only():
    cfg = load_config(TINY, ["data.demo_episodes=10", "data.demo_episode_len=20"])
    prepared = prepare(cfg)
    eps = prepared.episodes
    frames = np.concatenate([np.arange(eps.episode_starts[e], eps.episode_ends[e]) for e in prepared.train_ids])
    np.testing.assert_allclose(prepared.stats.state_mean, eps.states[frames].mean(0), rtol=1e-5)
    px = eps.images[frames].reshape(-1, 3) / 255.0
    np.testing.assert_allclose(prepared.stats.image_mean, px.mean(0), rtol=1e-6)
    np.testing.assert_allclose(prepared.stats.image_std, px.std(0), rtol=1e-5)


def test_missing_bag_dir_is_an_error_not_a_fallback(tmp_path):
    cfg = load_config(TINY, [f"data.bag_dir={tmp_path / 'nope'}"])
    with pytest.raises(UserError, match="data.bag_dir: directory .*nope does not exist"):
        load_episode_set(cfg)
