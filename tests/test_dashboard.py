"""The live sweep dashboard: its JSON matches `status --json`, it binds where told, it draws in a real
browser (scheduler rungs, parameter importance), and it follows a real ASHA sweep as it runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from .browser import Browser
from .conftest import REPO, TINY, run_cli

LRS = [1e-5, 3e-5, 1e-4, 3e-4, 1e-3]


def _fake_sweep(root: Path, name: str = "dash") -> Path:
    """A run directory as a finished ASHA sweep leaves it (5 trials, one stopped at rung 1), written by hand."""
    run = root / name
    run.mkdir(parents=True)
    (run / "sweep.json").write_text(json.dumps({
        "name": name, "method": "grid", "metric": "val_loss", "mode": "min", "parameters": ["training.lr", "training.kl_weight"],
        "total_steps": 8, "raw": {"early_terminate": {"type": "hyperband", "min_iter": 2, "eta": 2}}}))
    rows = []
    for i, lr in enumerate(LRS):
        trial_id, kl = f"t{i}", [1, 10][i % 2]
        stopped = i == 4
        rows.append({"trial_id": trial_id, "status": "TERMINATED", "params": {"training.lr": lr, "training.kl_weight": kl},
                     "dir": f"{trial_id}_lr={lr}"})
        (run / f"{trial_id}_lr={lr}").mkdir()
        history = [{"step": s, "loss": 1.0 / (s + 1), "val_loss": 0.5 + i * 0.1 - s * 0.01 + kl * 0.001, "lr": lr,
                    "node_ip": "10.0.0.7", "pid": 100 + i, "time_total_s": 3.0 * s, "timestamp": 1_700_000_000 + s}
                   for s in ((0, 2) if stopped else (0, 2, 4, 6, 8))]
        (run / f"{trial_id}_lr={lr}" / "result.json").write_text("".join(json.dumps(h) + "\n" for h in history))
    (run / "trials.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "rungs.jsonl").write_text(
        json.dumps({"trial_id": "t0", "rung": 0, "milestone": 2, "step": 2, "metric": 0.481, "cutoff": None, "below_cutoff": False,
                    "stopped": False}) + "\n" +
        json.dumps({"trial_id": "t4", "rung": 0, "milestone": 2, "step": 2, "metric": 0.881, "cutoff": 0.6, "below_cutoff": True,
                    "stopped": True}) + "\n")
    return run


class Served:
    """``python -m tune_app dashboard`` in a subprocess, on a port it picks (0)."""

    def __init__(self, run_dir: Path, *args: str):
        self.proc = subprocess.Popen([sys.executable, "-m", "tune_app", "dashboard", str(run_dir), "--port", "0", *args],
                                     cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        line = self.proc.stdout.readline()
        assert "tune_app dashboard: http://" in line, line + self.proc.stdout.read()
        self.url = line.split()[2]
        self.port = int(self.url.rsplit(":", 1)[1].strip("/"))

    def get(self, path: str, host: str | None = None):
        url = self.url if host is None else f"http://{host}:{self.port}/"
        with urllib.request.urlopen(url + path, timeout=30) as r:
            return r.read().decode()

    def close(self):
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    """Screenshots of the page, kept under the pytest temp dir whatever the tests' outcome (a passed test's
    own tmp_path is removed, see pyproject's tmp_path_retention_policy)."""
    folder = tmp_path_factory.getbasetemp() / "dashboard-screenshots"
    folder.mkdir(exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    run = _fake_sweep(tmp_path_factory.mktemp("dash"))
    server = Served(run)
    yield run, server
    server.close()


def test_the_json_endpoint_is_status_json(served):
    run, server = served
    status = json.loads(run_cli("status", str(run), "--json").stdout)
    assert json.loads(server.get("api/status")) == status          # this process's answer: the sweep's own trials
    data = json.loads(server.get("api/sweep"))
    assert [t["trial_id"] for t in data["trials"]] == [t["trial_id"] for t in status["trials"]]
    assert data["best_trial"] == status["best_trial"] == "t0"
    stopped = next(t for t in data["trials"] if t["trial_id"] == "t4")
    assert stopped["state"] == "STOPPED EARLY" and stopped["stopped_at"]["cutoff"] == 0.6
    assert stopped["node"] == "10.0.0.7" and stopped["elapsed_s"] == 6.0
    importance = data["importance"]                                 # 4 trials ran to the end: enough
    assert importance["finished"] == 4 and set(importance["importances"]) == {"training.lr", "training.kl_weight"}
    assert sum(importance["importances"].values()) == pytest.approx(1.0)


def test_it_binds_only_the_address_it_is_given(served, tmp_path):
    _, server = served
    with pytest.raises(urllib.error.URLError):
        server.get("api/status", host="127.0.0.2")                # loopback, but not the address it listens on
    other = Served(_fake_sweep(tmp_path, "elsewhere"), "--host", "127.0.0.2")
    try:
        assert json.loads(other.get("api/status", host="127.0.0.2"))["name"] == "elsewhere"
        with pytest.raises(urllib.error.URLError):
            other.get("api/status", host="127.0.0.1")
    finally:
        other.close()


def test_a_folder_that_is_not_a_sweep_is_one_line(tmp_path):
    proc = run_cli("dashboard", str(tmp_path), "--port", "0")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "not a tune_app sweep directory" in proc.stderr


def test_page_draws_rungs_importance_and_the_stopped_trial_in_chromium(served, chromium, shots):
    _, server = served
    browser = Browser(chromium, server.url)
    try:
        browser.wait_until("document.body.dataset.rendered === 'ok'", 60)
        assert browser.eval("document.body.dataset.errors || ''") == ""
        assert browser.eval("document.querySelectorAll('#rungs .rung').length") == 1
        assert "stopped at rung 1 (step 2): val_loss 0.881, cut-off 0.6" in browser.eval("document.getElementById('trials').innerText")
        assert browser.eval("document.querySelectorAll('svg[data-chart=importance] rect.bar').length") == 2
        assert browser.eval("document.querySelector('#trials tr.best').dataset.trial") == "t0"
        browser.screenshot(shots / "dashboard-fake-finished.png")
    finally:
        browser.close()


@pytest.mark.slow
def test_watching_an_asha_sweep_live(tmp_path, chromium, shots):
    """4 trials under ASHA, served by `run --dashboard`: the page changes by itself as trials report,
    shows the rung table once ASHA stops a trial, names the trials in Ray's dashboard, and marks the
    best trial at the end."""
    space = tmp_path / "asha.yaml"
    space.write_text("method: grid\nmetric: {name: val_loss, goal: minimize}\n"
                     f"base_config: {TINY}\nparameters:\n  training.lr: {{values: [3.0e-4, 1.0e-7, 1.0e-3, 1.0e-8]}}\n"
                     "early_terminate: {type: hyperband, min_iter: 4, eta: 2}\n"
                     "overrides: {training.steps: 24, training.log_freq: 4, training.eval_freq: 4, training.save_freq: 24}\n")
    proc = subprocess.Popen([sys.executable, "-m", "tune_app", "run", str(space), "--storage", str(tmp_path / "runs"),
                             "--num-cpus", "2", "--dashboard", "--tune-dashboard-port", "0", "--dashboard-port", "0"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    try:
        while not any(line.startswith("tune_app dashboard: ") for line in lines):
            line = proc.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
        url = next(line for line in lines if line.startswith("tune_app dashboard: ")).split()[2]
        ray_url = next(line for line in lines if line.startswith("Ray dashboard: ")).split()[2]
        words = next(line for line in lines if line.startswith("Ray dashboard: ")).split()
        token_file = next((w.rstrip(",.)") for w in words if w.rstrip(",.)").endswith("auth_token")), None)
        import threading

        threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True).start()
        browser = Browser(chromium, url)
        try:
            seen, rung_seen, named, linked = set(), False, set(), False
            deadline = time.monotonic() + 480
            while True:
                state = browser.eval("JSON.stringify({steps: document.body.dataset.steps, trials: document.body.dataset.trials,"
                                     " updates: document.body.dataset.updates, running: document.body.dataset.inProgress,"
                                     " rungs: document.querySelectorAll('#rungs .rung').length,"
                                     " stopped: document.querySelectorAll('#rungs td.cut').length,"
                                     " links: document.querySelectorAll('#trials td.name a').length,"
                                     " best: (document.querySelector('#trials tr.best') || {dataset: {}}).dataset.trial || null})")
                state = json.loads(state or "{}")
                if state.get("steps") is not None:
                    seen.add((state["trials"], state["steps"]))
                if state.get("stopped"):
                    if not rung_seen:
                        browser.screenshot(shots / "dashboard-asha-running.png")
                    rung_seen = True
                linked = linked or bool(state.get("links"))
                if state.get("running") == "true" and not named:
                    named |= _trial_actor_names(ray_url, token_file)
                if state.get("running") == "false" and state.get("best") and int(state.get("updates") or 0) > 0:
                    break
                assert proc.poll() is None and time.monotonic() < deadline, (state, "".join(lines[-40:]))
                time.sleep(1.0)
            assert len(seen) >= 2, seen                          # the page changed by itself, no reload
            assert rung_seen, "the rung table never showed a stopped trial"
            assert linked, "no trial row linked to Ray's dashboard"
            assert named & {"lr=0.0003", "lr=1e-07", "lr=0.001", "lr=1e-08"}, named
            summary = json.loads((tmp_path / "runs" / "asha" / "summary.json").read_text())
            assert state["best"] == summary["best_trial"]
            browser.screenshot(shots / "dashboard-asha-done.png")
        finally:
            browser.close()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)                      # Ctrl-C ends the held dashboards
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, "".join(lines[-40:])
    print(f"screenshots: {shots}")


def _trial_actor_names(ray_url: str, token_file: str | None) -> set[str]:
    """The names Ray's own dashboard gives the live actors (its state API, as its Actors page reads it)."""
    request = urllib.request.Request(ray_url.rstrip("/") + "/api/v0/actors?detail=1&limit=1000")
    if token_file:
        request.add_header("Authorization", f"Bearer {Path(token_file).read_text().strip()}")
    try:
        with urllib.request.urlopen(request, timeout=20) as r:
            actors = json.load(r)["data"]["result"]["result"]
    except (urllib.error.URLError, KeyError, ValueError):
        return set()
    return {a.get("repr_name") for a in actors if a.get("repr_name")}
