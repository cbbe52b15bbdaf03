"""Helpers the OSMO entry scripts (osmo/head.sh, osmo/worker.sh) call on each node.

``python -m tune_app.cluster.node object-store SIZE`` prints ``--object-store-memory=BYTES`` for ``ray start``
when SIZE (``8Gi``, ``512Mi``, bytes; empty = Ray's default) fits the node's /dev/shm, else says
why on one line and exits 2. ``python -m tune_app.cluster.node argv`` prints TUNE_APP_ARGV (a JSON list
written by ``osmo render``) one argument per line, so bash reads it with ``mapfile`` and never
evaluates it.
"""

from __future__ import annotations

import json
import os
import re
import sys

UNITS = {"": 1, "B": 1, "K": 2**10, "Ki": 2**10, "M": 2**20, "Mi": 2**20, "G": 2**30, "Gi": 2**30, "T": 2**40, "Ti": 2**40}


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    if not m or m.group(2) not in UNITS:
        raise ValueError(f"{text!r} is not a size (e.g. 8Gi, 512Mi)")
    return int(float(m.group(1)) * UNITS[m.group(2)])


def object_store_args(size: str, shm: str = "/dev/shm") -> str:
    if not size.strip():
        return ""
    need = parse_size(size)
    try:
        st = os.statvfs(shm)
        have = st.f_bavail * st.f_frsize
    except OSError:
        have = 0
    if need > have:
        raise ValueError(f"SHM_SIZE {size} ({need >> 20} MiB) does not fit {shm} ({have >> 20} MiB free); lower "
                         "shm_size or mount a larger /dev/shm (shm: true mounts the node's)")
    return f"--object-store-memory={need}"


def argv_lines(text: str) -> str:
    args = json.loads(text or "[]")
    if not isinstance(args, list) or not all(isinstance(a, str) and "\n" not in a for a in args):
        raise ValueError("TUNE_APP_ARGV must be a JSON list of one-line strings")
    return "\n".join(args)


def main(argv: list[str]) -> int:
    try:
        if argv[:1] == ["object-store"]:
            out = object_store_args(argv[1] if len(argv) > 1 else "")
        elif argv[:1] == ["argv"]:
            out = argv_lines(os.environ.get("TUNE_APP_ARGV", "[]"))
        else:
            raise ValueError("usage: python -m tune_app.cluster.node object-store SIZE | argv")
    except ValueError as exc:
        print(f"tune_app.cluster.node: {exc}", file=sys.stderr)
        return 2
    if out:
        print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
