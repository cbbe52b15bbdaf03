"""Shared test helpers. Ray-using modules start one local Ray each (see ``ray_local``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
TINY = REPO / "configs" / "act_tiny.yaml"


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m tune_app ARGS`` in a subprocess; returns the completed process (text output)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "tune_app", *args], cwd=cwd or REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def grid_space(folder: Path, name: str, lrs: list[float], extra: str = "") -> Path:
    """A grid sweep file over ``training.lr`` on the tiny config, minimising val_loss."""
    path = folder / f"{name}.yaml"
    path.write_text("method: grid\nmetric: {name: val_loss, goal: minimize}\n"
                    f"base_config: {TINY}\nparameters:\n  training.lr: {{values: {list(lrs)}}}\n{extra}\n")
    return path


@pytest.fixture(scope="module")
def ray_local():
    """One embedded local Ray (2 CPUs, dashboard on) for every test in a module."""
    from tune_app.cluster import connect as cluster

    conn = cluster.connect(num_cpus=2, log_to_driver=False)
    yield conn
    cluster.shutdown()


@pytest.fixture(scope="session")
def chromium():
    """Headless Chromium (Debian's package), installed with apt-get when absent; skipped only if that fails."""
    import shutil

    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    if shutil.which("apt-get") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        proc = subprocess.run(["apt-get", "install", "-y", "-q", "chromium"], env=env, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600)
            proc = subprocess.run(["apt-get", "install", "-y", "-q", "chromium"], env=env, capture_output=True, text=True, timeout=900)
        if path := shutil.which("chromium"):
            return path
        pytest.skip(f"chromium could not be installed: {proc.stderr.strip()[-300:]}")
    pytest.skip("chromium is not installed and apt-get is not usable here (needs root)")
