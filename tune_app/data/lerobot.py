"""A local LeRobot v3 dataset -> episodes (read with pyarrow and PyAV, no LeRobot install needed).

Layout read: ``meta/info.json`` (``codebase_version`` v3.x, ``fps``, ``features``) and
``data/chunk-*/file-*.parquet`` with ``observation.state``, ``action``, ``episode_index``,
``frame_index`` (and ``timestamp``). Cameras are the features of dtype ``image`` or ``video``
(``data.camera_keys`` picks and orders them; default: all, in info.json's order):

* ``image``: stored in the parquet as ``{bytes, path}`` structs (PNG/JPEG);
* ``video``: MP4 files at info.json's ``video_path`` (``videos/<key>/chunk-XXX/file-XXX.mp4``), several
  episodes per file; ``meta/episodes/chunk-*/file-*.parquet`` gives each episode's file
  (``videos/<key>/chunk_index``, ``file_index``) and where it starts (``from_timestamp``). The frame of
  row ``timestamp = t`` is the one at ``from_timestamp + t``, matched within half a frame period
  (:mod:`.video`: AV1, H.264, HEVC). A dataset may mix image and video cameras.

Values are taken as the dataset stores them (LeRobot datasets are already converted, so the
``conventions.*`` joint sign/wrapping are not applied again); frames are resized to
``conventions.image_resize``. Rows are ordered by (episode_index, frame_index).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tune_app.config import Config
from tune_app.data.cache import CacheWriter, Layout, cache_key, progress
from tune_app.data.images import UnsupportedImage, decode_compressed, resize
from tune_app.errors import UserError, did_you_mean

REQUIRED = ("observation.state", "action", "episode_index", "frame_index")
CAMERA_DTYPES = ("image", "video")
DEFAULT_VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"


def _vector_column(table, name: str) -> np.ndarray:
    col = table.column(name).combine_chunks()
    width = len(col[0]) if len(col) else 0
    return np.asarray(col.flatten().to_numpy(zero_copy_only=False), dtype=np.float32).reshape(len(col), width)


def find_dataset_root(folder: Path, max_depth: int = 4) -> Path:
    """The LeRobot dataset in ``folder``: the folder itself when it holds ``meta/info.json``, else the one
    folder below it that does (an upload keeps whatever subfolders the user had, e.g. on OSMO)."""
    if (folder / "meta" / "info.json").is_file():
        return folder
    found = sorted(p.parent.parent for p in folder.glob("**/meta/info.json")
                   if len(p.relative_to(folder).parts) <= max_depth + 2)
    if len(found) == 1:
        return found[0]
    if not found:
        raise UserError(f"data.lerobot_root: no LeRobot dataset in {folder} (no meta/info.json there or in its subfolders); "
                        "point the key at a LeRobot v3 dataset folder (the one holding meta/ and data/)")
    raise UserError(f"data.lerobot_root: {folder} holds {len(found)} LeRobot datasets ({', '.join(str(f) for f in found[:3])}"
                    f"{', ...' if len(found) > 3 else ''}); point the key at one of them")


class LeRobotSource:
    kind = "lerobot-v3"

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.root = find_dataset_root(Path(cfg.data.lerobot_root))
        info_path = self.root / "meta" / "info.json"
        try:
            self.info = json.loads(info_path.read_text())
        except json.JSONDecodeError as err:
            raise UserError(f"{info_path}: not valid JSON ({err})") from None
        version = str(self.info.get("codebase_version", ""))
        if not version.startswith("v3"):
            raise UserError(f"{info_path}: codebase_version '{version}' is not supported; tune_app reads LeRobot v3 datasets "
                            "(convert with LeRobot's v2.1 -> v3.0 script)")
        features = self.info.get("features", {})
        missing = [k for k in ("observation.state", "action") if k not in features]
        if missing:
            raise UserError(f"{info_path}: features {missing} missing; tune_app needs observation.state and action")
        self.features = features
        self.cameras = self._pick_cameras(features)
        self.video_keys = [k for k in self.cameras if features[k]["dtype"] == "video"]
        self.files = sorted(self.root.glob("data/chunk-*/file-*.parquet"))
        if not self.files:
            raise UserError(f"data.lerobot_root: no data/chunk-*/file-*.parquet files under {self.root}")
        self.episode_files = sorted(self.root.glob("meta/episodes/chunk-*/file-*.parquet"))
        if self.video_keys and not self.episode_files:
            raise UserError(f"data.lerobot_root: {self.root}: camera(s) {self.video_keys} are videos but there is no "
                            "meta/episodes/chunk-*/file-*.parquet saying where each episode is in them; the dataset is incomplete")
        self.video_files = sorted(p for k in self.video_keys for p in (self.root / "videos" / k).glob("**/*.mp4"))

    def _pick_cameras(self, features: dict) -> list[str]:
        available = [k for k, f in features.items() if f.get("dtype") in CAMERA_DTYPES]
        wanted = self.cfg.data.camera_keys
        if not wanted:
            if not available:
                raise UserError(f"data.lerobot_root: {self.root}: no camera feature (dtype image or video) in meta/info.json; "
                                "tune_app trains on camera frames")
            return available
        for key in wanted:
            if key not in available:
                raise UserError(f"data.camera_keys: '{key}' is not a camera of {self.root}{did_you_mean(key, available)}; "
                                f"it has: {', '.join(available) or 'none'}")
        return list(wanted)

    def key(self) -> str:
        fields = {"image_resize": self.cfg.conventions.image_resize, "cameras": self.cameras}
        files = [*self.files, self.root / "meta" / "info.json", *(self.episode_files if self.video_keys else []), *self.video_files]
        return cache_key(self.kind, self.root, files, fields)

    def describe(self) -> str:
        return f"LeRobot dataset {self.root} (cameras {', '.join(self.cameras)})"

    def _read_columns(self):
        import pyarrow as pa
        import pyarrow.parquet as pq

        tables = []
        for f in self.files:
            try:
                names = pq.ParquetFile(f).schema_arrow.names
                t = pq.read_table(f, columns=[*REQUIRED, *(["timestamp"] if "timestamp" in names else [])])
            except (pa.ArrowInvalid, KeyError, OSError) as err:
                raise UserError(f"{f}: cannot read the columns {list(REQUIRED)} ({err})") from None
            tables.append(t)
        return tables

    def _timestamps(self, tables, frames: np.ndarray) -> np.ndarray:
        """Each row's ``timestamp`` (seconds into its episode); ``frame_index / fps`` where a file has none."""
        fps = float(self.info.get("fps") or self.cfg.data.fps)
        parts = [t.column("timestamp").to_numpy().astype(np.float64) if "timestamp" in t.column_names else None for t in tables]
        if all(p is not None for p in parts):
            return np.concatenate(parts)
        return frames / fps

    def build(self, folder: Path) -> None:
        import pyarrow.parquet as pq

        tables = self._read_columns()
        file_rows = np.cumsum([0] + [t.num_rows for t in tables])
        states = np.concatenate([_vector_column(t, "observation.state") for t in tables])
        actions = np.concatenate([_vector_column(t, "action") for t in tables])
        ep = np.concatenate([t.column("episode_index").to_numpy() for t in tables]).astype(np.int64)
        fr = np.concatenate([t.column("frame_index").to_numpy() for t in tables]).astype(np.int64)
        order = np.lexsort((fr, ep))
        slot_of_row = np.empty_like(order)
        slot_of_row[order] = np.arange(len(order))
        episode_ids, lengths = np.unique(ep[order], return_counts=True)
        h, w = self.cfg.conventions.image_resize
        writer = CacheWriter(folder, Layout(lengths.tolist(), states.shape[1], actions.shape[1], len(self.cameras), h, w))
        writer.states[:] = states[order]
        writer.actions[:] = actions[order]
        with progress(len(order) * len(self.cameras), "decoding LeRobot frames") as bar:
            for fi, f in enumerate(self.files):
                for key in self.cameras:
                    if key in self.video_keys:
                        continue
                    cam, row = self.cameras.index(key), int(file_rows[fi])
                    for batch in pq.ParquetFile(f).iter_batches(columns=[key], batch_size=64):
                        for item in batch.column(0).to_pylist():
                            writer.images[slot_of_row[row], cam] = resize(self._decode(item, key, f), (h, w))
                            row += 1
                        bar.update(batch.num_rows)
            if self.video_keys:
                times = self._timestamps(tables, fr)[order]
                self._decode_videos(writer, episode_ids, times, bar)
        writer.finish(self.describe(), {"cameras": self.cameras})

    def _episode_videos(self, episode_ids: np.ndarray) -> dict[str, dict[int, tuple[int, int, float]]]:
        """Per video camera: episode index -> (chunk index, file index, from_timestamp), from meta/episodes."""
        import pyarrow.parquet as pq

        columns = ["episode_index"] + [f"videos/{k}/{c}" for k in self.video_keys
                                       for c in ("chunk_index", "file_index", "from_timestamp")]
        rows: dict[str, list] = {c: [] for c in columns}
        for f in self.episode_files:
            names = pq.ParquetFile(f).schema_arrow.names
            missing = [c for c in columns if c not in names]
            if missing:
                raise UserError(f"{f}: columns {missing} missing; LeRobot v3 episode metadata names each episode's video "
                                "file and start (videos/<camera>/chunk_index, file_index, from_timestamp)")
            table = pq.read_table(f, columns=columns)
            for c in columns:
                rows[c] += table.column(c).to_pylist()
        out: dict[str, dict[int, tuple[int, int, float]]] = {}
        for k in self.video_keys:
            out[k] = {int(e): (int(ci), int(fi), float(t)) for e, ci, fi, t in zip(
                rows["episode_index"], rows[f"videos/{k}/chunk_index"], rows[f"videos/{k}/file_index"],
                rows[f"videos/{k}/from_timestamp"], strict=True)}
            absent = [int(e) for e in episode_ids if int(e) not in out[k]]
            if absent:
                raise UserError(f"{self.root}/meta/episodes: no entry for episode(s) {absent[:5]} of camera {k}; "
                                "the episode metadata and data/ disagree")
        return out

    def _decode_videos(self, writer: CacheWriter, episode_ids: np.ndarray, times: np.ndarray, bar) -> None:
        """Decode every video camera's frames into the cache, one video file at a time, seeking per episode."""
        from tune_app.data.video import UnsupportedVideo, check_decodable, open_video

        half_period = 0.5 / float(self.info.get("fps") or self.cfg.data.fps)
        template = self.info.get("video_path") or DEFAULT_VIDEO_PATH
        where = self._episode_videos(episode_ids)
        for key in self.video_keys:
            cam = self.cameras.index(key)
            by_file: dict[tuple[int, int], list[int]] = {}
            for e, ep in enumerate(episode_ids):
                by_file.setdefault(where[key][int(ep)][:2], []).append(e)
            for (chunk, file_index), episodes in sorted(by_file.items()):
                path = self.root / template.format(video_key=key, chunk_index=chunk, file_index=file_index)
                if not path.is_file():
                    raise UserError(f"{path}: missing; meta/episodes puts episode(s) "
                                    f"{[int(episode_ids[e]) for e in episodes[:5]]} of camera {key} there")
                try:
                    with open_video(path) as container:
                        check_decodable(container, self.features[key].get("info", {}).get("video.codec"))
                        for e in episodes:
                            start, end, episode = int(writer.episode_starts[e]), int(writer.episode_ends[e]), int(episode_ids[e])
                            wanted = where[key][episode][2] + times[start:end]     # from_timestamp + row timestamps
                            self._decode_episode(container, path, key, episode, writer.images[start:end], cam, wanted, half_period)
                            bar.update(end - start)
                except UnsupportedVideo as err:
                    raise UserError(f"{path}: camera {key}: {err}") from None

    def _decode_episode(self, container, path: Path, key: str, episode: int, images: np.ndarray, cam: int,
                        wanted: np.ndarray, tolerance_s: float) -> None:
        """One episode's frames of one camera into ``images[:, cam]`` (the episode's rows of the cache)."""
        from tune_app.data.video import decode_at

        size = tuple(images.shape[2:4])

        def put(i: int, rgb: np.ndarray) -> None:
            images[i, cam] = resize(rgb, size)

        found = decode_at(container, wanted, tolerance_s, put)
        if not found.all():
            first = int(np.flatnonzero(~found)[0])
            raise UserError(f"{path}: camera {key}, episode {episode}: no frame within half a frame period of {int((~found).sum())} "
                            f"of its {len(wanted)} timestamps (the first at {wanted[first]:.3f} s); the video and meta/episodes disagree")

    def _decode(self, item, key: str, f: Path) -> np.ndarray:
        data = item.get("bytes") if isinstance(item, dict) else item
        if not data and isinstance(item, dict) and item.get("path"):
            data = (self.root / item["path"]).read_bytes()
        if not data:
            raise UserError(f"{f}: column {key} has a row without image bytes or path")
        try:
            return decode_compressed(data)
        except UnsupportedImage as err:
            raise UserError(f"{f}: column {key}: {err}") from None
