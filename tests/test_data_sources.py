"""ROS 2 bags (written with rosbags' own writer) and LeRobot v3 datasets through the prepared cache."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from tune_app.cli import main as cli_main
from tune_app.config import load_config
from tune_app.data import prepare
from tune_app.data.bagwriter import episode_arrays, write_bag, write_demo_bags
from tune_app.data.demo import make_demo
from tune_app.data.images import UnsupportedImage, decode_raw
from tune_app.data.lerobot_writer import write_lerobot_dataset
from tune_app.data.sources import prepare_cache

from .conftest import FIXTURES, TINY

DEMO = make_demo(4, 24, (48, 64))


def cfg_for(tmp: Path, *overrides: str, config: Path = TINY):
    return load_config(config, [f"data.cache_dir={tmp / 'cache'}", *overrides])


def bags(tmp: Path, name: str = "bags", **kw) -> Path:
    out = tmp / name
    write_demo_bags(out, cfg_for(tmp), DEMO, **kw)
    return out


def prepare_cli(cfg_overrides: list[str], capsys) -> tuple[int, str]:
    args = ["data", "prepare", str(TINY)]
    for o in cfg_overrides:
        args += ["--override", o]
    rc = cli_main(args)
    return rc, capsys.readouterr().err.strip().splitlines()[-1]


# ---------------------------------------------------------------- images


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8", "mono8"])
def test_colour_encodings_decode_to_rgb(encoding):
    rgb = np.random.default_rng(0).integers(0, 255, size=(5, 7, 3), dtype=np.uint8)
    ch = {"rgb8": rgb, "bgr8": rgb[..., ::-1], "rgba8": np.dstack([rgb, np.full((5, 7), 9, np.uint8)]),
          "bgra8": np.dstack([rgb[..., ::-1], np.full((5, 7), 9, np.uint8)]), "mono8": rgb[..., :1]}[encoding]
    c = ch.shape[2]
    padded = np.zeros((5, 7 * c + 3), np.uint8)          # rows padded beyond width * channels (step > width)
    padded[:, : 7 * c] = ch.reshape(5, -1)
    out = decode_raw(encoding, 5, 7, 7 * c + 3, padded.ravel())
    expect = np.repeat(rgb[..., :1], 3, axis=2) if encoding == "mono8" else rgb
    assert out.shape == (5, 7, 3) and np.array_equal(out, expect)


@pytest.mark.parametrize("encoding,dtype,big", [("16UC1", "<u2", False), ("16UC1", ">u2", True), ("32FC1", "<f4", False)])
def test_depth_is_percentile_scaled_and_invalid_pixels_are_zero(encoding, dtype, big):
    depth = np.linspace(100, 5000, 40).reshape(5, 8).astype(dtype)
    depth[0, 0] = 0
    out = decode_raw(encoding, 5, 8, 8 * 4 if encoding == "32FC1" else 16, np.frombuffer(depth.tobytes(), np.uint8), big)
    assert out.shape == (5, 8, 3) and out[0, 0, 0] == 0
    assert out[..., 0].max() == 255 and np.all(np.diff(out[0, 1:, 0].astype(int)) >= 0)   # monotonic in depth


def test_unsupported_encoding_names_it():
    with pytest.raises(UnsupportedImage, match="'yuv422' is not supported"):
        decode_raw("yuv422", 2, 2, 4, np.zeros(8, np.uint8))


# ---------------------------------------------------------------- bags


@pytest.mark.parametrize("storage,encoding", [("sqlite3", "rgb8"), ("mcap", "rgb8"), ("sqlite3", "png"), ("mcap", "bgr8")])
def test_bags_round_trip_exactly(tmp_path, storage, encoding):
    src = bags(tmp_path, storage=storage, encoding=encoding)
    eps, built, _ = prepare_cache(cfg_for(tmp_path, f"data.bag_dir={src}"))
    assert built and eps.num_episodes == 4 and eps.num_frames == DEMO.num_frames
    assert np.array_equal(eps.episode_ends, DEMO.episode_ends)
    np.testing.assert_array_equal(eps.states, DEMO.states)         # joint sign undone and re-applied, names reordered
    assert np.array_equal(np.asarray(eps.images), DEMO.images)     # lossless encodings give the same pixels
    inner = np.ones(eps.num_frames, bool)
    inner[eps.episode_ends - 1] = False
    np.testing.assert_allclose(eps.actions[inner], DEMO.actions[inner], atol=1e-6)
    assert np.all(eps.actions[eps.episode_ends - 1] == 0)          # the last frame of an episode has no next state


@pytest.mark.parametrize("encoding", ["jpeg", "mono8", "16UC1", "32FC1"])
def test_other_encodings_give_frames_of_the_configured_size(tmp_path, encoding):
    src = bags(tmp_path, encoding=encoding)
    eps, _, _ = prepare_cache(cfg_for(tmp_path, f"data.bag_dir={src}", "conventions.image_resize=[32, 40]"))
    assert eps.images.shape == (DEMO.num_frames, 1, 32, 40, 3) and eps.images.std() > 5


def test_long_gap_splits_a_recording_and_chunks_stop_at_the_split(tmp_path):
    cfg = cfg_for(tmp_path, f"data.bag_dir={tmp_path / 'gap'}", "model.chunk_size=10", "data.val_fraction=0")
    write_bag(tmp_path / "gap" / "rec", [episode_arrays(DEMO, 0), episode_arrays(DEMO, 1)], cfg, gap_s=5.0)
    prepared = prepare(cfg)
    eps = prepared.episodes
    assert eps.num_episodes == 2 and eps.episode_lengths().tolist() == [24, 24]
    train, _ = prepared.datasets(10)
    for t in range(24):
        pad = train[t]["action_is_pad"]
        assert (~pad).sum().item() == min(10, 24 - t)             # never reaches into the second episode
    assert (~train[23]["action_is_pad"]).sum() == 1
    split = prepared.split_info(cfg)
    assert split["train_episodes"] == [0, 1] and split["val_episodes"] == []


def test_original_config_data_keys_are_read(tmp_path):
    """Topics, joint names/sign, fps and resize from the original trainer's config, unchanged."""
    original = FIXTURES / "original_config.yaml"
    writer_cfg = load_config(original, ["conventions.image_resize=[48, 64]"])
    write_demo_bags(tmp_path / "orig", writer_cfg, DEMO)
    cfg = load_config(original, [f"data.bag_dir={tmp_path / 'orig'}", f"data.cache_dir={tmp_path / 'c'}",
                                 "conventions.image_resize=[32, 40]"])
    assert cfg.data.camera_topic == "/camera/camera/depth/image_rect_raw" and cfg.data.fps == 30
    eps, _, _ = prepare_cache(cfg)
    assert eps.num_frames == DEMO.num_frames and eps.images.shape[2:4] == (32, 40)
    np.testing.assert_array_equal(eps.states, DEMO.states)


