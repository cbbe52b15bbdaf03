"""A real two-node Ray cluster on this machine, brought up by the same entry scripts the OSMO workflow runs.

osmo/worker.sh joins (retrying until the head listens), osmo/head.sh starts the head, waits for both
nodes, runs the sweep with ``--address auto`` and copies the results to OUTPUT_DIR. Each node gets
one CPU, so two concurrent 1-CPU trials must use both. The test stops exactly the processes it
started: those whose command line names its own Ray temp dir or whose process group it created.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tune_app.policy.manifest import complete_checkpoints
from tune_app.sweep.results import load_run

from .conftest import REPO, TINY
from .raycluster import free_port, pids_matching, ray_env, short_tmp, stop

pytestmark = pytest.mark.slow


def isolated() -> list[str]:
    """A PID namespace for a worker node: worker.sh runs `ray stop` between join attempts, which stops
    every Ray process it can see; inside its own namespace (as on an OSMO pod) that is only its own.
    unshare ignores SIGTERM: end it with SIGKILL (``kill_group``), which takes the namespace with it."""
    command = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"]
    probe = subprocess.run([*command, "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"unshare (PID namespace) is not available: {probe.stderr.decode()[-200:]}")
    return command


def kill_group(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class LocalCluster:
    """Head (osmo/head.sh) + one worker node (osmo/worker.sh) on 127.0.0.1, isolated by RAY_TMPDIR."""

    token = "multinode-test-token-0123456789abcdef"

    def __init__(self, space: Path, out: Path, storage: Path, sweep_name: str, extra_args: str = "", fast: str = "1"):
        self.tmp = short_tmp()
        self.port, self.dash, self.worker_port = free_port(), free_port(), free_port()
        # Token authentication, as on OSMO: one token (an OSMO credential there) given to every node.
        env = self.env = {**{k: v for k, v in ray_env(self.tmp).items() if k != "RAY_AUTH_MODE"}, "RAY_AUTH_TOKEN": self.token}
        common = "--node-ip-address=127.0.0.1 --num-cpus=1 --object-store-memory=100000000"
        self.worker = subprocess.Popen(
            [*isolated(), "bash", str(REPO / "osmo" / "worker.sh")], start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env={**env, "HEAD_HOST": "127.0.0.1", "RAY_PORT": str(self.port), "JOIN_RETRY_S": "1",
                 "RAY_START_ARGS": f"{common} --node-manager-port={self.worker_port} --resources={{\"worker_node\":1}}"})
        self.head = subprocess.Popen(
            ["bash", str(REPO / "osmo" / "head.sh")], start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, env={**env, "TUNE_APP_FAST": fast, "SEARCH_SPACE": str(space), "NUM_WORKERS": "1", "STORAGE_PATH": str(storage),
                            "SWEEP_NAME": sweep_name, "OUTPUT_DIR": str(out), "RAY_PORT": str(self.port), "WAIT_TIMEOUT": "120",
                            "TUNE_APP_DIR": str(REPO), "TUNE_APP_ARGS": f"--max-concurrent 2 {extra_args}",
                            "RAY_START_ARGS": f"{common} --dashboard-port={self.dash} --include-dashboard=true"})
        # Read the head's output as it comes: a full pipe would block the driver (and its Tune loop) mid-sweep.
        self._head_lines: list[str] = []
        self._reader = threading.Thread(target=lambda: self._head_lines.extend(iter(self.head.stdout.readline, "")), daemon=True)
        self._reader.start()

    def head_log(self, timeout: float = 600) -> str:
        """The head's whole output, once its script has exited."""
        self.head.wait(timeout=timeout)
        self._reader.join(timeout=30)
        return "".join(self._head_lines)

    def nodes(self) -> list[dict]:
        url = f"http://127.0.0.1:{self.dash}/api/v0/nodes"
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(request, timeout=5) as r:
            return json.load(r)["data"]["result"]["result"]

    def kill_worker_node(self) -> None:
        os.killpg(self.worker.pid, signal.SIGKILL)            # worker.sh, its `ray start --block` and that node's raylet
        for pid in self._pids(f"--node_manager_port={self.worker_port}"):
            os.kill(pid, signal.SIGKILL)

    def _pids(self, needle: str) -> list[int]:
        return pids_matching(needle)

    def stop(self) -> None:
        kill_group(self.worker)
        stop([str(self.tmp), f"--node_manager_port={self.worker_port}"], [self.head, self.worker], self.tmp)


