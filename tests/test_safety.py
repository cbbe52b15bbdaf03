"""Safety without Ray: what --overwrite may delete, checkpoints that can be trusted, a full disk, secrets."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tune_app.cli import main as cli_main
from tune_app.config import load_config
from tune_app.data.demo import make_demo
from tune_app.data.lerobot_writer import write_lerobot_dataset
from tune_app.errors import UserError, as_user_error, find_user_error, mask_secrets
from tune_app.policy.checkpoint import load_training_state
from tune_app.policy.manifest import MANIFEST, complete_checkpoints, is_complete, write_manifest
from tune_app.sweep.results import load_run
from tune_app.sweep.rundir import check_run_dir, claim_run_dir
from tune_app.sweep.space import load_sweep
from tune_app.train.loop import run
from tune_app.train.session import LocalSession

from .conftest import REPO, TINY

SHORT = ["training.save_freq=10", "training.eval_freq=10", "training.log_freq=10", "data.demo_episodes=6",
         "data.demo_episode_len=20", "training.device=cpu"]


def _train(out: Path, steps: int, capsys=None) -> LocalSession:
    cfg = load_config(TINY, [f"training.steps={steps}", *SHORT])
    session = LocalSession("cpu", out)
    run(cfg, session, progress=True)
    return session


# ---------------------------------------------------------------- run names and --overwrite


@pytest.mark.parametrize("name", ["..", ".", "../x", "a/b", ".hidden", "-flag", "a b", 'a"b', "a\nb", "", "x" * 65])
def test_bad_run_names_are_refused(name):
    with pytest.raises(UserError, match="--name"):
        load_sweep(REPO / "search_spaces" / "lr_grid.yaml", name=name)


def test_overwrite_deletes_only_a_tune_app_sweep_below_the_storage(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    storage = tmp_path / "runs"
    (storage / "lr_grid").mkdir(parents=True)
    (storage / "lr_grid" / "sweep.json").write_text(json.dumps({"name": "lr_grid", "parameters": ["training.lr"]}))
    (storage / "lr_grid" / "old.txt").write_text("old trial")
    (storage / "keep.txt").write_text("a sibling")
    (tmp_path / "mine.txt").write_text("above the storage")
    sweep = load_sweep(REPO / "search_spaces" / "lr_grid.yaml", storage_path=str(storage))
    with pytest.raises(UserError, match="--overwrite"):
        check_run_dir(sweep, overwrite=False)
    run_dir = check_run_dir(sweep, overwrite=True)
    claim_run_dir(run_dir, overwrite=True)
    assert (storage / "lr_grid").is_dir() and not (storage / "lr_grid" / "old.txt").exists()
    assert (storage / "keep.txt").is_file() and (tmp_path / "mine.txt").is_file()


def test_overwrite_refuses_a_folder_that_is_not_a_sweep(tmp_path):
    (tmp_path / "lr_grid").mkdir()
    (tmp_path / "lr_grid" / "thesis.tex").write_text("years of work")
    sweep = load_sweep(REPO / "search_spaces" / "lr_grid.yaml", storage_path=str(tmp_path))
    with pytest.raises(UserError, match="not a tune_app sweep"):
        check_run_dir(sweep, overwrite=True)
    assert (tmp_path / "lr_grid" / "thesis.tex").is_file()


@pytest.mark.parametrize("name", ["..", "."])
def test_dotted_names_delete_nothing_from_the_cli(name, tmp_path, monkeypatch, capsys):
    """The reported data loss: `run --name .. --overwrite` deleted the current directory's files."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    for folder in (tmp_path, tmp_path / "runs"):
        (folder / "notes.txt").write_text("keep me")
    rc = cli_main(["run", str(REPO / "search_spaces" / "lr_grid.yaml"), "--name", name, "--overwrite"])
    assert rc == 2 and "--name" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").is_file() and (tmp_path / "runs" / "notes.txt").is_file()


def test_train_overwrite_leaves_a_folder_tune_app_did_not_make(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "checkpoint_000010").mkdir()                      # looks like a run, but tune_app never marked it
    (out / "results.csv").write_text("someone's results")
    rc = cli_main(["train", "--config", str(TINY), "--override", f"training.output_dir={out}", "--overwrite"])
    assert rc == 2 and "did not write" in capsys.readouterr().err
    assert (out / "results.csv").is_file()


# ---------------------------------------------------------------- checkpoints


