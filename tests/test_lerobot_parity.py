"""LeRobot parity, checked against files LeRobot 0.4.4 itself wrote (tests/fixtures/lerobot, made by
tools/lerobot_reference.py in a LeRobot venv): its ACT checkpoint loads here and gives its actions, what
tune_app exports has LeRobot's files and names, its datasets read back exactly, and the datasets tune_app
writes carry what LeRobot's loader reads. LeRobot itself is not installed here."""

import json
import lzma
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from tune_app.config import load_config
from tune_app.data import prepare
from tune_app.data.demo import make_demo
from tune_app.data.lerobot_writer import write_lerobot_dataset
from tune_app.errors import UserError
from tune_app.policy import lerobot_format as lr
from tune_app.policy.checkpoint import check_init_from, export_lerobot, load_policy, save_pretrained
from tune_app.train.loop import run
from tune_app.train.session import LocalSession

from .conftest import TINY

FIXTURES = Path(__file__).parent / "fixtures" / "lerobot"
IO = load_file(str(FIXTURES / "act_tiny_io.safetensors"))
# The fixture's ACT (tools/lerobot_reference.py): dim 32, chunk 10, latent 8, two cameras.
TINY_LEROBOT = ["model.dim_model=32", "model.n_heads=2", "model.dim_feedforward=64", "model.chunk_size=10",
                "model.latent_dim=8", "model.n_encoder_layers=2", "model.n_vae_encoder_layers=2", "model.n_decoder_layers=1"]


@pytest.fixture(scope="module")
def lerobot_ckpt(tmp_path_factory) -> Path:
    """The LeRobot-written checkpoint, with its weights decompressed (the bytes LeRobot wrote)."""
    out = tmp_path_factory.mktemp("lerobot") / "act_tiny"
    shutil.copytree(FIXTURES / "act_tiny", out, ignore=shutil.ignore_patterns("*.xz"))
    (out / "model.safetensors").write_bytes(lzma.decompress((FIXTURES / "act_tiny" / "model.safetensors.xz").read_bytes()))
    return out


def test_a_lerobot_checkpoint_loads_and_gives_lerobots_actions(lerobot_ckpt):
    policy = load_policy(lerobot_ckpt)
    assert policy.cameras == ["observation.images.front", "observation.images.wrist"]
    assert policy.stats.image_mean.shape == (2, 3)                   # LeRobot's per-camera image statistics
    chunk = policy.predict(IO["state"].numpy(), IO["images"].numpy())
    assert np.abs(chunk - IO["chunk"].numpy()).max() <= 1e-4
    for b in range(len(IO["state"])):                                # LeRobot's select_action: the first action
        policy.reset()
        action = policy.predict_step(IO["state"][b].numpy(), IO["images"][b].numpy())
        assert np.abs(action - IO["select_action"][b].numpy()).max() <= 1e-4


def test_export_writes_lerobots_files_names_and_config_fields(lerobot_ckpt, tmp_path):
    policy = load_policy(lerobot_ckpt)
    cfg = policy.cfg
    save_pretrained(tmp_path / "ours", policy.model, cfg, policy.stats, num_cameras=2, cameras=policy.cameras)
    out = export_lerobot(tmp_path / "ours", tmp_path / "exported")
    assert sorted(p.name for p in out.iterdir()) == sorted(lr.FILES)           # nothing of tune_app's
    theirs, ours = load_file(str(lerobot_ckpt / lr.WEIGHTS)), load_file(str(out / lr.WEIGHTS))
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    # config.json: LeRobot's fields in LeRobot's order (draccus refuses unknown ones); the same model
    lerobot_cfg, our_cfg = (json.loads((d / lr.CONFIG).read_text()) for d in (lerobot_ckpt, out))
    assert list(our_cfg) == list(lerobot_cfg)
    for key in ("type", "input_features", "output_features", "chunk_size", "n_action_steps", "dim_model", "n_heads",
                "dim_feedforward", "n_encoder_layers", "n_decoder_layers", "n_vae_encoder_layers", "latent_dim",
                "use_vae", "pre_norm", "normalization_mapping", "vision_backbone"):
        assert our_cfg[key] == lerobot_cfg[key], key
    for name in (lr.PRE, lr.POST):                                   # the processor pipelines, step for step
        assert json.loads((out / name).read_text()) == json.loads((lerobot_ckpt / name).read_text()), name
    for name in (lr.PRE_STATS, lr.POST_STATS):
        a, b = load_file(str(out / name)), load_file(str(lerobot_ckpt / name))
        assert a.keys() == b.keys() and all(a[k].shape == b[k].shape and torch.allclose(a[k], b[k]) for k in a), name
    again = load_policy(out)                                         # and the export loads back to the same actions
    assert np.abs(again.predict(IO["state"].numpy(), IO["images"].numpy()) - IO["chunk"].numpy()).max() <= 1e-4


