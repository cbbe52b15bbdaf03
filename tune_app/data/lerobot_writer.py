"""Write episodes as a LeRobot v3 dataset that LeRobot itself opens (``data demo --format lerobot``, tests).

What LeRobot 0.4.4's ``LeRobotDataset`` reads, as its own writer lays it out (checked against datasets it
wrote, ``tests/fixtures/lerobot``, and by ``tools/lerobot_reference.py check-dataset``):

* ``meta/info.json`` with an integer ``fps``, ``total_tasks``, ``splits``, ``chunks_size`` and every feature
  (``task_index`` included);
* ``meta/tasks.parquet`` (the task strings as the index, ``task_index``), ``meta/stats.json`` (min, max,
  mean, std, count per feature; images per channel on the 0-1 scale, shaped (3, 1, 1));
* ``data/chunk-000/file-XXX.parquet``: whole episodes only, a new file once ``rows_per_file`` would be
  passed (an episode is never split across files, which v3's per-episode metadata cannot describe);
* ``meta/episodes/chunk-000/file-000.parquet``: per episode its tasks, length, data file and row range
  and, per video camera, its file and ``from_timestamp``/``to_timestamp``.

Cameras are PNG images in the parquet files, or MP4 video (``video_codec``: av1, LeRobot's default,
h264 or hevc) under ``videos/<key>/chunk-000/file-XXX.mp4`` with ``episodes_per_video_file`` episodes
back to back in each file; ``video_cameras`` picks which cameras are video (a mixed dataset).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from tune_app.data.episodes import EpisodeSet
from tune_app.data.lerobot import DEFAULT_VIDEO_PATH
from tune_app.errors import UserError

DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"


def camera_keys(num_cameras: int) -> list[str]:
    return [f"observation.images.cam{c}" for c in range(num_cameras)] if num_cameras > 1 else ["observation.images.color"]


def _png(img: np.ndarray) -> bytes:
    from PIL import Image as PILImage

    buf = io.BytesIO()
    PILImage.fromarray(np.asarray(img)).save(buf, format="PNG")
    return buf.getvalue()


def _file_groups(lengths: np.ndarray, rows_per_file: int) -> list[list[int]]:
    """Episodes per data file: whole episodes, a new file once the next one would pass ``rows_per_file``."""
    groups: list[list[int]] = [[]]
    rows = 0
    for e, n in enumerate(lengths.tolist()):
        if groups[-1] and rows + n > rows_per_file:
            groups.append([])
            rows = 0
        groups[-1].append(e)
        rows += n
    return groups


def _stats(values: np.ndarray) -> dict[str, list]:
    """LeRobot's per-feature statistics over the first axis (min, max, mean, std, count)."""
    v = np.asarray(values, dtype=np.float64)
    return {"min": v.min(0).tolist(), "max": v.max(0).tolist(), "mean": v.mean(0).tolist(), "std": v.std(0).tolist(),
            "count": [len(v)]}


def _image_stats(images) -> dict[str, list]:
    """Per-channel statistics of uint8 (N, H, W, 3) frames on the 0-1 scale, shaped (3, 1, 1) as LeRobot's."""
    n = len(images)
    total, total_sq = np.zeros(3), np.zeros(3)
    lo, hi = np.full(3, 255.0), np.zeros(3)
    for start in range(0, n, 256):                     # a pass over memory-mapped frames, in blocks
        block = np.asarray(images[start:start + 256], dtype=np.float64).reshape(-1, 3) / 255.0
        total += block.sum(0)
        total_sq += (block**2).sum(0)
        lo, hi = np.minimum(lo, block.min(0)), np.maximum(hi, block.max(0))
    count = max(n * int(np.prod(images.shape[1:3])), 1)
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    shape = lambda a: [[[float(x)]] for x in a]  # noqa: E731
    return {"min": shape(lo), "max": shape(hi), "mean": shape(mean), "std": shape(std), "count": [n]}


