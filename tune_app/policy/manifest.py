"""When is a checkpoint complete? When its manifest, written last, says so and every file matches it.

A checkpoint folder is copied file by file (from the worker's temporary folder into the run
directory, between nodes, into a bucket), in an order nobody here controls, and a copy can be cut
short. ``checkpoint_complete.json`` lists every file of the checkpoint with its size and is
written after them; a folder counts as complete only when the manifest parses and every listed
file is there with that size. A truncated or partly copied checkpoint is never picked by
``status``, ``report``, ``best/`` or a resume.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

MANIFEST = "checkpoint_complete.json"


def write_manifest(folder: str | Path) -> None:
    """List every file under ``folder`` with its size, then write the manifest (atomically, last)."""
    folder = Path(folder)
    files = {p.relative_to(folder).as_posix(): p.stat().st_size
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST}
    tmp = folder / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps({"files": files}, indent=1))
    os.replace(tmp, folder / MANIFEST)


def _expected(text: str | None) -> dict[str, int] | None:
    try:
        files = json.loads(text)["files"] if text else None
    except (ValueError, KeyError, TypeError):
        return None
    return files if isinstance(files, dict) and files else None


def is_complete(folder: str | Path) -> bool:
    """Whether a local checkpoint folder is complete (see the module doc)."""
    folder = Path(folder)
    try:
        files = _expected((folder / MANIFEST).read_text())
    except (OSError, UnicodeDecodeError):
        return False
    if files is None:
        return False
    for rel, size in files.items():
        try:
            if (folder / rel).stat().st_size != size:
                return False
        except OSError:
            return False
    return True


def is_complete_fs(fs, path: str) -> bool:
    """:func:`is_complete` for a folder on a pyarrow filesystem (a bucket run directory)."""
    import pyarrow.fs

    path = path.rstrip("/")
    try:
        with fs.open_input_stream(f"{path}/{MANIFEST}") as f:
            files = _expected(f.read().decode())
    except (OSError, UnicodeDecodeError):
        return False
    if files is None:
        return False
    infos = fs.get_file_info([f"{path}/{rel}" for rel in files])
    return all(i.type == pyarrow.fs.FileType.File and i.size == size for i, size in zip(infos, files.values(), strict=True))


def complete_checkpoints(trial_dir: str | Path) -> list[Path]:
    """The complete ``checkpoint_*`` folders of a Train run directory, oldest first."""
    return [c for c in sorted(Path(trial_dir).glob("checkpoint_*")) if c.is_dir() and is_complete(c)]
