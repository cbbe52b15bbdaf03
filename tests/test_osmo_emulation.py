"""The OSMO production path end to end, on this machine: the file `osmo render` writes, resolved and run
the way OSMO runs it (tests/osmo_emulator.py), on the robot's data given as the workflow's input.

The sweep must train on the bags of input 0 on every node, deliver its results to {{output}}, survive
its head being killed mid-sweep (OSMO reschedules it; here it is started again with the same
environment) without rerunning a finished trial, and refuse to resume an edited sweep.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from tune_app.cli import main as cli_main
from tune_app.sweep.results import load_run

from .conftest import REPO
from .osmo_emulator import resolve, start
from .raycluster import free_port, pids_matching, short_tmp, stop
from .test_multinode import isolated, kill_group

pytestmark = pytest.mark.slow

PAYLOADS = {"ray-token": {"token": "emulated-ray-token-0123456789abcdef"},
            "wandb": {"wandb_api_key": "wandb-key-EMULATED-0123456789"}}
SPACE = REPO / "tests" / "_tmp_osmo_emulation.yaml"
SPACE_TEXT = ("method: grid\nmetric: {name: val_loss, goal: minimize}\nbase_config: ../configs/act_tiny.yaml\n"
              "parameters:\n  training.lr: {values: [1.0e-4, 3.0e-4, 5.0e-4]}\n"
              "overrides:\n  training.steps: 160\n  training.log_freq: 10\n  training.eval_freq: 20\n  training.save_freq: 20\n"
              "  training.val_batches: 2\n")


def _wait(predicate, timeout_s: float, what: str, procs=()):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        for p in procs:
            assert p.poll() is None, f"{what}: a task exited with {p.returncode}"
        time.sleep(1)
    raise AssertionError(f"timed out: {what}")


def _events(run_dir: Path) -> list[dict]:
    path = run_dir / "trial_events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def test_rendered_workflow_runs_a_sweep_on_the_input_data_survives_a_head_restart_and_delivers(tmp_path, capsys):
    t0 = time.monotonic()
    SPACE.write_text(SPACE_TEXT)
    tmp_head, tmp_worker, tmp_head2, tmp_head3 = short_tmp(), short_tmp(), short_tmp(), short_tmp()
    tasks = []
    try:
        # The robot's data as a user uploads it: bags in a subfolder of the dataset.
        data = tmp_path / "input0"
        assert cli_main(["data", "demo", str(data / "session_a"), "--episodes", "12"]) == 0
        shared = tmp_path / "shared"                                        # the run directory every node sees (NFS)
        wf = tmp_path / "wf.yaml"
        port = free_port()
        rc = cli_main(["osmo", "render", str(SPACE), "--workers", "1", "--image", "local/tune_app:test",
                       "--dataset", "ur10e-demo:v1", "--storage-path", str(shared), "--cpu", "1", "--gpu", "0",
                       "--override", "wandb.enabled=true", "--override", "wandb.mode=offline",
                       "--set", f"app_dir={REPO}", "--set", f"ray_port={port}", "--set", "wait_timeout=240", "-o", str(wf)])
        assert rc == 0, capsys.readouterr().err
        tasks = resolve(wf, tmp_path / "osmo", [data], PAYLOADS)
        head, worker = tasks
        assert head.lead and head.name == "head" and worker.name == "worker-0"
        # Credentials only where they belong: the Ray token everywhere, W&B only on the head that runs the sweep.
        assert head.env["RAY_AUTH_TOKEN"] == worker.env["RAY_AUTH_TOKEN"] == PAYLOADS["ray-token"]["token"]
        assert head.env["WANDB_API_KEY"] == PAYLOADS["wandb"]["wandb_api_key"] and "WANDB_API_KEY" not in worker.env
        assert not any(k.startswith(("AWS_", "MLFLOW_")) for t in tasks for k in t.env)

        common = "--node-ip-address=127.0.0.1 --num-cpus=1 --object-store-memory=100000000"
        base = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "WANDB_", "MLFLOW_"))}
        base.update({"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "RAY_USAGE_STATS_ENABLED": "0",
                     "PYTHONUNBUFFERED": "1", "RAY_gcs_rpc_server_reconnect_timeout_s": "15"})
        head_env = {**base, "RAY_TMPDIR": str(tmp_head), "TUNE_APP_CACHE": str(tmp_path / "node0-cache"), "TUNE_DASHBOARD_PORT": "0",
                    "RAY_START_ARGS": f"{common} --dashboard-port={free_port()} --include-dashboard=true"}
        worker_env = {**base, "RAY_TMPDIR": str(tmp_worker), "TUNE_APP_CACHE": str(tmp_path / "node1-cache"),
                      "JOIN_RETRY_S": "1", "RAY_START_ARGS": f"{common} --node-manager-port={free_port()}"}
        logs = tmp_path / "logs"
        logs.mkdir()
        start(worker, worker_env, wrap=isolated(), log=logs / "worker.log")
        start(head, head_env, log=logs / "head.log")
        run_dir = shared / head.env["SWEEP_NAME"]

        # Kill the head once a trial has finished and another has a checkpoint.
        def finished_and_checkpointed() -> bool:
            try:
                run = load_run(run_dir)
            except Exception:  # noqa: BLE001 - the sweep has not written its state yet
                return False
            done = [t for t in run.trials if t.state == "TERMINATED"]
            going = [t for t in run.trials if t.state != "TERMINATED" and t.checkpoint]
            return bool(done) and bool(going)

        _wait(finished_and_checkpointed, 600, "a finished trial and an unfinished one with a checkpoint", [head.proc])
        finished_before = {t.trial_id for t in load_run(run_dir).trials if t.state == "TERMINATED"}
        os.killpg(head.proc.pid, signal.SIGKILL)                          # the head pod is OOM-killed: exit 137
        for pid in pids_matching(str(tmp_head)):
            os.kill(pid, signal.SIGKILL)
        head.proc.wait(timeout=60)
        assert head.proc.returncode == -signal.SIGKILL

        # OSMO reschedules it: the same environment in a new pod, whose /tmp is empty. (With the old /tmp, `ray start
        # --head` finds the last cluster's address there and refuses to start while the worker's raylet, which
        # outlives a killed head by up to 15 s, still names that address.)
        head_env = {**head_env, "RAY_TMPDIR": str(tmp_head2)}
        start(head, head_env, log=logs / "head.log")
        assert head.proc.wait(timeout=900) == 0, (logs / "head.log").read_text()[-5000:]
        head_log = (logs / "head.log").read_text()
        assert "resuming it" in head_log and "Traceback" not in head_log

        run = load_run(run_dir)
        assert [t.state for t in run.trials] == ["TERMINATED"] * 3
        # Each trial's curve reaches its end, whether it finished, was interrupted, or was resumed from its
        # final checkpoint (the head died before it heard the last report).
        assert [t.last_step for t in run.trials] == [160] * 3, [(t.trial_id, t.last_step) for t in run.trials]
        starts = [e["trial_id"] for e in _events(run_dir) if e["event"] == "start"]
        for trial_id in finished_before:
            assert starts.count(trial_id) == 1, f"finished trial {trial_id} ran again"
        # Every trial trained on the input's bags, on both nodes.
        nodes = {r["node_id"] for t in run.trials for r in t.history if "node_id" in r}
        assert len(nodes) >= 2, nodes
        for trial in run.trials:
            split = json.loads((Path(trial.checkpoint) / "pretrained_model" / "data_split.json").read_text())
            assert split["source"].startswith(f"ROS 2 bags in {data}") and split["episodes"] == 12, split["source"]
        # {{output}} holds what OSMO uploads, and W&B's offline runs stay with the sweep.
        for name in ("summary.json", "report.html", "best_config.yaml", "best/pretrained_model/model.safetensors"):
            assert (head.output / name).is_file(), name
        assert list((run_dir / "wandb").glob("offline-run-*")) and list((head.output / "wandb").glob("offline-run-*"))

        # A resubmit with an edited search space must not resume the old sweep (on a fresh head "pod").
        for pid in pids_matching(str(tmp_head2)):
            os.kill(pid, signal.SIGKILL)
        SPACE.write_text(SPACE_TEXT.replace("5.0e-4]", "5.0e-4, 7.0e-4]"))
        start(head, {**head_env, "NUM_WORKERS": "0", "RAY_TMPDIR": str(tmp_head3)}, log=logs / "head-edited.log")
        assert head.proc.wait(timeout=300) == 2
        edited = (logs / "head-edited.log").read_text()
        assert "--resume-existing" in edited and "--overwrite" in edited and "Traceback" not in edited
        print(f"emulated OSMO sweep: {time.monotonic() - t0:.0f} s wall, trials "
              + ", ".join(f"{t.name}={t.state}@{t.last_step}" for t in run.trials))
    finally:
        SPACE.unlink(missing_ok=True)
        for task in tasks:
            kill_group(task.proc)
        stop([str(tmp_head), str(tmp_head2), str(tmp_head3), str(tmp_worker)], [t.proc for t in tasks if t.proc is not None])
