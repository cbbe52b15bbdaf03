"""W&B (offline, real run files) and MLflow (a real `mlflow server` on 127.0.0.1) from sweeps and runs."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tune_app.config import HINTS, build_config, load_config
from tune_app.errors import mask_secrets
from tune_app.tracking import SWEEP_PARAMS_TAG

from .conftest import REPO, TINY, grid_space, run_cli
from .ports import owned_by
from .wandb_log import summarize

FAKE_KEY = "wandbkey-SECRET-7f3a9c1e5d"
FAKE_PASSWORD = "mlflowpw-SECRET-42b7e0"
SECRET_ENV = {"WANDB_API_KEY": FAKE_KEY, "MLFLOW_TRACKING_USERNAME": "robot", "MLFLOW_TRACKING_PASSWORD": FAKE_PASSWORD}
SHORT = ["training.steps=10", "training.log_freq=5", "training.eval_freq=5", "training.save_freq=10",
         "training.val_batches=2", "data.demo_episodes=12", "data.demo_episode_len=30"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server (sqlite backend, local artifact store) on 127.0.0.1, on a port that
    the server's own process tree holds (checked by PID: another process may take a "free" port first)."""
    root = tmp_path_factory.mktemp("mlflow")
    for _attempt in range(5):
        port = _free_port()
        proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                                 "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                                 "--artifacts-destination", str(root / "artifacts"), "--workers", "1"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while proc.poll() is None and time.monotonic() < deadline and not owned_by(port, proc.pid):
            time.sleep(0.5)
        if proc.poll() is None and owned_by(port, proc.pid):
            break
        _stop_group(proc)            # it lost the port to another process (or never came up): a new port
    else:
        pytest.fail("mlflow server could not hold a port of its own")
    while True:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2)
            break
        except OSError:
            assert proc.poll() is None, "mlflow server exited"
            assert time.monotonic() < deadline, "mlflow server did not come up"
            time.sleep(0.5)
    yield url, root
    _stop_group(proc)


def _stop_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, 15)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def _files_containing(root: Path, needle: str) -> list[Path]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file():
            try:
                if needle.encode() in path.read_bytes():
                    hits.append(path)
            except OSError:
                continue
    return hits


def test_a_password_in_a_uri_is_masked():
    assert mask_secrets("https://robot:s3cret@mlflow.example/") == "https://robot:***@mlflow.example/"
    cfg = load_config(TINY, ["mlflow.tracking_uri=https://robot:s3cret@host:5000"])
    assert "s3cret" not in json.dumps(cfg.to_dict())


def test_unreachable_tracking_server_is_one_line_exit_2(tmp_path):
    port = _free_port()
    proc = run_cli("run", str(REPO / "search_spaces" / "lr_grid.yaml"), "--storage", str(tmp_path),
                   "--override", "mlflow.enabled=true", "--override", f"mlflow.tracking_uri=http://127.0.0.1:{port}")
    assert proc.returncode == 2, proc.stderr
    assert "cannot reach the MLflow server" in proc.stderr and proc.stderr.count("\n") == 1
    assert not (tmp_path / "lr_grid").exists()


