"""Run directories in a bucket (``s3://``, ``gs://``, ... through pyarrow): a local mirror and back.

On a multi-node cluster the run directory is shared storage, usually a bucket. Reading a sweep's
results (``status``, ``report``, the end-of-sweep summary) needs Tune's state files and each
trial's metrics, not the checkpoints, so :func:`mirror` copies everything except checkpoint
folders to a local directory and returns where the checkpoints are; :func:`download_dir` fetches
the one checkpoint worth having (the best), and :func:`upload` puts the summary files back.
"""

from __future__ import annotations

import re
from pathlib import Path

CHECKPOINT = re.compile(r"(^|/)trials/[^/]+/checkpoint_\d+(/|$)")


def split(uri: str):
    """``(pyarrow filesystem, path inside it)`` for a URI."""
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(uri)


def _files(fs, root: str):
    import pyarrow.fs

    return [i for i in fs.get_file_info(pyarrow.fs.FileSelector(root, recursive=True, allow_not_found=True))
            if i.type == pyarrow.fs.FileType.File]


def _copy(fs, src: str, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with fs.open_input_stream(src) as f, dest.open("wb") as out:
        while chunk := f.read(1 << 20):
            out.write(chunk)


def mirror(fs, root: str, local: Path) -> dict[str, list[str]]:
    """Copy ``root`` to ``local`` without checkpoint folders; returns ``{trial folder: [checkpoint dirs]}``."""
    root = root.rstrip("/")
    checkpoints: dict[str, set[str]] = {}
    for info in _files(fs, root):
        rel = info.path[len(root) + 1:]
        if match := CHECKPOINT.search(rel):
            ckpt = rel[: match.end()].rstrip("/")
            checkpoints.setdefault(ckpt.rsplit("/", 1)[0], set()).add(ckpt)
            continue
        _copy(fs, info.path, local / rel)
    return {trial: sorted(c) for trial, c in checkpoints.items()}


def download_dir(fs, remote: str, local: Path) -> None:
    remote = remote.rstrip("/")
    for info in _files(fs, remote):
        _copy(fs, info.path, local / info.path[len(remote) + 1:])


def upload(fs, root: str, local_root: Path, names: list[str]) -> None:
    """Copy ``local_root/<name>`` (files or folders) to ``root/<name>``."""
    for name in names:
        src = local_root / name
        paths = [p for p in src.rglob("*") if p.is_file()] if src.is_dir() else [src] if src.is_file() else []
        for p in paths:
            target = f"{root.rstrip('/')}/{p.relative_to(local_root).as_posix()}"
            fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
            with fs.open_output_stream(target) as out:
                out.write(p.read_bytes())
