"""Who listens on a port: a test that starts a server checks that its own process answers.

A busy machine hands a "free" port to another process between the check and the bind (Ray starts
many), so a server started by a test may fail to bind while something else answers on its port.
"""

from __future__ import annotations

import os
from pathlib import Path


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:     # 0A = LISTEN
                inodes.add(inode)
    return inodes


def listening_pids(port: int) -> set[int]:
    """PIDs of the processes holding a listening socket on ``port`` (any address)."""
    wanted = {f"socket:[{i}]" for i in _listening_inodes(port)}
    pids = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) in wanted:
                    pids.add(int(proc.name))
                    break
        except OSError:
            continue
    return pids


def descends_from(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return False
    return False


def owned_by(port: int, pid: int) -> bool:
    """Whether every listener on ``port`` is ``pid`` or one of its descendants (and there is one)."""
    owners = listening_pids(port)
    return bool(owners) and all(descends_from(p, pid) for p in owners)