@pytest.fixture(scope="module", params=["fast", "stock"])
def tracked_sweep(mlflow_server, tmp_path_factory, request):
    """The same 2-trial grid, tracked, in fast mode and in stock mode (Ray's own callbacks)."""
    url, _ = mlflow_server
    storage = tmp_path_factory.mktemp(f"tracked-{request.param}")
    space = grid_space(storage, "two", [1.0e-4, 3.0e-4], "ray: {name: tracked}")
    args = ["run", str(space), "--storage", str(storage), "--num-cpus", "2",
            "--override", "wandb.enabled=true", "--override", "wandb.mode=offline", "--override", "wandb.tags=[ci,sweep]",
            "--override", "mlflow.enabled=true", "--override", f"mlflow.tracking_uri={url}",
            "--override", f"mlflow.experiment_name=tracked-sweep-{request.param}"]
    for o in SHORT:
        args += ["--override", o]
    proc = run_cli(*args, env={**SECRET_ENV, "TUNE_APP_FAST": "1" if request.param == "fast" else "0"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert ("stock Ray mode" in proc.stdout) == (request.param == "stock")
    if request.param == "fast":
        assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-5000:]      # trackers shut down quietly
    return storage / "tracked", proc, request.param


def _trained_config(run_dir: Path, trial: str) -> dict:
    """The flat config a trial trained with (its checkpoint's train_config.json); ``trial``: its id or name."""
    trial_id = next(t["trial_id"] for t in map(json.loads, (run_dir / "trials.jsonl").read_text().splitlines())
                    if trial in (t["trial_id"], t["dir"][len(t["trial_id"]) + 1:]))
    saved = next((run_dir / "trials" / f"train-{trial_id}").glob("checkpoint_*/pretrained_model/train_config.json"))
    return build_config(json.loads(saved.read_text()), source=str(saved)).flat()


@pytest.mark.slow
def test_status_of_a_tracked_sweep(tracked_sweep):
    run_dir, _, _ = tracked_sweep
    data = json.loads(run_cli("status", str(run_dir), "--json").stdout)
    assert [t["state"] for t in data["trials"]] == ["TERMINATED"] * 2 and data["best_trial"]
    assert all(t["last_step"] == 10 for t in data["trials"])


@pytest.mark.slow
def test_mlflow_has_one_parent_and_nested_trial_runs(tracked_sweep, mlflow_server):
    from mlflow.tracking import MlflowClient

    url, _ = mlflow_server
    client = MlflowClient(tracking_uri=url)
    mode = tracked_sweep[2]
    exp = client.get_experiment_by_name(f"tracked-sweep-{mode}")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("tune_app.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(parents) == 1 and len(children) == 2
    parent = parents[0]
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert sorted(float(c.data.params["training.lr"]) for c in children) == [1e-4, 3e-4]
    for child in children:          # the whole training config, the swept keys named in a tag
        trained = _trained_config(tracked_sweep[0], child.data.tags["trial_name"])
        assert {k: str(v) for k, v in trained.items() if v != {}} == {k: v for k, v in child.data.params.items() if k in trained}
        assert child.data.tags[SWEEP_PARAMS_TAG] == "training.lr"
    for child in children:
        history = client.get_metric_history(child.info.run_id, "val_loss")
        # fast: stepped by optimizer step; stock: Ray's callback steps by report count
        assert [m.step for m in history] == ([0, 5, 10] if mode == "fast" else [1, 2, 3])
        assert child.info.status == "FINISHED"
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"best_config.yaml", "summary.json", "best_checkpoint"} <= artifacts
    ckpt = {a.path for a in client.list_artifacts(parent.info.run_id, "best_checkpoint/pretrained_model")}
    assert "best_checkpoint/pretrained_model/model.safetensors" in ckpt
    assert parent.info.status == "FINISHED" or client.get_run(parent.info.run_id).info.status == "FINISHED"


@pytest.mark.slow
def test_wandb_offline_run_per_trial_with_metric_history(tracked_sweep):
    run_dir, proc, _ = tracked_sweep
    logs = sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(logs) == 2
    for log in logs:
        run = summarize(log)
        assert run["group"] == "tracked" and run["config"]["training.lr"] in (1e-4, 3e-4)
        # the run's page alone reruns the trial: its config rebuilds exactly the config the trial trained
        assert run["config"]["sweep_params"] == ["training.lr"]
        rebuilt = build_config({}, source="W&B run config", overrides={k: v for k, v in run["config"].items() if k in HINTS})
        assert rebuilt.flat() == _trained_config(run_dir, run["run_id"])
        steps = [row["step"] for row in run["history"] if "val_loss" in row]
        assert steps == [0, 5, 10]
        assert all("loss" in row for row in run["history"] if row.get("step", 0) > 0)
    assert "wandb sync" in proc.stdout


@pytest.mark.slow
def test_no_secret_reaches_any_file(tracked_sweep, mlflow_server):
    run_dir, proc, _ = tracked_sweep
    _, mlflow_root = mlflow_server
    for secret in (FAKE_KEY, FAKE_PASSWORD):
        assert _files_containing(run_dir, secret) == []
        assert _files_containing(mlflow_root, secret) == []
        assert secret not in proc.stdout and secret not in proc.stderr


@pytest.mark.slow
def test_two_worker_train_logs_one_run_per_tracker(mlflow_server, tmp_path):
    from mlflow.tracking import MlflowClient

    url, _ = mlflow_server
    out = tmp_path / "single"
    proc = run_cli("train", "--config", str(TINY), "--num-cpus", "2", "--override", f"training.output_dir={out}",
                   "--override", "ray.num_workers=2", "--override", "wandb.enabled=true", "--override", "wandb.mode=offline",
                   "--override", "mlflow.enabled=true", "--override", f"mlflow.tracking_uri={url}",
                   "--override", "mlflow.experiment_name=single-train", *sum((["--override", o] for o in SHORT), []),
                   env=SECRET_ENV)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    client = MlflowClient(tracking_uri=url)
    runs = client.search_runs([client.get_experiment_by_name("single-train").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "val_loss")] == [0, 5, 10]
    logs = list(out.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(logs) == 1
    assert [r["step"] for r in summarize(logs[0])["history"] if "val_loss" in r] == [0, 5, 10]
    for secret in (FAKE_KEY, FAKE_PASSWORD):
        assert _files_containing(out, secret) == []


@pytest.mark.slow
def test_ctrl_c_finishes_open_wandb_runs_and_says_how_to_resume(tmp_path):
    import signal

    from .wandb_log import records

    space = grid_space(tmp_path, "two", [1.0e-4, 3.0e-4], "ray: {name: interrupted}")
    run_dir = tmp_path / "interrupted"
    proc = subprocess.Popen([sys.executable, "-m", "tune_app", "run", str(space), "--storage", str(tmp_path), "--num-cpus", "2",
                             "--override", "wandb.enabled=true", "--override", "wandb.mode=offline",
                             "--override", "training.steps=400", "--override", "training.log_freq=10"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.monotonic() + 240
    while len(list(run_dir.glob("*/result.json"))) < 2 or not all(
            '"step": 10' in p.read_text() for p in run_dir.glob("*/result.json")):
        assert proc.poll() is None and time.monotonic() < deadline, "both trials should be reporting"
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)                       # Ctrl-C reaches the driver
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 130, out[-2000:]
    assert f"python -m tune_app resume {run_dir}" in out
    logs = sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(logs) == 2
    for log in logs:                                      # each open run was finished, not killed mid-write
        assert any(r.WhichOneof("record_type") == "exit" for r in records(log))
    os.killpg(proc.pid, signal.SIGKILL) if proc.poll() is None else None


@pytest.mark.slow
def test_mlflow_with_a_bucket_run_directory(tmp_path):
    """A URI run directory (file:// goes through pyarrow exactly like s3://) with MLflow's default store:
    one parent run with nested trial runs, closed at the end; store and artifacts end up in the run
    directory, nothing in the current folder's ./mlruns."""
    from mlflow.tracking import MlflowClient

    space = grid_space(tmp_path, "two", [1.0e-4, 3.0e-4], "ray: {name: inbucket}")
    bucket = tmp_path / "bucket"
    work = tmp_path / "work"
    work.mkdir()
    args = ["run", str(space), "--storage", f"file://{bucket}", "--num-cpus", "2", "--override", "mlflow.enabled=true"]
    for o in SHORT:
        args += ["--override", o]
    proc = run_cli(*args, cwd=work)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_dir = bucket / "inbucket"
    assert (run_dir / "mlflow_parent_run_id").is_file() and (run_dir / "mlflow.db").is_file()
    assert not (work / "mlruns").exists()
    client = MlflowClient(tracking_uri=f"sqlite:///{run_dir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("inbucket")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("tune_app.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(parents) == 1 and len(children) == 2 and parents[0].info.status == "FINISHED"
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    assert list((run_dir / "mlflow-artifacts").rglob("model.safetensors"))        # artifacts beside the store
    status = run_cli("status", f"file://{run_dir}", cwd=work)
    assert status.returncode == 0 and status.stdout.count("TERMINATED") == 2, status.stderr[-2000:]