def test_angles_wrap_and_actions_take_the_short_way(tmp_path):
    cfg = cfg_for(tmp_path, f"data.bag_dir={tmp_path / 'w'}", "conventions.apply_joint_sign=false")
    states = np.zeros((6, 6))
    states[:, 0] = [3.0, 3.1, 3.2, 3.3, 3.4, 3.5]       # crosses +pi
    write_bag(tmp_path / "w" / "rec", [(states, DEMO.images[:6])], cfg)
    eps, _, _ = prepare_cache(cfg)
    assert np.all(np.abs(eps.states[:, 0]) <= np.pi)
    np.testing.assert_allclose(eps.actions[:-1, 0], 0.1, atol=1e-5)     # not a 2*pi jump


# ---------------------------------------------------------------- cache


def _prepare_in_child(cfg, barrier, results) -> None:
    barrier.wait()                                   # all six start decoding at the same moment
    results.put(prepare_cache(cfg, log=lambda m: None)[1])


def test_six_concurrent_trials_decode_once(tmp_path):
    cfg = cfg_for(tmp_path, f"data.bag_dir={bags(tmp_path)}")
    ctx = mp.get_context("fork")
    barrier, results = ctx.Barrier(6), ctx.Queue()
    procs = [ctx.Process(target=_prepare_in_child, args=(cfg, barrier, results)) for _ in range(6)]
    for p in procs:
        p.start()
    built = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert sum(built) == 1 and all(p.exitcode == 0 for p in procs)
    folders = [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    assert len(folders) == 1 and not list((tmp_path / "cache").glob("*.tmp-*"))
    eps, again, _ = prepare_cache(cfg)
    assert not again and np.array_equal(np.asarray(eps.images), DEMO.images)


def test_changed_bag_or_data_key_invalidates_the_cache(tmp_path):
    src = bags(tmp_path)
    cfg = cfg_for(tmp_path, f"data.bag_dir={src}")
    assert prepare_cache(cfg)[1] and not prepare_cache(cfg)[1]
    assert prepare_cache(cfg_for(tmp_path, f"data.bag_dir={src}", "data.fps=15"))[1]          # a data key
    assert not prepare_cache(cfg_for(tmp_path, f"data.bag_dir={src}", "training.lr=0.5"))[1]   # not a data key
    db = next((src / "episode_001").glob("*.db3"))
    os.utime(db, ns=(time.time_ns(), time.time_ns() + 10**9))                                 # a re-recorded bag
    eps, built, _ = prepare_cache(cfg)
    assert built and eps.num_frames == DEMO.num_frames


def test_a_failed_build_leaves_nothing_behind(tmp_path):
    src = bags(tmp_path)
    cfg = cfg_for(tmp_path, f"data.bag_dir={src}", "data.joint_names=[a, b, c, d, e, f]")
    with pytest.raises(Exception, match="no joint"):
        prepare_cache(cfg)
    # No half-built folder, no lock file, and the cache root that the failed build made is gone too.
    assert not (tmp_path / "cache").exists()


# ---------------------------------------------------------------- LeRobot


def test_lerobot_v3_dataset_reads_back(tmp_path):
    write_lerobot_dataset(tmp_path / "ds", DEMO, fps=30, rows_per_file=40)    # four data files, whole episodes
    cfg = cfg_for(tmp_path, f"data.lerobot_root={tmp_path / 'ds'}")
    prepared = prepare(cfg)
    eps = prepared.episodes
    assert eps.num_episodes == 4 and np.array_equal(eps.episode_ends, DEMO.episode_ends)
    np.testing.assert_array_equal(eps.states, DEMO.states)
    np.testing.assert_array_equal(eps.actions, DEMO.actions)
    assert np.array_equal(np.asarray(eps.images), DEMO.images)
    assert "LeRobot dataset" in eps.source


def _distinct_frames(episodes: int, length: int, cameras: int = 1, hw=(48, 64)):
    """Episodes whose every frame differs clearly from every other (a brightness ramp, a moving bar and
    a per-episode colour), so that a frame taken for its neighbour cannot pass as the right one."""
    from tune_app.data.episodes import EpisodeSet

    h, w = hw
    out = []
    for e in range(episodes):
        imgs = np.zeros((length, cameras, h, w, 3), np.uint8)
        for t in range(length):
            for c in range(cameras):
                imgs[t, c, :, :, 0] = 20 + 9 * t
                imgs[t, c, :, :, 1] = 40 + 50 * e + 30 * c
                imgs[t, c, :, (4 * t) % (w - 8):(4 * t) % (w - 8) + 8] = 250       # even columns: no chroma seam
        states = np.full((length, 6), e, np.float32) + np.arange(length, dtype=np.float32)[:, None] / 100
        out.append((states, states * 0 + 0.01, imgs))
    return EpisodeSet.from_episodes(out, source="test")


def _psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    mse = ((a.astype(float) - b.astype(float)) ** 2).reshape(len(a), -1).mean(1)
    return 10 * np.log10(255**2 / np.maximum(mse, 1e-12))


def _nearest_source(decoded: np.ndarray, source: np.ndarray) -> np.ndarray:
    d = ((decoded.reshape(len(decoded), 1, -1).astype(float) - source.reshape(1, len(source), -1)) ** 2).mean(-1)
    return d.argmin(1)


@pytest.mark.parametrize("codec", ["av1", "h264", "hevc"])
@pytest.mark.parametrize("per_file", [1, 3], ids=["one-episode-per-file", "several-episodes-per-file"])
def test_lerobot_video_dataset_decodes_each_frame_at_its_timestamp(tmp_path, codec, per_file):
    source = _distinct_frames(5, 12)
    write_lerobot_dataset(tmp_path / "ds", source, fps=30, video_codec=codec, episodes_per_video_file=per_file)
    videos = sorted((tmp_path / "ds" / "videos").rglob("*.mp4"))
    assert len(videos) == (5 if per_file == 1 else 2)
    eps = prepare(cfg_for(tmp_path, f"data.lerobot_root={tmp_path / 'ds'}")).episodes
    assert np.array_equal(eps.episode_starts, source.episode_starts) and np.array_equal(eps.episode_ends, source.episode_ends)
    np.testing.assert_array_equal(eps.states, source.states)
    decoded = np.asarray(eps.images)[:, 0]
    assert _psnr(decoded, source.images[:, 0]).min() > 30                   # lossy, but close
    # exact boundaries: every frame, first and last of each episode included, is its own source frame
    assert np.array_equal(_nearest_source(decoded, source.images[:, 0]), np.arange(source.num_frames))


def test_lerobot_mixed_image_and_video_cameras_and_camera_keys(tmp_path):
    source = _distinct_frames(3, 10, cameras=2)
    write_lerobot_dataset(tmp_path / "ds", source, fps=30, video_codec="h264", video_cameras=[1])
    info = json.loads((tmp_path / "ds" / "meta" / "info.json").read_text())
    assert [info["features"][k]["dtype"] for k in ("observation.images.cam0", "observation.images.cam1")] == ["image", "video"]
    both = prepare(cfg_for(tmp_path, f"data.lerobot_root={tmp_path / 'ds'}")).episodes
    assert np.array_equal(np.asarray(both.images)[:, 0], source.images[:, 0])         # PNG: bit-exact
    assert _psnr(np.asarray(both.images)[:, 1], source.images[:, 1]).min() > 30      # video: lossy
    swapped = prepare(cfg_for(tmp_path, f"data.lerobot_root={tmp_path / 'ds'}",
                              "data.camera_keys=[observation.images.cam1, observation.images.cam0]")).episodes
    assert np.array_equal(np.asarray(swapped.images)[:, 1], source.images[:, 0])


def test_lerobot_video_errors_are_one_line(tmp_path, capsys):
    source = _distinct_frames(2, 8)
    root = tmp_path / "ds"
    write_lerobot_dataset(root, source, fps=30, video_codec="h264")
    cache = f"data.cache_dir={tmp_path / 'c'}"
    rc, line = prepare_cli([f"data.lerobot_root={root}", cache, "data.camera_keys=[observation.images.colour]"], capsys)
    assert rc == 2 and "data.camera_keys: 'observation.images.colour'" in line and "observation.images.color" in line

    # the episodes' start times point past the video: no frame within half a frame period
    import pyarrow.parquet as pq

    meta_file = root / "meta" / "episodes" / "chunk-000" / "file-000.parquet"
    good = pq.read_table(meta_file)
    shifted = good.set_column(good.column_names.index("videos/observation.images.color/from_timestamp"),
                              "videos/observation.images.color/from_timestamp",
                              [[t + 10.0 for t in good.column("videos/observation.images.color/from_timestamp").to_pylist()]])
    pq.write_table(shifted, meta_file)
    rc, line = prepare_cli([f"data.lerobot_root={root}", cache], capsys)
    assert rc == 2 and "no frame within half a frame period" in line and "file-000.mp4" in line
    pq.write_table(good, meta_file)

    # a codec this FFmpeg does not know: the file's sample entry renamed, info.json naming it
    video = next((root / "videos").rglob("*.mp4"))
    video.write_bytes(video.read_bytes().replace(b"avc1", b"xvc9"))
    info = json.loads((root / "meta" / "info.json").read_text())
    info["features"]["observation.images.color"]["info"]["video.codec"] = "xvc9"
    (root / "meta" / "info.json").write_text(json.dumps(info))
    rc, line = prepare_cli([f"data.lerobot_root={root}", cache], capsys)
    assert rc == 2 and "codec 'xvc9' cannot be decoded" in line and str(video) in line

    # a video camera without the episode metadata that places episodes in the files
    shutil.rmtree(root / "meta" / "episodes")
    rc, line = prepare_cli([f"data.lerobot_root={root}", cache], capsys)
    assert rc == 2 and "meta/episodes" in line
    assert not (tmp_path / "c").exists()                     # failed builds leave no cache folder behind


def test_data_demo_writes_a_lerobot_video_dataset(tmp_path, capsys):
    rc = cli_main(["data", "demo", str(tmp_path / "ds"), "--format", "lerobot", "--video", "--episodes", "3"])
    assert rc == 0 and "av1 video" in capsys.readouterr().out
    info = json.loads((tmp_path / "ds" / "meta" / "info.json").read_text())
    assert info["features"]["observation.images.color"]["info"]["video.codec"] == "av1" and info["fps"] == 30
    assert (tmp_path / "ds" / "videos" / "observation.images.color" / "chunk-000" / "file-000.mp4").is_file()
    eps = prepare(cfg_for(tmp_path, f"data.lerobot_root={tmp_path / 'ds'}")).episodes
    assert eps.num_episodes == 3


@pytest.mark.slow
def test_a_sweep_trains_on_a_lerobot_video_dataset(tmp_path):
    from .conftest import grid_space, run_cli

    assert cli_main(["data", "demo", str(tmp_path / "ds"), "--format", "lerobot", "--video", "--episodes", "6"]) == 0
    space = grid_space(tmp_path, "video", [1e-4], "overrides: {training.steps: 4, training.eval_freq: 2, training.log_freq: 2, "
                       "training.save_freq: 4}")
    proc = run_cli("run", str(space), "--storage", str(tmp_path / "runs"), "--num-cpus", "2",
                   "--override", f"data.lerobot_root={tmp_path / 'ds'}", "--override", f"data.cache_dir={tmp_path / 'cache'}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "runs" / "video" / "summary.json").read_text())
    assert [t["state"] for t in summary["trials"]] == ["TERMINATED"]
    split = json.loads(next((tmp_path / "runs" / "video").glob("best/pretrained_model/data_split.json")).read_text())
    assert "LeRobot dataset" in split["source"] and split["episodes"] == 6


# ---------------------------------------------------------------- errors (one line, exit 2)


def _custom_encoding_bag(path: Path, cfg) -> None:
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_HUMBLE)
    T = store.types
    with Writer(path, version=9) as w:
        cam = w.add_connection(cfg.data.camera_topic, "sensor_msgs/msg/Image", typestore=store)
        js = w.add_connection(cfg.data.joint_topic, "sensor_msgs/msg/JointState", typestore=store)
        for k in range(3):
            hdr = T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=k, nanosec=0), frame_id="c")
            img = T["sensor_msgs/msg/Image"](header=hdr, height=2, width=2, encoding="yuv422", is_bigendian=0, step=4,
                                             data=np.zeros(8, np.uint8))
            w.write(cam, k * 10**9, store.serialize_cdr(img, "sensor_msgs/msg/Image"))
            msg = T["sensor_msgs/msg/JointState"](header=hdr, name=cfg.data.joint_names, position=np.zeros(6),
                                                  velocity=np.zeros(0), effort=np.zeros(0))
            w.write(js, k * 10**9, store.serialize_cdr(msg, "sensor_msgs/msg/JointState"))