def test_every_checkpoint_has_a_manifest_that_a_cut_short_copy_fails(tmp_path):
    session = _train(tmp_path / "run", 20)
    last = session.checkpoints[-1]
    assert (last / MANIFEST).is_file() and is_complete(last)
    weights = last / "pretrained_model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])          # a partly copied file
    assert not is_complete(last)
    assert complete_checkpoints(tmp_path / "run") == [session.checkpoints[0]]
    (last / MANIFEST).unlink()                               # the manifest never arrived
    assert not is_complete(last)


def test_resume_falls_back_to_the_newest_complete_checkpoint_and_says_which(tmp_path, capsys):
    out = tmp_path / "run"
    _train(out, 20)
    state = out / "checkpoint_000020" / "training_state" / "state.pt"
    state.write_bytes(state.read_bytes()[:100])              # the last checkpoint was cut short
    capsys.readouterr()
    session = _train(out, 30)
    printed = capsys.readouterr().out
    assert "resumed from checkpoint checkpoint_000010 at step 10" in printed and "checkpoint_000020" in printed
    assert [r["step"] for r in session.reports] == [20, 30]


def test_a_run_resumed_from_its_final_checkpoint_reports_where_it_ended(tmp_path):
    """The driver can die after the last checkpoint but before it heard the last report: the resumed
    run has no step left, and its one report (step = the end, validation metrics) is the trial's last row."""
    out = tmp_path / "run"
    first = _train(out, 20)
    again = _train(out, 20)
    assert [r["step"] for r in again.reports] == [20] and not again.checkpoints
    assert again.reports[0]["val_loss"] == pytest.approx(first.reports[-1]["val_loss"], rel=1e-5)


def test_resume_skips_a_checkpoint_whose_state_would_run_code(tmp_path, capsys):
    """state.pt loads with weights_only: a pickle that runs code on load is refused, not executed."""
    out = tmp_path / "run"
    _train(out, 20)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    last = out / "checkpoint_000020"
    (last / "training_state" / "state.pt").write_bytes(pickle.dumps({"step": Evil()}))
    write_manifest(last)                                     # complete as far as files go
    with pytest.raises(pickle.UnpicklingError):
        load_training_state(last)
    capsys.readouterr()
    _train(out, 30)
    assert "resumed from checkpoint checkpoint_000010" in capsys.readouterr().out
    assert not marker.exists()


def test_rng_state_round_trips_through_a_weights_only_load(tmp_path):
    from tune_app.train.loop import rng_state, set_rng_state

    torch.manual_seed(3)
    state = rng_state()
    torch.save({"rng": [state]}, tmp_path / "s.pt")
    expected = (torch.rand(3), __import__("random").random(), __import__("numpy").random.rand())
    set_rng_state(torch.load(tmp_path / "s.pt", weights_only=True)["rng"][0])
    assert torch.equal(torch.rand(3), expected[0])
    assert __import__("random").random() == expected[1] and __import__("numpy").random.rand() == expected[2]


def test_status_never_picks_a_partly_copied_checkpoint(tmp_path):
    run_dir = tmp_path / "sw"
    trial_dir = run_dir / "trials" / "train-t1"
    session = _train(trial_dir, 20)
    partial = trial_dir / "checkpoint_000030"
    shutil.copytree(session.checkpoints[-1] / "pretrained_model", partial / "pretrained_model")   # no manifest
    (run_dir / "sweep.json").write_text(json.dumps({"name": "sw", "metric": "val_loss", "mode": "min", "parameters": []}))
    from tune_app.sweep.results import _latest_checkpoint

    assert _latest_checkpoint(run_dir, "t1") == str(trial_dir / "checkpoint_000020")
    assert load_run(run_dir).trials == []


# ---------------------------------------------------------------- a full disk while the cache is built


@pytest.fixture()
def small_disk(tmp_path):
    """A 3 MiB tmpfs (root can mount one); else the folder with a 3 MiB file-size limit for child processes."""
    mount = tmp_path / "small"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True)
    yield mount, proc.returncode == 0
    if proc.returncode == 0:
        subprocess.run(["umount", str(mount)], check=False)