def write_lerobot_dataset(root: Path, eps: EpisodeSet, fps: float, rows_per_file: int = 1000, video_codec: str | None = None,
                          episodes_per_video_file: int | None = None, video_cameras: list[int] | None = None,
                          task: str = "demo") -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not float(fps).is_integer() or fps <= 0:
        raise UserError(f"data.fps {fps}: LeRobot v3 stores an integer frame rate; set data.fps to a whole number")
    fps = int(fps)
    cameras = camera_keys(eps.num_cameras)
    videos = [] if video_codec is None else [cameras[c] for c in (video_cameras if video_cameras is not None else range(len(cameras)))]
    h, w = eps.images.shape[2:4]
    sd, ad = eps.states.shape[1], eps.actions.shape[1]

    def camera_feature(key: str) -> dict:
        feature = {"dtype": "video" if key in videos else "image", "shape": [h, w, 3], "names": ["height", "width", "channels"]}
        if key in videos:
            feature["info"] = {"video.height": h, "video.width": w, "video.codec": video_codec, "video.pix_fmt": "yuv420p",
                               "video.is_depth_map": False, "video.fps": fps, "video.channels": 3, "has_audio": False}
        return feature

    index_keys = ("frame_index", "episode_index", "index", "task_index")
    features = {"observation.state": {"dtype": "float32", "shape": [sd], "names": None},
                "action": {"dtype": "float32", "shape": [ad], "names": None},
                **{c: camera_feature(c) for c in cameras},
                "timestamp": {"dtype": "float32", "shape": [1], "names": None},
                **{k: {"dtype": "int64", "shape": [1], "names": None} for k in index_keys}}
    lengths = eps.episode_lengths()
    groups = _file_groups(lengths, rows_per_file)
    (root / "meta").mkdir(parents=True, exist_ok=True)
    info = {"codebase_version": "v3.0", "robot_type": None, "total_episodes": eps.num_episodes,
            "total_frames": eps.num_frames, "total_tasks": 1, "chunks_size": 1000, "data_files_size_in_mb": 100,
            "video_files_size_in_mb": 200, "fps": fps, "splits": {"train": f"0:{eps.num_episodes}"},
            "data_path": DATA_PATH, "video_path": DEFAULT_VIDEO_PATH if videos else None, "features": features}
    (root / "meta" / "info.json").write_text(json.dumps(info, indent=4))
    pq.write_table(pa.table({"task_index": pa.array([0], pa.int64()), "__index_level_0__": pa.array([task], pa.large_string())}),
                   root / "meta" / "tasks.parquet")
    episode = np.repeat(np.arange(eps.num_episodes), lengths)
    frame = np.concatenate([np.arange(n) for n in lengths])
    timestamp = (frame / fps).astype(np.float32)

    file_of = np.zeros(eps.num_episodes, dtype=np.int64)
    for file_index, group in enumerate(groups):
        file_of[group] = file_index
        idx = np.arange(int(eps.episode_starts[group[0]]), int(eps.episode_ends[group[-1]]))
        columns = {"observation.state": pa.array(list(np.asarray(eps.states[idx])), type=pa.list_(pa.float32(), sd)),
                   "action": pa.array(list(np.asarray(eps.actions[idx])), type=pa.list_(pa.float32(), ad)),
                   **{c: pa.array([{"bytes": _png(eps.images[i, k]), "path": None} for i in idx],
                                  type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
                      for k, c in enumerate(cameras) if c not in videos},
                   "timestamp": pa.array(timestamp[idx]), "frame_index": pa.array(frame[idx]),
                   "episode_index": pa.array(episode[idx]), "index": pa.array(idx),
                   "task_index": pa.array(np.zeros(len(idx), dtype=np.int64))}
        out = root / DATA_PATH.format(chunk_index=0, file_index=file_index)
        out.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(columns), out)

    all_rows = np.arange(eps.num_frames)
    stats = {"observation.state": _stats(eps.states[:]), "action": _stats(eps.actions[:]),
             **{c: _image_stats(eps.images[:, k]) for k, c in enumerate(cameras)},
             "timestamp": _stats(timestamp[:, None]), "frame_index": _stats(frame[:, None]),
             "episode_index": _stats(episode[:, None]), "index": _stats(all_rows[:, None]),
             "task_index": _stats(np.zeros((eps.num_frames, 1)))}
    (root / "meta" / "stats.json").write_text(json.dumps(stats, indent=4))

    meta = {"episode_index": list(range(eps.num_episodes)), "tasks": [[task]] * eps.num_episodes, "length": lengths.tolist(),
            "data/chunk_index": [0] * eps.num_episodes, "data/file_index": file_of.tolist(),
            "dataset_from_index": eps.episode_starts.tolist(), "dataset_to_index": eps.episode_ends.tolist()}
    per_file = episodes_per_video_file or eps.num_episodes
    for key in videos:
        meta.update(_write_videos(root, eps, key, cameras.index(key), fps, video_codec, per_file))
    meta.update({"meta/episodes/chunk_index": [0] * eps.num_episodes, "meta/episodes/file_index": [0] * eps.num_episodes})
    out = root / "meta" / "episodes" / "chunk-000" / "file-000.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(meta), out)


def _write_videos(root: Path, eps: EpisodeSet, key: str, cam: int, fps: float, codec: str, per_file: int) -> dict[str, list]:
    """One camera's MP4 files (``per_file`` episodes back to back in each); its meta/episodes columns."""
    from tune_app.data.video import encode

    columns: dict[str, list] = {f"videos/{key}/{c}": [] for c in ("chunk_index", "file_index", "from_timestamp", "to_timestamp")}
    lengths = eps.episode_lengths()
    for file_index, first in enumerate(range(0, eps.num_episodes, per_file)):
        group = range(first, min(first + per_file, eps.num_episodes))
        lo, hi = int(eps.episode_starts[group[0]]), int(eps.episode_ends[group[-1]])
        encode(root / DEFAULT_VIDEO_PATH.format(video_key=key, chunk_index=0, file_index=file_index),
               np.asarray(eps.images[lo:hi, cam]), fps, codec)
        for e in group:
            start = (int(eps.episode_starts[e]) - lo) / fps
            columns[f"videos/{key}/chunk_index"].append(0)
            columns[f"videos/{key}/file_index"].append(file_index)
            columns[f"videos/{key}/from_timestamp"].append(start)
            columns[f"videos/{key}/to_timestamp"].append(start + int(lengths[e]) / fps)
    return columns