def write_space(folder: Path, steps: int, save_freq: int) -> Path:
    space = folder / "space.yaml"
    space.write_text("method: grid\nmetric: {name: val_loss, goal: minimize}\n"
                     f"base_config: {TINY}\nparameters:\n  training.lr: {{values: [1.0e-4, 3.0e-5]}}\n"
                     f"overrides:\n  training.steps: {steps}\n  training.log_freq: {save_freq}\n  training.eval_freq: {save_freq}\n"
                     f"  training.save_freq: {save_freq}\n  data.demo_episodes: 12\n")
    return space


@pytest.mark.parametrize("fast", ["1", "0"], ids=["fast", "stock"])
def test_sweep_spreads_over_two_nodes_started_by_the_workflow_scripts(tmp_path, fast):
    cluster = LocalCluster(write_space(tmp_path, 30, 15), tmp_path / "out", tmp_path / "shared", "multi", fast=fast)
    try:
        log = cluster.head_log()
        assert cluster.head.returncode == 0, log[-4000:]
        assert "waiting for 2 Ray node(s)" in log
        assert ("stock Ray mode" in log) == (fast == "0")
        run = load_run(tmp_path / "shared" / "multi")
        assert [t.state for t in run.trials] == ["TERMINATED", "TERMINATED"]
        nodes = {r["node_id"] for t in run.trials for r in t.history}
        assert len(nodes) == 2, nodes                                         # each trial on its own node
        for name in ("summary.json", "best_config.yaml", "report.html", "best/pretrained_model/model.safetensors"):
            assert (tmp_path / "out" / name).is_file(), name                 # what OSMO would upload from {{output}}
        # A run directory the other processes cannot see (each resolves /proc/self/cwd to its own folder) is refused.
        work = tmp_path / "elsewhere"
        work.mkdir()
        proc = subprocess.run([sys.executable, "-m", "tune_app", "run", str(tmp_path / "space.yaml"), "--address", f"127.0.0.1:{cluster.port}",
                               "--storage", "/proc/self/cwd/runs_local"], cwd=work, env={**cluster.env, "RAY_AUTH_MODE": "token"},
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2 and "is local to this node" in proc.stderr and "2-node cluster" in proc.stderr, proc.stderr[-2000:]
    finally:
        cluster.stop()
    assert not cluster._pids(str(cluster.tmp)) and not cluster._pids(f"--node_manager_port={cluster.worker_port}")


def test_sweep_survives_losing_the_worker_node(tmp_path):
    # The node is killed mid-trial: once the driver has a report of the worker's trial and that trial has
    # written two checkpoints but not its last. Checkpoints are read from the shared storage the worker
    # writes itself; kept checkpoints are only the last two, so the test reads their steps, not their number.
    cluster = LocalCluster(write_space(tmp_path, 160, 20), tmp_path / "out", tmp_path / "shared", "lose")
    run_dir = tmp_path / "shared" / "lose"
    try:
        deadline = time.time() + 300
        worker_id, on_worker, saved = None, None, []
        while time.time() < deadline and cluster.head.poll() is None:
            try:
                worker_id = worker_id or next((n["node_id"] for n in cluster.nodes() if not n["is_head_node"]), None)
                on_worker = on_worker or next((t.trial_id for t in load_run(run_dir).trials
                                               if any(r.get("node_id") == worker_id for r in t.history)), None)
            except Exception:  # noqa: BLE001 - the cluster or the run directory is not up yet
                time.sleep(1)
                continue
            saved = [int(c.name.rsplit("_", 1)[1]) for c in complete_checkpoints(run_dir / "trials" / f"train-{on_worker}")] if on_worker else []
            if saved and max(saved) >= 40:                                   # steps 20 and 40 saved (or later ones)
                break
            time.sleep(0.2)
        assert on_worker and cluster.head.poll() is None, "the worker node never trained"
        assert max(saved) < 160, f"the worker's trial finished before the test could kill its node: {saved}"
        cluster.kill_worker_node()
        log = cluster.head_log()
        assert cluster.head.returncode == 0, log[-4000:]
        run = load_run(run_dir)
        assert [t.state for t in run.trials] == ["TERMINATED", "TERMINATED"]
        moved = next(t for t in run.trials if t.trial_id == on_worker)
        steps = [r["step"] for r in moved.history]
        assert steps[-1] == 160 and steps.count(0) == 1                      # restarted from a checkpoint, not from step 0
        last_there = max(r["step"] for r in moved.history if r.get("node_id") == worker_id)
        assert last_there < 160, steps                                       # the node died mid-trial
        assert {r["node_id"] for r in moved.history if r["step"] > last_there} - {worker_id}   # and the trial finished on the head
    finally:
        cluster.stop()