def test_export_refuses_an_existing_folder_and_leaves_nothing_on_failure(lerobot_ckpt, tmp_path):
    with pytest.raises(UserError, match="already a LeRobot checkpoint"):
        export_lerobot(lerobot_ckpt, tmp_path / "x")
    damaged = tmp_path / "damaged" / "pretrained_model"
    shutil.copytree(lerobot_ckpt, damaged)
    (damaged / "train_config.json").write_text(json.dumps(load_config(TINY).to_dict()))
    with pytest.raises(UserError, match="do not fit"):                # a tiny config's model, LeRobot's weights
        export_lerobot(damaged, tmp_path / "y")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["damaged"]


def test_old_layout_weights_are_refused_with_one_line(lerobot_ckpt, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(lerobot_ckpt, old)
    from safetensors.torch import save_file

    save_file({k.removeprefix("model."): v for k, v in load_file(str(old / lr.WEIGHTS)).items()}, str(old / lr.WEIGHTS))
    with pytest.raises(UserError, match="before the LeRobot-parity model"):
        load_policy(old)


def test_train_init_from_a_lerobot_checkpoint_starts_from_its_weights(lerobot_ckpt, tmp_path):
    overrides = [*TINY_LEROBOT, f"training.init_from={lerobot_ckpt}", "training.steps=2", "training.save_freq=2",
                 "training.eval_freq=2", "training.log_freq=2", "training.lr=1e-12", "training.lr_backbone=0",
                 "data.demo_episodes=6", "data.demo_episode_len=20", "training.device=cpu"]
    cfg = load_config(TINY, overrides)
    check_init_from(cfg)
    session = LocalSession("cpu", tmp_path / "run")
    run(cfg, session)
    trained = load_file(str(session.checkpoints[-1] / "pretrained_model" / lr.WEIGHTS))
    theirs = load_file(str(lerobot_ckpt / lr.WEIGHTS))
    assert trained.keys() == theirs.keys()
    # lr 1e-12 (Adam moves a weight by about lr a step): still LeRobot's weights, not a fresh model's
    assert max(float((trained[k] - theirs[k]).abs().max()) for k in theirs) < 1e-9
    wrong = load_config(TINY, [f"training.init_from={lerobot_ckpt}"])
    with pytest.raises(UserError, match=r"model.chunk_size is 10 but this config.s is 20; set model.chunk_size=10"):
        check_init_from(wrong)


def test_eval_runs_a_lerobot_checkpoint_on_a_lerobot_dataset(lerobot_ckpt, tmp_path):
    from tune_app.inspection.evaluate import evaluate

    root = tmp_path / "ds"
    write_lerobot_dataset(root, make_demo(6, 20, (32, 48), num_cameras=2), fps=30)
    data = [f"data.lerobot_root={root}", f"data.cache_dir={tmp_path / 'cache'}", "data.val_fraction=0.5"]
    with pytest.raises(UserError, match="observation.images.front"):   # the checkpoint's camera names are not there
        evaluate(lerobot_ckpt, overrides=data, latency_steps=2)
    result = evaluate(lerobot_ckpt, overrides=[*data, "data.camera_keys=[observation.images.cam0, observation.images.cam1]"],
                      latency_steps=2)
    assert result.frames > 0 and np.isfinite(result.l1)
    with pytest.raises(UserError, match="the policy takes 2"):
        evaluate(lerobot_ckpt, overrides=[*data, "data.camera_keys=[observation.images.cam0]"], latency_steps=2)


# ---------------------------------------------------------------- datasets


@pytest.mark.parametrize("variant", ["image", "video"])
def test_datasets_lerobot_wrote_read_back(variant, tmp_path):
    src = np.load(FIXTURES / "dataset_source.npz")
    cfg = load_config(TINY, [f"data.lerobot_root={FIXTURES / f'dataset_{variant}'}", f"data.cache_dir={tmp_path}",
                             "conventions.image_resize=[32, 48]", "data.fps=10"])
    eps = prepare(cfg).episodes
    assert eps.episode_lengths().tolist() == [6, 9, 7]
    for e in range(3):
        lo, hi = eps.episode_starts[e], eps.episode_ends[e]
        np.testing.assert_array_equal(eps.states[lo:hi], src[f"observation.state_{e}"])
        np.testing.assert_array_equal(eps.actions[lo:hi], src[f"action_{e}"])
        got, want = np.asarray(eps.images[lo:hi, 0], np.float64), src[f"observation.images.front_{e}"].astype(np.float64)
        mse = ((got - want) ** 2).mean()
        assert mse == 0 if variant == "image" else 10 * np.log10(255**2 / mse) > 28, mse


def _columns(path: Path) -> set[str]:
    return set(pq.read_schema(path).names)


@pytest.mark.parametrize("video", [False, True])
def test_written_datasets_carry_what_lerobots_loader_reads(video, tmp_path):
    demo = make_demo(5, 30, (32, 48))
    root = tmp_path / "ds"
    write_lerobot_dataset(root, demo, fps=30.0, rows_per_file=70, video_codec="h264" if video else None)
    ref = FIXTURES / ("dataset_video" if video else "dataset_image")
    info, ref_info = (json.loads((r / "meta" / "info.json").read_text()) for r in (root, ref))
    assert set(info) == set(ref_info) and info["fps"] == 30 and isinstance(info["fps"], int)
    assert {k for k in info["features"] if not k.startswith("observation.images")} == \
        {k for k in ref_info["features"] if not k.startswith("observation.images")}
    assert pq.read_schema(root / "meta" / "tasks.parquet").names == pq.read_schema(ref / "meta" / "tasks.parquet").names
    episodes = root / "meta" / "episodes" / "chunk-000" / "file-000.parquet"
    ref_episodes = ref / "meta" / "episodes" / "chunk-000" / "file-000.parquet"
    required = {c for c in _columns(ref_episodes) if not c.startswith("stats/")}
    ours = {c.replace("observation.images.color", "observation.images.front") for c in _columns(episodes)}
    assert required <= ours, required - ours
    stats, ref_stats = (json.loads((r / "meta" / "stats.json").read_text()) for r in (root, ref))
    assert {k for k in stats if "images" not in k} == {k for k in ref_stats if "images" not in k}
    assert np.asarray(stats["observation.images.color"]["mean"]).shape == (3, 1, 1)
    assert {"min", "max", "mean", "std", "count"} <= set(stats["action"])
    # no episode is split across data files: each file holds whole episodes (30-frame episodes, 70 rows a file)
    meta = pq.read_table(episodes).to_pylist()
    for row in meta:
        data = pq.read_table(root / "data" / "chunk-000" / f"file-{row['data/file_index']:03d}.parquet")
        in_file = [i for i, e in enumerate(data.column("episode_index").to_pylist()) if e == row["episode_index"]]
        assert len(in_file) == row["length"] == 30
        assert data.column("index").to_pylist()[in_file[0]] == row["dataset_from_index"]
    assert [row["data/file_index"] for row in meta] == [0, 0, 1, 1, 2]
    assert set(pq.read_schema(root / "data" / "chunk-000" / "file-000.parquet").names) >= {"task_index", "index", "timestamp"}
    # and tune_app reads it back exactly
    cfg = load_config(TINY, [f"data.lerobot_root={root}", f"data.cache_dir={tmp_path / 'cache'}", "conventions.image_resize=[32, 48]"])
    eps = prepare(cfg).episodes
    np.testing.assert_array_equal(eps.states, demo.states)
    assert eps.episode_lengths().tolist() == [30] * 5
