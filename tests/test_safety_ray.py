"""Safety on a real local Ray: who can join the embedded cluster, user errors raised inside workers,
a cut-short checkpoint when a Train run resumes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tune_app.config import load_config
from tune_app.errors import UserError, find_user_error
from tune_app.sweep.run import run_sweep
from tune_app.sweep.space import load_sweep

from .conftest import TINY, grid_space, run_cli

pytestmark = pytest.mark.slow

JOIN = "import ray, sys; ray.init(address=sys.argv[1]); print('JOINED', ray.cluster_resources().get('CPU'))"


def _join(address: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", JOIN, address], env=env, capture_output=True, text=True, timeout=240)


def test_embedded_cluster_rejects_a_driver_without_its_token(ray_local):
    import ray

    assert os.environ.get("RAY_AUTH_TOKEN"), "the embedded cluster runs with a token of its own"
    had_token_file = (Path.home() / ".ray" / "auth_token").exists()
    port = ray.get_runtime_context().gcs_address.rsplit(":", 1)[1]
    other = f"127.0.0.2:{port}"                    # another address of this machine, not the one Ray printed
    outsider = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_TOKEN", "RAY_ADDRESS")}
    for env in ({**outsider, "RAY_AUTH_MODE": "disabled"}, {**outsider, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "f" * 64}):
        proc = _join(other, env)
        assert proc.returncode != 0 and "JOINED" not in proc.stdout
        assert "InvalidAuthToken" in proc.stderr or "Authentication" in proc.stderr, proc.stderr[-2000:]
    # The same address with the cluster's token joins: it was the token that kept the others out.
    proc = _join(other, {**outsider, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": os.environ["RAY_AUTH_TOKEN"]})
    assert proc.returncode == 0 and "JOINED" in proc.stdout, proc.stderr[-2000:]
    assert (Path.home() / ".ray" / "auth_token").exists() == had_token_file      # no token written to ~/.ray


def test_a_user_error_inside_the_workers_of_every_trial_is_one_user_error(ray_local, tmp_path):
    """What only a worker can see (here: a batch larger than the data, past the driver's own check)
    comes back as the UserError it was, not as a failed sweep with a traceback."""
    space = grid_space(tmp_path, "tobig", [1.0e-4], "overrides: {training.batch_size: 100000, training.steps: 5}")
    sweep = load_sweep(space, storage_path=str(tmp_path / "runs"))
    with pytest.raises(UserError, match="every trial failed: training.batch_size"):
        run_sweep(sweep, ray_local)


def test_a_user_error_inside_a_train_worker_is_found_in_rays_error(ray_local, tmp_path):
    from tune_app.trainable import fit_run

    cfg = load_config(TINY, ["training.batch_size=100000", "training.steps=5"])
    with pytest.raises(Exception) as failure:
        fit_run(cfg, tmp_path, "run", 0)
    found = find_user_error(failure.value)
    assert found is not None and "training.batch_size (100000)" in str(found)


def test_train_resume_falls_back_from_a_cut_short_last_checkpoint(tmp_path):
    out = tmp_path / "out"
    common = ["train", "--config", str(TINY), "--num-cpus", "2", "--override", f"training.output_dir={out}",
              "--override", "training.save_freq=10", "--override", "training.eval_freq=10", "--override", "training.log_freq=10",
              "--override", "data.demo_episodes=12"]
    first = run_cli(*common, "--override", "training.steps=20")
    assert first.returncode == 0, first.stderr[-3000:]
    state = out / "checkpoint_000020" / "training_state" / "state.pt"
    state.write_bytes(state.read_bytes()[:100])
    second = run_cli(*common, "--override", "training.steps=30", "--resume")
    text = second.stdout + second.stderr
    assert second.returncode == 0, text[-3000:]
    assert "resumed from checkpoint checkpoint_000010 at step 10; skipped incomplete or unreadable checkpoint_000020" in text
    assert "Traceback" not in text
