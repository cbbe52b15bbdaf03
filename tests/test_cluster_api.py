"""Ray Jobs API submit against a real head, and the embedded cluster's dashboard read over HTTP mid-sweep."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from tune_app.sweep.results import load_run

from .conftest import REPO, TINY, run_cli
from .raycluster import RayHead, free_port, pids_matching, ray_env, short_tmp, stop

pytestmark = pytest.mark.slow


def space_in_checkout(name: str, steps: int = 20) -> str:
    """Search spaces for submit must live in the uploaded checkout: a file under tests/ (removed after).
    Not git-ignored on purpose: Ray's working_dir upload skips what .gitignore names."""
    path = REPO / "tests" / f"_tmp_{name}.yaml"
    path.write_text("method: grid\nmetric: {name: val_loss, goal: minimize}\nbase_config: ../configs/act_tiny.yaml\n"
                    "parameters:\n  training.lr: {values: [1.0e-4]}\n"
                    f"overrides:\n  training.steps: {steps}\n  training.log_freq: 10\n  training.eval_freq: 10\n"
                    "  training.save_freq: 10\n  data.demo_episodes: 12\n")
    return str(path)


def get_json(url: str, token: str | None = None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
        return json.load(r)


def test_submit_runs_the_sweep_as_a_ray_job(tmp_path):
    head = RayHead()
    space = space_in_checkout("submit")
    try:
        proc = run_cli("submit", space, "--address", head.dashboard, "--storage", str(tmp_path / "runs"), "--name", "jobsweep",
                       "--follow", env={"RAY_AUTH_MODE": "disabled"}, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        job_id = proc.stdout.split("submitted job ", 1)[1].split()[0]
        assert f"job {job_id}: SUCCEEDED" in proc.stdout and "best:" in proc.stdout        # the job's logs were streamed
        jobs = get_json(f"{head.dashboard}/api/jobs/")
        job = next(j for j in jobs if j["submission_id"] == job_id)
        assert job["status"] == "SUCCEEDED" and "tune_app run tests/_tmp_submit.yaml --address auto" in job["entrypoint"]
        run = load_run(tmp_path / "runs" / "jobsweep")
        assert [t.state for t in run.trials] == ["TERMINATED"] and (tmp_path / "runs" / "jobsweep" / "best").is_dir()
    finally:
        os.unlink(space)
        head.stop()
    assert not pids_matching(str(head.tmp))


def test_submit_without_storage_is_refused(capsys):
    from tune_app.cli import main

    rc = main(["submit", str(REPO / "search_spaces" / "lr_grid.yaml"), "--address", "http://127.0.0.1:1"])
    assert rc == 2 and "give --storage" in capsys.readouterr().err


def test_dashboard_serves_the_sweep_while_it_runs(tmp_path):
    tmp = short_tmp()
    port = free_port()
    space = tmp_path / "space.yaml"
    space.write_text(f"method: grid\nmetric: {{name: val_loss, goal: minimize}}\nbase_config: {TINY}\n"
                     "parameters:\n  training.lr: {values: [1.0e-4]}\noverrides:\n  training.steps: 200\n  data.demo_episodes: 12\n")
    # The embedded cluster's own token authentication, as a user gets it (no RAY_AUTH_* of their own).
    env = {k: v for k, v in ray_env(tmp).items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    proc = subprocess.Popen([sys.executable, "-m", "tune_app", "run", str(space), "--storage", str(tmp_path / "runs"), "--num-cpus", "2",
                             "--dashboard", "--dashboard-port", str(port), "--tune-dashboard-port", "0"], cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    lines = []
    try:
        for line in proc.stdout:                       # the printed URL names the file holding the cluster's token
            lines.append(line)
            if line.startswith("Ray dashboard:"):
                break
        token_file = line.split("paste the content of ", 1)[1].split(",", 1)[0]
        token = open(token_file).read().strip()
        assert oct(os.stat(token_file).st_mode & 0o777) == "0o600"
        with pytest.raises(urllib.error.HTTPError) as refused:          # no token: refused
            get_json(f"{base}/api/jobs/")
        assert refused.value.code == 401
        expected = {"run_trial", "RayTrainWorker", "SynchronizationActor"}
        actors, classes, deadline = [], set(), time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            try:
                actors = get_json(f"{base}/api/v0/actors?limit=200&detail=1", token)["data"]["result"]["result"]
            except OSError:
                actors = []
            classes = {a["class_name"] for a in actors if a["state"] == "ALIVE"}
            names = {a.get("repr_name") for a in actors if a["class_name"] == "run_trial"}
            if expected <= classes:        # the actors come up one after another: wait for the whole set
                break
            time.sleep(1)
        # a trial's Train run, seen live: the trial's process (it hosts the Train controller) and its DDP workers
        assert expected <= classes, classes
        assert names == {"lr=0.0001"}, names                       # the trial's actor is named after the trial
        jobs = get_json(f"{base}/api/jobs/", token)
        assert any(j["type"] == "DRIVER" and j["status"] == "RUNNING" for j in jobs)
        # bound to 127.0.0.1 only
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://{_other_ip()}:{port}/api/version", timeout=3)
        for line in proc.stdout:                                                   # the sweep ends; the dashboard stays
            lines.append(line)
            if "the dashboards stay up at" in line:
                break
        assert get_json(f"{base}/api/version", token)["ray_version"]
        assert f"Ray dashboard: {base}" in "".join(lines)
        assert "tune_app dashboard: http://127.0.0.1:" in "".join(lines)
        proc.send_signal(signal.SIGINT)                                            # Ctrl-C
        rest, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, rest[-2000:]
        assert not os.path.exists(token_file)                                      # the token file goes with the cluster
        assert "Traceback" not in "".join(lines) + rest
    finally:
        stop([str(tmp)], [proc], tmp)


def _other_ip() -> str:
    """This machine's non-loopback address (the dashboard must not answer there)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))
            ip = s.getsockname()[0]
        except OSError:
            ip = "127.0.0.2"
    if ip.startswith("127.") and ip != "127.0.0.2":
        pytest.skip("no non-loopback address to probe")
    return ip
