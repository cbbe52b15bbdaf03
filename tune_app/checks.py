"""Checks a command runs before its first write or Ray start (check first, write after).

Each raises one :class:`UserError` line naming the key or file and the fix; none of them writes.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
from pathlib import Path

from tune_app.errors import UserError

NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")
MAX_NAME = 64



def is_uri(location: str | Path | None) -> bool:
    """Whether a storage location is a URI (``s3://``, ``gs://``, ``file://`` ...) rather than a local path:
    the one place that decides it."""
    return location is not None and "://" in str(location)

def check_name(name: object, what: str) -> str:
    """A run name becomes a folder: letters, digits, '-', '_', '.', not starting with '.' or '-'."""
    if not isinstance(name, str) or not NAME.match(name) or len(name) > MAX_NAME:
        raise UserError(f"{what} {name!r}: a name is 1-{MAX_NAME} letters, digits, '-', '_' or '.', not starting "
                        "with '.' or '-' (it becomes a folder name); choose another")
    return name


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and not path.is_symlink():
        path = path.parent
    return path


def check_writable_dir(path: str | Path, what: str) -> Path:
    """``path`` is (or can become) a folder this process can write; returns it absolute."""
    path = Path(str(path).removeprefix("file://")).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {path}: is a file, not a folder; choose a folder")
    base = _nearest_existing(path)
    if not base.is_dir():
        raise UserError(f"{what} {path}: {base} is a file, so no folder can be made below it; choose another path")
    if not os.access(base, os.W_OK | os.X_OK):
        raise UserError(f"{what} {path}: {base} is not writable; choose a folder you can write to")
    return path.absolute()


def check_writable_file(path: str | Path, what: str) -> Path:
    """``path`` can be written as a file (its folder can be made, it is not a folder itself)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise UserError(f"{what} {path}: is a folder; give a file path")
    if path.exists() and not os.access(path, os.W_OK):
        raise UserError(f"{what} {path}: is not writable; choose another file")
    check_writable_dir(path.parent, what)
    return path.absolute()


def check_free_space(path: str | Path, need_bytes: int, what: str) -> None:
    """Refuse to start writing ``need_bytes`` into ``path``'s file system when they do not fit."""
    base = _nearest_existing(Path(path))
    free = shutil.disk_usage(base).free
    if need_bytes > free:
        raise UserError(f"{what} {path}: needs {need_bytes / 2**20:.0f} MiB but only {free / 2**20:.0f} MiB are free "
                        "there; free some space or choose a folder on another disk")


def check_reachable(address: str, what: str = "--address", timeout_s: float = 5.0) -> None:
    """A TCP connection to ``HOST:PORT`` (or a URL's host and port) succeeds within ``timeout_s``."""
    if address in ("auto", "local") or address.startswith("ray://"):
        return
    text = address.split("://", 1)[-1].split("/", 1)[0]
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not host or not 0 < int(port_text) < 65536:
        raise UserError(f"{what} {address}: expected HOST:PORT (e.g. 10.0.0.5:6379) or auto")
    try:
        with socket.create_connection((host.strip("[]"), int(port_text)), timeout=timeout_s):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UserError(f"{what} {address}: nothing answers there ({reason}, waited up to {timeout_s:g} s); "
                        "check the address and that the cluster is up, or omit it for a local Ray") from None
