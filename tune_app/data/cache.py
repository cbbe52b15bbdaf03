"""The prepared-episode cache: decode a data source once per node, memory-map it everywhere.

A source (ROS 2 bags, a LeRobot dataset) is decoded and synchronised into a folder of ``.npy``
arrays that every trial and every DDP rank on the node opens with ``mmap_mode="r"``: the page
cache holds one copy of the frames, however many processes train on them.

The folder's name is a hash of the source files' identity (path, size, mtime) and of the config
fields that change the decoded result (topics, fps, conventions, image size, ...), so a changed
bag or data key means a new folder, never a stale one. Building happens under a file lock in a
temporary folder that is renamed into place when complete: when six trials start at once one
decodes, the other five wait for the lock and then map the finished cache; a crash leaves no
half-written cache behind (the next build removes the leftover temporary folder).

Per-episode image moments (per-channel sum and sum of squares) are stored beside the frames, so
normalisation statistics for any train/val split cost nothing and never touch the images.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from filelock import FileLock

from tune_app.checks import check_free_space, check_writable_dir
from tune_app.data.episodes import EpisodeSet

FORMAT_VERSION = 1
ARRAYS = ("states", "actions", "images", "episode_starts", "episode_ends", "image_moments")


def default_root() -> Path:
    return Path(os.environ.get("TUNE_APP_CACHE") or Path.home() / ".cache" / "tune_app") / "data"


def file_identity(root: Path, files: list[Path]) -> list[list]:
    """``[relative path, size, mtime_ns]`` per file: changes when a file is rewritten or replaced."""
    out = []
    for f in sorted(files):
        st = f.stat()
        out.append([str(f.relative_to(root)), st.st_size, st.st_mtime_ns])
    return out


def cache_key(kind: str, root: Path, files: list[Path], fields: dict) -> str:
    blob = json.dumps({"version": FORMAT_VERSION, "kind": kind, "root": str(root.resolve()),
                       "files": file_identity(root, files), "fields": fields}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


@dataclass
class Layout:
    """Shape of a prepared set, known before any image is decoded."""
    episode_lengths: list[int]
    state_dim: int
    action_dim: int
    cameras: int
    height: int
    width: int


class CacheWriter:
    """The arrays of a cache being built, as writable memory maps in a temporary folder."""

    def __init__(self, folder: Path, layout: Layout):
        self.folder = folder
        n = int(sum(layout.episode_lengths))
        ends = np.cumsum(np.asarray(layout.episode_lengths, dtype=np.int64))
        self.layout = layout
        self.episode_ends = ends
        self.episode_starts = ends - np.asarray(layout.episode_lengths, dtype=np.int64)
        shapes = {"states": ((n, layout.state_dim), np.float32), "actions": ((n, layout.action_dim), np.float32),
                  "images": ((n, layout.cameras, layout.height, layout.width, 3), np.uint8)}
        need = sum(int(np.prod(shape)) * np.dtype(dtype).itemsize for shape, dtype in shapes.values())
        check_free_space(folder, need + (1 << 20), "data.cache_dir")
        for name, (shape, dtype) in shapes.items():
            setattr(self, name, _reserved_memmap(folder / f"{name}.npy", shape, dtype))

    def finish(self, source: str, extra: dict | None = None) -> None:
        moments = image_moments(self.images, self.episode_starts, self.episode_ends)
        for name, arr in (("episode_starts", self.episode_starts), ("episode_ends", self.episode_ends),
                          ("image_moments", moments)):
            np.save(self.folder / f"{name}.npy", arr)
        for arr in (self.states, self.actions, self.images):
            arr.flush()
        meta = {"version": FORMAT_VERSION, "source": source, "frames": int(len(self.states)),
                "episodes": len(self.episode_starts), "created": time.time(), **(extra or {})}
        (self.folder / "meta.json").write_text(json.dumps(meta, indent=1))


def _reserved_memmap(path: Path, shape: tuple, dtype) -> np.memmap:
    """A writable ``.npy`` memory map whose disk blocks are allocated up front: a disk that fills up
    fails here with ENOSPC (one line) instead of killing the process with SIGBUS mid-decode."""
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    if hasattr(os, "posix_fallocate"):
        with open(path, "r+b") as f:
            try:
                os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):   # a file system without fallocate
                    raise
    return arr


def image_moments(images: np.ndarray, starts: np.ndarray, ends: np.ndarray, block_values: int = 2**22) -> np.ndarray:
    """(E, 3, 3) float64: per episode, per channel [pixel count, sum, sum of squares] on the 0-1 scale.

    Reads ``block_values`` pixel values at a time (32 MiB of float64), whatever the frame size."""
    out = np.zeros((len(starts), 3, 3))
    block = max(1, block_values // max(1, int(np.prod(images.shape[1:]))))
    for e, (s, t) in enumerate(zip(starts, ends, strict=True)):
        for lo in range(int(s), int(t), block):
            px = images[lo:min(lo + block, int(t))].reshape(-1, 3).astype(np.float64) / 255.0
            out[e, 0] += len(px)
            out[e, 1] += px.sum(0)
            out[e, 2] += (px * px).sum(0)
    return out


def open_cache(folder: Path) -> EpisodeSet:
    meta = json.loads((folder / "meta.json").read_text())
    arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="r" if name == "images" else None) for name in ARRAYS}
    return EpisodeSet(source=meta["source"], **arrays)


def is_complete(folder: Path) -> bool:
    return (folder / "meta.json").is_file()


def load_or_build(root: Path, key: str, build: Callable[[Path], None], log=print) -> tuple[EpisodeSet, bool]:
    """Open cache ``root/key``, building it with ``build(tmp_folder)`` first when absent.

    Returns ``(episodes, built)``; ``built`` says whether this call did the decoding.
    """
    final = root / key
    if is_complete(final):
        return open_cache(final), False
    check_writable_dir(root, "data.cache_dir")
    created_root = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(root / f"{key}.lock"))
    try:
        lock.acquire(timeout=0)
    except TimeoutError:
        log(f"waiting for another process to finish preparing the data cache {final} ...")
        lock.acquire()
    try:
        if is_complete(final):
            return open_cache(final), False
        for stale in root.glob(f"{key}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = root / f"{key}.tmp-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            build(tmp)
            if is_complete(final):   # built meanwhile by a process that took a newer lock file
                shutil.rmtree(tmp)
            else:
                if final.exists():   # an incomplete folder from an older version: replace it
                    shutil.rmtree(final)
                os.rename(tmp, final)
        except BaseException:
            # Leave nothing behind: neither the half-built folder nor the lock file of a build that failed.
            shutil.rmtree(tmp, ignore_errors=True)
            Path(lock.lock_file).unlink(missing_ok=True)
            if created_root:
                with contextlib.suppress(OSError):
                    root.rmdir()
            raise
    finally:
        lock.release()
    return open_cache(final), True


def progress(total: int, desc: str):
    """A progress bar on stderr (plain when not a terminal, so logs stay readable)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="frame", file=sys.stderr, mininterval=1.0 if sys.stderr.isatty() else 10.0,
                leave=True, dynamic_ncols=True)
