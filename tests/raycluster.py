"""Ray clusters started with `ray start` by tests, isolated by their own RAY_TMPDIR and stopped exactly.

Every Ray process of such a cluster names its temp dir on its command line, so stopping it means
signalling the processes whose command line holds that path (and the process groups the test
created), never `ray stop` (which would stop every Ray on the machine).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def short_tmp() -> Path:
    """A temp dir with a short path: Ray's unix socket paths must stay under 108 characters."""
    return Path(tempfile.mkdtemp(prefix="ta-", dir="/tmp"))


def ray_env(tmp: Path) -> dict[str, str]:
    return {**os.environ, "RAY_TMPDIR": str(tmp), "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "PYTHONUNBUFFERED": "1"}


def pids_matching(needle: str) -> list[int]:
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if needle in cmdline and int(proc.name) != os.getpid():
                out.append(int(proc.name))
    return out


def stop(needles: list[str], groups: list[subprocess.Popen], tmp: Path | None = None, grace_s: float = 10) -> None:
    """SIGTERM the process groups and every process naming one of ``needles``; SIGKILL what is left after ``grace_s``."""
    for proc in groups:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.time() + 2 * grace_s
    while (pids := [p for n in needles for p in pids_matching(n)]) and time.time() < deadline:
        sig = signal.SIGTERM if time.time() < deadline - grace_s else signal.SIGKILL
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        time.sleep(1)
    for proc in groups:
        proc.wait(timeout=30)
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)


class RayHead:
    """`ray start --head` with its dashboard on 127.0.0.1 (Jobs API), for `submit` tests."""

    def __init__(self, num_cpus: int = 2):
        self.tmp = short_tmp()
        self.port, self.dashboard_port = free_port(), free_port()
        self.env = ray_env(self.tmp)
        subprocess.run(["ray", "start", "--head", f"--port={self.port}", "--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus}",
                        "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
                        "--object-store-memory=150000000", "--disable-usage-stats",
                        # own agent/metrics ports: the defaults collide with any other Ray on the machine
                        f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
                        f"--metrics-export-port={free_port()}"],
                       env=self.env, check=True, capture_output=True, timeout=120)

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def stop(self) -> None:
        stop([str(self.tmp)], [], self.tmp)
