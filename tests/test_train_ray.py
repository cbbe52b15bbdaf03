"""Real Ray Train runs: 2-worker gloo DDP on a local Ray, checkpoints, restart, CLI errors."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from tune_app.config import load_config
from tune_app.policy.checkpoint import load_policy
from tune_app.train.loop import validate
from tune_app.trainable import MetricsFileCallback, fit_run

from .conftest import REPO, TINY, run_cli

pytestmark = pytest.mark.slow


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def ddp_run(ray_local, tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "run"
    out.mkdir()
    cfg = load_config(TINY, [f"training.output_dir={out}", "training.steps=80", "training.log_freq=20",
                             "training.eval_freq=40", "training.save_freq=40", "training.val_batches=null",
                             "ray.num_workers=2"])
    result = fit_run(cfg, out.parent, out.name, ray_local.num_gpus, callbacks=[MetricsFileCallback(out / "metrics.jsonl")])
    return cfg, result, _records(out / "metrics.jsonl")


def test_two_worker_ddp_lowers_validation_loss(ddp_run):
    _, result, records = ddp_run
    assert result.error is None
    assert [r["step"] for r in records] == [0, 20, 40, 60, 80]
    assert records[-1]["val_loss"] < 0.9 * records[0]["val_loss"]
    for key in ("loss", "l1_loss", "kl_loss", "lr", "step", "val_loss", "val_l1", "samples_per_s"):
        assert key in records[-1]


def test_ranks_hold_identical_parameters(ddp_run):
    _, _, records = ddp_run
    spreads = [r["param_spread"] for r in records if "param_spread" in r]
    assert len(spreads) == 2 and all(s == 0.0 for s in spreads)


def test_checkpoint_reloads_to_identical_predictions(ddp_run):
    cfg, result, records = ddp_run
    assert os.path.basename(result.checkpoint.path) == "checkpoint_000080"
    policy = load_policy(result.checkpoint.path)
    from tune_app.data import prepare

    _, val_ds = prepare(cfg).datasets(cfg.model.chunk_size)
    # The run validated on two ranks (each a share of the frames); one process over all frames must agree.
    again = validate(policy.model, val_ds, cfg, torch.device("cpu"), 0, 1, contextlib.nullcontext)
    assert again["val_loss"] == pytest.approx(records[-1]["val_loss"], rel=1e-5)


def test_train_restarted_after_kill_continues_from_its_checkpoint(tmp_path):
    out = tmp_path / "run"
    args = ["train", "--config", str(TINY), "--num-cpus", "2", "--override", f"training.output_dir={out}",
            "--override", "training.steps=200", "--override", "training.save_freq=25", "--override", "training.log_freq=25"]
    log = tmp_path / "first.log"
    with log.open("w") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "tune_app", *args], cwd=REPO, start_new_session=True,
                                stdout=sink, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    try:
        while not (out / "checkpoint_000050").is_dir():
            assert proc.poll() is None, f"train exited before its second checkpoint:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.5)
        time.sleep(1.0)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    before = _records(out / "metrics.jsonl")
    saved = max(r["step"] for r in before if "checkpoint_path" in r)

    again = run_cli(*args)
    assert again.returncode == 2 and "--resume" in again.stderr      # no silent mixing of runs
    resumed = run_cli(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming the run in" in resumed.stdout
    after = _records(out / "metrics.jsonl")[len(before):]
    # continued from the checkpoint, not from step 0 (the worker's own "resumed from checkpoint at step N"
    # line reaches stdout through Ray's log forwarding, which does not promise to deliver it before exit)
    assert after[0]["step"] == saved + 25 and after[-1]["step"] == 200
    assert "final checkpoint:" in resumed.stdout and "checkpoint_000200" in resumed.stdout


def test_ddp_trains_on_ros_bags_from_the_shared_cache(ray_local, tmp_path):
    """Demo bags -> the cache (prepared once, as `run`/`train` do before Ray) -> 2 DDP ranks map it."""
    from tune_app.data.bagwriter import write_demo_bags
    from tune_app.data.demo import make_demo
    from tune_app.data.sources import prepare_cache

    write_demo_bags(tmp_path / "bags", load_config(TINY), make_demo(8, 30, (48, 64)), storage="mcap")
    out = tmp_path / "run"
    cfg = load_config(TINY, [f"data.bag_dir={tmp_path / 'bags'}", f"data.cache_dir={tmp_path / 'cache'}",
                             f"training.output_dir={out}", "training.steps=10", "training.save_freq=10", "ray.num_workers=2"])
    _, built, folder = prepare_cache(cfg)
    created = json.loads((folder / "meta.json").read_text())["created"]
    result = fit_run(cfg, out.parent, out.name, ray_local.num_gpus)
    assert built and result.error is None
    assert json.loads((folder / "meta.json").read_text())["created"] == created          # ranks mapped, none rebuilt
    assert [p.name for p in (tmp_path / "cache").iterdir() if p.is_dir()] == [folder.name]
    split = json.loads((out / "checkpoint_000010" / "pretrained_model" / "data_split.json").read_text())
    assert split["source"].startswith("ROS 2 bags") and split["episodes"] == 8 and len(split["val_episodes"]) == 1


STATE_PROBE = """
import ray
from tune_app.cluster import connect as cluster
from ray.train.v2._internal.state.util import is_actor_alive

conn = cluster.connect(num_cpus=1, log_to_driver=False)

@ray.remote(num_cpus=0)
class Probe:
    def alive(self, actor_id):
        return bool(is_actor_alive(actor_id, timeout=10))

probe = Probe.remote()
print("ALIVE", ray.get(probe.alive.remote(probe._actor_id.hex())))
cluster.shutdown()
"""


def test_embedded_cluster_state_api_is_its_own_even_when_the_parent_set_another():
    """Ray Train's placement-group cleaner asks the State API whether the controller lives; an address
    inherited from a parent process (here a dead one) made it answer "no" and remove a live run's workers."""
    proc = subprocess.run([sys.executable, "-c", STATE_PROBE], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "RAY_API_SERVER_ADDRESS": "http://127.0.0.1:9"})
    assert "ALIVE True" in proc.stdout, proc.stderr[-3000:]
