"""A local LeRobot v3 dataset -> episodes (read with pyarrow, no LeRobot install needed).

Layout read: ``meta/info.json`` (``codebase_version`` v3.x, ``fps``, ``features``) and
``data/chunk-*/file-*.parquet`` with ``observation.state``, ``action``, ``episode_index``,
``frame_index`` (and ``timestamp``). Cameras are the features of dtype ``image``, stored in the
parquet as ``{bytes, path}`` structs (PNG/JPEG); a dataset whose cameras exist only as ``video``
(mp4 under ``videos/``) is refused with a message saying so: decoding AV1/H.264 video needs a
video decoder this package does not ship.

Values are taken as the dataset stores them (LeRobot datasets are already converted, so the
``conventions.*`` joint sign/wrapping are not applied again); frames are resized to
``conventions.image_resize``. Rows are ordered by (episode_index, frame_index).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from tune_app.config import Config
from tune_app.data.cache import CacheWriter, Layout, cache_key, progress
from tune_app.data.episodes import EpisodeSet
from tune_app.data.images import UnsupportedImage, decode_compressed, resize
from tune_app.errors import UserError

REQUIRED = ("observation.state", "action", "episode_index", "frame_index")


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
        self.cameras = [k for k, f in features.items() if f.get("dtype") == "image"]
        videos = [k for k, f in features.items() if f.get("dtype") == "video"]
        if not self.cameras:
            what = (f"its camera(s) {videos} are stored only as video (videos/.../*.mp4)" if videos
                    else "it has no camera feature")
            raise UserError(f"data.lerobot_root: {self.root}: {what}; tune_app needs camera frames stored in the parquet files "
                            "(features of dtype 'image'); re-export the dataset with image features or train from the bags")
        self.files = sorted(self.root.glob("data/chunk-*/file-*.parquet"))
        if not self.files:
            raise UserError(f"data.lerobot_root: no data/chunk-*/file-*.parquet files under {self.root}")

    def key(self) -> str:
        fields = {"image_resize": self.cfg.conventions.image_resize, "cameras": self.cameras}
        return cache_key(self.kind, self.root, [*self.files, self.root / "meta" / "info.json"], fields)

    def describe(self) -> str:
        return f"LeRobot dataset {self.root} (cameras {', '.join(self.cameras)})"

    def _read_columns(self):
        import pyarrow as pa
        import pyarrow.parquet as pq

        tables = []
        for f in self.files:
            try:
                t = pq.read_table(f, columns=list(REQUIRED))
            except (pa.ArrowInvalid, KeyError, OSError) as err:
                raise UserError(f"{f}: cannot read the columns {list(REQUIRED)} ({err})") from None
            tables.append(t)
        return tables

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
        _, lengths = np.unique(ep[order], return_counts=True)
        h, w = self.cfg.conventions.image_resize
        writer = CacheWriter(folder, Layout(lengths.tolist(), states.shape[1], actions.shape[1], len(self.cameras), h, w))
        writer.states[:] = states[order]
        writer.actions[:] = actions[order]
        with progress(len(order) * len(self.cameras), "decoding LeRobot frames") as bar:
            for fi, f in enumerate(self.files):
                for cam, key in enumerate(self.cameras):
                    row = int(file_rows[fi])
                    for batch in pq.ParquetFile(f).iter_batches(columns=[key], batch_size=64):
                        for item in batch.column(0).to_pylist():
                            writer.images[slot_of_row[row], cam] = resize(self._decode(item, key, f), (h, w))
                            row += 1
                        bar.update(batch.num_rows)
        writer.finish(self.describe(), {"cameras": self.cameras})

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


def write_lerobot_dataset(root: Path, eps: EpisodeSet, fps: float, rows_per_file: int = 1000) -> None:
    """Write episodes as a LeRobot v3 dataset with PNG frames in the parquet files (demo and tests)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image as PILImage

    cameras = [f"observation.images.cam{c}" if eps.num_cameras > 1 else "observation.images.color" for c in range(eps.num_cameras)]
    h, w = eps.images.shape[2:4]
    sd, ad = eps.states.shape[1], eps.actions.shape[1]
    features = {"observation.state": {"dtype": "float32", "shape": [sd], "names": None},
                "action": {"dtype": "float32", "shape": [ad], "names": None},
                **{c: {"dtype": "image", "shape": [h, w, 3], "names": ["height", "width", "channel"]} for c in cameras},
                **{k: {"dtype": "int64", "shape": [1], "names": None} for k in ("episode_index", "frame_index", "index")},
                "timestamp": {"dtype": "float32", "shape": [1], "names": None}}
    (root / "meta").mkdir(parents=True, exist_ok=True)
    info = {"codebase_version": "v3.0", "fps": fps, "total_episodes": eps.num_episodes, "total_frames": eps.num_frames,
            "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet", "features": features}
    (root / "meta" / "info.json").write_text(json.dumps(info, indent=2))
    episode = np.repeat(np.arange(eps.num_episodes), eps.episode_lengths())
    frame = np.concatenate([np.arange(n) for n in eps.episode_lengths()])

    def png(img: np.ndarray) -> bytes:
        buf = io.BytesIO()
        PILImage.fromarray(np.asarray(img)).save(buf, format="PNG")
        return buf.getvalue()

    for file_index, lo in enumerate(range(0, eps.num_frames, rows_per_file)):
        idx = np.arange(lo, min(lo + rows_per_file, eps.num_frames))
        columns = {"observation.state": pa.array(list(np.asarray(eps.states[idx])), type=pa.list_(pa.float32(), sd)),
                   "action": pa.array(list(np.asarray(eps.actions[idx])), type=pa.list_(pa.float32(), ad)),
                   **{c: pa.array([{"bytes": png(eps.images[i, k]), "path": None} for i in idx],
                                  type=pa.struct([("bytes", pa.binary()), ("path", pa.string())])) for k, c in enumerate(cameras)},
                   "episode_index": pa.array(episode[idx]), "frame_index": pa.array(frame[idx]), "index": pa.array(idx),
                   "timestamp": pa.array((frame[idx] / fps).astype(np.float32))}
        out = root / "data" / "chunk-000" / f"file-{file_index:03d}.parquet"
        out.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(columns), out)