def test_data_errors_are_one_line_exit_2(tmp_path, capsys):
    src = bags(tmp_path)
    (tmp_path / "empty").mkdir()
    write_demo_bags(tmp_path / "corrupt", cfg_for(tmp_path), make_demo(1, 5, (48, 64)))
    next((tmp_path / "corrupt").rglob("*.db3")).write_bytes(b"this is not a sqlite database" * 100)
    _custom_encoding_bag(tmp_path / "yuv" / "rec", cfg_for(tmp_path))
    cache = f"data.cache_dir={tmp_path / 'cache'}"
    cases = [
        ([f"data.bag_dir={tmp_path / 'missing'}"], "data.bag_dir: directory"),
        ([f"data.bag_dir={tmp_path / 'empty'}"], "no ROS 2 bags"),
        ([f"data.bag_dir={src}", "data.camera_topic=/cam/rgb"], "topic '/cam/rgb' (data.camera_topic) is not in the bag; it has: "
                                                                "/camera/camera/color/image_raw (sensor_msgs/msg/Image), /joint_states"),
        ([f"data.bag_dir={tmp_path / 'yuv'}"], "image encoding 'yuv422' is not supported"),
        ([f"data.bag_dir={tmp_path / 'corrupt'}"], "cannot be read"),
        ([f"data.bag_dir={src}", "data.joint_names=[j1, j2, j3, j4, j5, j6]"], "no joint(s) ['j1'"),
        ([f"data.bag_dir={src}", "data.max_offset_ms=1"], "no synchronised frames in any of the 4 bag(s)"),
        ([f"data.lerobot_root={tmp_path / 'empty'}"], "no meta/info.json"),
        ([f"data.bag_dir={src}", "model.action_dim=7"], "action dim 6"),
    ]
    for overrides, expected in cases:
        args = ["data", "prepare", str(TINY), "--override", cache]
        for o in overrides:
            args += ["--override", o]
        rc = cli_main(args)
        err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("tune_app: error")]
        assert rc == 2 and len(err) == 1 and expected in err[0], (overrides, err)
    assert not [p for p in (tmp_path / "cache").iterdir() if ".tmp-" in p.name]