def test_a_full_disk_while_preparing_data_is_one_line_and_leaves_nothing(small_disk, tmp_path):
    mount, is_tmpfs = small_disk
    source = tmp_path / "ds"
    write_lerobot_dataset(source, make_demo(6, 40, (96, 128)), fps=30)     # ~9 MiB of frames once decoded
    code = ("import resource, signal, sys\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            f"{'' if is_tmpfs else 'resource.setrlimit(resource.RLIMIT_FSIZE, (3 << 20, 3 << 20))'}\n"
            "from tune_app.cli import main\n"
            f"sys.exit(main(['data', 'prepare', '{TINY}', '--override', 'data.lerobot_root={source}', "
            f"'--override', 'data.cache_dir={mount}/cache', '--override', 'conventions.image_resize=[96, 128]']))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "frame/s" not in line and "%|" not in line]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and len(lines) == 1 and "data.cache_dir" in lines[0], proc.stderr[-3000:]
    assert not (mount / "cache").exists() or not any((mount / "cache").iterdir())


# ---------------------------------------------------------------- errors and secrets


def test_secrets_are_masked_in_every_message(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "wandb-secret-123456")
    text = "failed: https://robot:hunter2@mlflow.example/api with key wandb-secret-123456"
    masked = mask_secrets(text)
    assert "hunter2" not in masked and "wandb-secret-123456" not in masked and "robot:***@" in masked


def test_mlflow_credentials_in_the_uri_move_to_the_environment(monkeypatch):
    from tune_app.tracking import mlflow_uri

    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    cfg = load_config(TINY, ["mlflow.tracking_uri=https://robot:hunter2@mlflow.example:5000"])
    assert mlflow_uri(cfg, ".") == "https://mlflow.example:5000"
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "robot" and os.environ["MLFLOW_TRACKING_PASSWORD"] == "hunter2"
    assert "hunter2" not in json.dumps(cfg.to_dict())


def test_user_wandb_mode_wins(monkeypatch):
    import importlib

    import tune_app.tracking as tracking

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    importlib.reload(tracking)
    try:
        assert tracking.wandb_mode(load_config(TINY, ["wandb.enabled=true", "wandb.mode=online"])) == "offline"
    finally:
        monkeypatch.delenv("WANDB_MODE")
        importlib.reload(tracking)


def test_a_user_error_inside_ray_train_worker_failures_is_found():
    from ray.train.v2.api.exceptions import WorkerGroupError

    inner = UserError("training.batch_size (9) is too large")
    wrapped = WorkerGroupError("Training failed", {0: RuntimeError("rank 0"), 1: inner})
    assert find_user_error(wrapped) is inner
    assert as_user_error(OSError(28, "No space left on device", "/data/cache")).args[0].startswith("/data/cache: no space")
    assert as_user_error(ValueError("a bug")) is None


def test_submit_uploads_only_tracked_files_and_the_named_ones(tmp_path):
    from tune_app.cluster.submit import upload_list

    secret = REPO / ".env_test_untracked"
    secret.write_text("AWS_SECRET_ACCESS_KEY=x")
    space = REPO / "tests" / "_tmp_upload_space.yaml"
    space.write_text("x: 1\n")
    try:
        files = upload_list(REPO, [space])
    finally:
        secret.unlink()
        space.unlink()
    assert ".env_test_untracked" not in files and "tests/_tmp_upload_space.yaml" in files
    assert "tune_app/cli.py" in files and not any(f.startswith((".venv/", ".git/")) for f in files)


SIGTERM_NOISE = """\
\x1b[36m(run_trial pid=12019)\x1b[0m Exception ignored in: <function WeakSet.__init__.<locals>._remove at 0x7f449ee66480>
\x1b[36m(run_trial pid=12019)\x1b[0m Traceback (most recent call last):
\x1b[36m(run_trial pid=12019)\x1b[0m   File "/usr/lib/python3.11/_weakrefset.py", line 39, in _remove
\x1b[36m(run_trial pid=12019)\x1b[0m     def _remove(item, selfref=ref(self)):
\x1b[36m(run_trial pid=12019)\x1b[0m 
\x1b[36m(run_trial pid=12019)\x1b[0m   File "/x/ray/_private/worker.py", line 1063, in sigterm_handler
\x1b[36m(run_trial pid=12019)\x1b[0m     raise_sys_exit_with_custom_error_message(
\x1b[36m(run_trial pid=12019)\x1b[0m SystemExit: 1
"""


def test_the_driver_drops_only_rays_sigterm_noise_from_worker_output():
    """The block Ray forwards when its SIGTERM handler fires inside a weakref callback is dropped; a
    worker's real traceback, and everything else, is printed as it came."""
    import io

    from tune_app.cluster.ray_output import WorkerOutputFilter

    real_error = SIGTERM_NOISE.replace("sigterm_handler", "train_step").replace("SystemExit: 1", "SystemExit: 3")
    other = "\x1b[36m(RayTrainWorker pid=7)\x1b[0m step 10/20 | loss 1.0\nplain driver line\n"
    out = io.StringIO()
    stream = WorkerOutputFilter(out)
    for chunk in (other[:17], other[17:], SIGTERM_NOISE, real_error):     # writes split anywhere
        stream.write(chunk)
    stream.flush()
    assert out.getvalue() == other + real_error
