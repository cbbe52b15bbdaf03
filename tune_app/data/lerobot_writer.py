"""Write episodes as a LeRobot v3 dataset (``data demo --format lerobot``, tests).

Cameras are stored as PNG images in the parquet files, or as MP4 video (``video_codec``: av1, LeRobot's
default, h264 or hevc) under ``videos/<key>/chunk-000/file-XXX.mp4`` with ``episodes_per_video_file``
episodes back to back in each file; ``video_cameras`` picks which cameras are video (a mixed dataset).
``meta/episodes/chunk-000/file-000.parquet`` says, per episode, its rows and, per video camera, its
file and its ``from_timestamp``/``to_timestamp`` there, as LeRobot writes them.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from tune_app.data.episodes import EpisodeSet
from tune_app.data.lerobot import DEFAULT_VIDEO_PATH

DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"


def camera_keys(num_cameras: int) -> list[str]:
    return [f"observation.images.cam{c}" for c in range(num_cameras)] if num_cameras > 1 else ["observation.images.color"]


def _png(img: np.ndarray) -> bytes:
    from PIL import Image as PILImage

    buf = io.BytesIO()
    PILImage.fromarray(np.asarray(img)).save(buf, format="PNG")
    return buf.getvalue()


def write_lerobot_dataset(root: Path, eps: EpisodeSet, fps: float, rows_per_file: int = 1000, video_codec: str | None = None,
                          episodes_per_video_file: int | None = None, video_cameras: list[int] | None = None) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    cameras = camera_keys(eps.num_cameras)
    videos = [] if video_codec is None else [cameras[c] for c in (video_cameras if video_cameras is not None else range(len(cameras)))]
    h, w = eps.images.shape[2:4]
    sd, ad = eps.states.shape[1], eps.actions.shape[1]
    fps_value = int(fps) if float(fps).is_integer() else float(fps)

    def camera_feature(key: str) -> dict:
        feature = {"dtype": "video" if key in videos else "image", "shape": [h, w, 3], "names": ["height", "width", "channel"]}
        if key in videos:
            feature["info"] = {"video.fps": fps_value, "video.height": h, "video.width": w, "video.channels": 3,
                               "video.codec": video_codec, "video.pix_fmt": "yuv420p", "video.is_depth_map": False,
                               "has_audio": False}
        return feature

    features = {"observation.state": {"dtype": "float32", "shape": [sd], "names": None},
                "action": {"dtype": "float32", "shape": [ad], "names": None},
                **{c: camera_feature(c) for c in cameras},
                **{k: {"dtype": "int64", "shape": [1], "names": None} for k in ("episode_index", "frame_index", "index")},
                "timestamp": {"dtype": "float32", "shape": [1], "names": None}}
    (root / "meta").mkdir(parents=True, exist_ok=True)
    info = {"codebase_version": "v3.0", "fps": fps_value, "total_episodes": eps.num_episodes, "total_frames": eps.num_frames,
            "data_path": DATA_PATH, "video_path": DEFAULT_VIDEO_PATH if videos else None, "features": features}
    (root / "meta" / "info.json").write_text(json.dumps(info, indent=2))
    lengths = eps.episode_lengths()
    episode = np.repeat(np.arange(eps.num_episodes), lengths)
    frame = np.concatenate([np.arange(n) for n in lengths])

    for file_index, lo in enumerate(range(0, eps.num_frames, rows_per_file)):
        idx = np.arange(lo, min(lo + rows_per_file, eps.num_frames))
        columns = {"observation.state": pa.array(list(np.asarray(eps.states[idx])), type=pa.list_(pa.float32(), sd)),
                   "action": pa.array(list(np.asarray(eps.actions[idx])), type=pa.list_(pa.float32(), ad)),
                   **{c: pa.array([{"bytes": _png(eps.images[i, k]), "path": None} for i in idx],
                                  type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
                      for k, c in enumerate(cameras) if c not in videos},
                   "episode_index": pa.array(episode[idx]), "frame_index": pa.array(frame[idx]), "index": pa.array(idx),
                   "timestamp": pa.array((frame[idx] / fps).astype(np.float32))}
        out = root / DATA_PATH.format(chunk_index=0, file_index=file_index)
        out.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(columns), out)

    meta = {"episode_index": list(range(eps.num_episodes)), "length": lengths.tolist(),
            "dataset_from_index": eps.episode_starts.tolist(), "dataset_to_index": eps.episode_ends.tolist(),
            "data/chunk_index": [0] * eps.num_episodes,
            "data/file_index": (np.asarray(eps.episode_starts) // rows_per_file).tolist()}
    per_file = episodes_per_video_file or eps.num_episodes
    for key in videos:
        meta.update(_write_videos(root, eps, key, cameras.index(key), fps, video_codec, per_file))
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
