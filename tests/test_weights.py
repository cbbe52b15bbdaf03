"""Pretrained backbone weights: downloaded once per node from a URL (a local server here), hash checked.

The server stands in for download.pytorch.org (``TUNE_APP_BACKBONE_URL``); the weights are a real
ResNet-18 state dict with torchvision's parameter names, named as torchvision names its files.
"""

import hashlib
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tune_app.config import load_config
from tune_app.errors import UserError
from tune_app.policy.act import ACTPolicy
from tune_app.policy.backbone import ResNet18Trunk

from .conftest import REPO, TINY, grid_space, run_cli
from .files_server import FilesServer


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A server with good weights (``resnet18-<sha8>.pth``) and a file whose name promises another hash."""
    folder = tmp_path_factory.mktemp("mirror")
    torch.manual_seed(7)
    state = {**ResNet18Trunk().state_dict(), "fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}
    torch.save(state, folder / "weights.pth")
    digest = hashlib.sha256((folder / "weights.pth").read_bytes()).hexdigest()
    good = f"resnet18-{digest[:8]}.pth"
    (folder / "weights.pth").rename(folder / good)
    (folder / "resnet18-deadbeef.pth").write_bytes((folder / good).read_bytes())
    server = FilesServer(folder, delay_s=1.0)
    yield server, good, state
    server.close()


def _env(tmp_path, url: str) -> dict:
    return {"TORCH_HOME": str(tmp_path / "torch"), "TUNE_APP_BACKBONE_URL": url}


def test_concurrent_fetches_download_once_and_both_get_the_file(served, tmp_path):
    server, good, state = served
    before = server.gets[f"/{good}"]
    procs = [subprocess.Popen([sys.executable, "-m", "tune_app", "weights", "fetch"], cwd=REPO, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **_env(tmp_path, server.url(good))})
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert server.gets[f"/{good}"] - before == 1                              # one download for the node
    target = tmp_path / "torch" / "hub" / "checkpoints" / good
    assert sorted(o.splitlines()[-1] for o, _ in outs) == [f"ResNet-18 ImageNet weights: {target} (already in the cache)",
                                                           f"ResNet-18 ImageNet weights: {target} (downloaded)"]
    assert sorted(p.name for p in target.parent.iterdir()) == [good]          # no lock or temporary file left
    assert torch.equal(torch.load(target, weights_only=True)["layer1.0.conv1.weight"], state["layer1.0.conv1.weight"])


def test_a_download_whose_hash_does_not_match_its_name_is_refused(served, tmp_path):
    server, _, _ = served
    proc = run_cli("weights", "fetch", env=_env(tmp_path, server.url("resnet18-deadbeef.pth")))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "refused" in proc.stderr and "deadbeef" in proc.stderr
    assert not (tmp_path / "torch").exists()                                  # nothing kept, no folder made


def test_a_url_without_a_hash_in_its_name_is_refused_before_any_download(served, tmp_path):
    server, _, _ = served
    before = sum(server.gets.values())
    proc = run_cli("weights", "fetch", env=_env(tmp_path, server.url("resnet18.pth")))
    assert proc.returncode == 2 and "TUNE_APP_BACKBONE_URL" in proc.stderr and "sha256" in proc.stderr
    assert sum(server.gets.values()) == before


def test_offline_is_one_line_saying_what_to_put_where(tmp_path, monkeypatch):
    import socket

    with socket.socket() as s:                                               # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/resnet18-f37072fd.pth"
    for key, value in _env(tmp_path, url).items():
        monkeypatch.setenv(key, value)
    cfg = load_config(TINY, ["model.pretrained_backbone=true"])
    with pytest.raises(UserError) as err:
        ACTPolicy(cfg.model)
    message = str(err.value)
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in message
    assert "weights fetch" in message and "model.backbone_weights" in message and "\n" not in message


def test_a_sweep_refuses_bad_weights_before_anything_is_written(served, tmp_path):
    server, _, _ = served
    space = grid_space(tmp_path, "bad", [1e-4], "overrides: {model.pretrained_backbone: true}")
    proc = run_cli("run", str(space), "--storage", str(tmp_path / "runs"), "--num-cpus", "2",
                   env=_env(tmp_path, server.url("resnet18-deadbeef.pth")))
    assert proc.returncode == 2 and "refused" in proc.stderr, proc.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_sweep_trials_train_from_the_downloaded_weights(served, tmp_path):
    """Two trials, one download (by the driver, before Ray starts); with lr_backbone 0 the trained
    backbone's convolutions are still exactly the served ones."""
    server, good, state = served
    before = server.gets[f"/{good}"]
    space = grid_space(tmp_path, "pre", [1e-4, 3e-4], "overrides: {model.pretrained_backbone: true, training.lr_backbone: 0.0, "
                       "training.steps: 4, training.eval_freq: 2, training.log_freq: 2, training.save_freq: 4}")
    proc = run_cli("run", str(space), "--storage", str(tmp_path / "runs"), "--num-cpus", "2", env=_env(tmp_path, server.url(good)))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert server.gets[f"/{good}"] - before == 1
    checkpoints = sorted((tmp_path / "runs" / "pre" / "trials").glob("train-*/checkpoint_000004/pretrained_model/model.safetensors"))
    assert len(checkpoints) == 2
    for path in checkpoints:
        trained = load_file(str(path))
        assert torch.equal(trained["model.backbone.layer2.0.conv1.weight"], state["layer2.0.conv1.weight"])   # LeRobot's names
        assert torch.equal(trained["model.backbone.layer2.0.bn1.running_var"], state["layer2.0.bn1.running_var"])  # frozen
