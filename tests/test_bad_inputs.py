"""Bad input to every command: exit 2, one line naming what to fix, no traceback, nothing written.

Each case runs ``python -m tune_app ...`` in a sandbox folder (its working directory and HOME) that
holds canary files, a user's own folder, a regular file used as a path component, damaged sweeps
and damaged checkpoints. The sandbox's whole tree (names, sizes, content hashes) must be the same
before and after the command.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO, TINY

SECRET = "pw-SECRET-9f8e7d"

# (id, argv). Paths are relative to the sandbox.
CASES = [
    # --- train: config files and keys
    ("train-missing-config", ["train", "--config", "missing.yaml"]),
    ("train-binary-config", ["train", "--config", "binary.yaml"]),
    ("train-config-is-a-list", ["train", "--config", "list.yaml"]),
    ("train-broken-yaml", ["train", "--config", "broken.yaml"]),
    ("train-config-is-a-folder", ["train", "--config", "notes"]),
    ("train-empty-override", ["train", "--config", "ok.yaml", "--override", "training.lr"]),
    ("train-bad-type", ["train", "--config", "ok.yaml", "--override", "training.lr=abc"]),
    ("train-unknown-key", ["train", "--config", "ok.yaml", "--override", "training.lrr=1"]),
    ("train-unknown-section", ["train", "--config", "ok.yaml", "--override", "trainer.lr=1"]),
    ("train-zero-batch", ["train", "--config", "ok.yaml", "--override", "training.batch_size=0"]),
    ("train-negative-steps", ["train", "--config", "ok.yaml", "--override", "training.steps=-5"]),
    ("train-heads-mismatch", ["train", "--config", "ok.yaml", "--override", "model.dim_model=30"]),
    ("train-bad-literal", ["train", "--config", "ok.yaml", "--override", "wandb.mode=sometimes"]),
    ("train-zero-demo-episodes", ["train", "--config", "ok.yaml", "--override", "data.demo_episodes=0"]),
    ("train-missing-bag-dir", ["train", "--config", "ok.yaml", "--override", "data.bag_dir=nowhere"]),
    ("train-batch-larger-than-data", ["train", "--config", "ok.yaml", "--override", "training.batch_size=100000"]),
    ("train-output-dir-is-a-file", ["train", "--config", "ok.yaml", "--override", "training.output_dir=afile"]),
    ("train-output-dir-under-a-file", ["train", "--config", "ok.yaml", "--override", "training.output_dir=afile/out"]),
    ("train-output-dir-is-a-user-folder", ["train", "--config", "ok.yaml", "--override", "training.output_dir=notes"]),
    ("train-overwrite-a-user-folder", ["train", "--config", "ok.yaml", "--override", "training.output_dir=notes", "--overwrite"]),
    ("train-resume-nothing", ["train", "--config", "ok.yaml", "--override", "training.output_dir=fresh", "--resume"]),
    ("train-resume-and-overwrite", ["train", "--config", "ok.yaml", "--resume", "--overwrite"]),
    ("train-num-cpus-zero", ["train", "--config", "ok.yaml", "--num-cpus", "0"]),
    ("train-num-cpus-negative", ["train", "--config", "ok.yaml", "--num-cpus", "-1"]),
    ("train-num-cpus-text", ["train", "--config", "ok.yaml", "--num-cpus", "many"]),
    ("train-unreachable-address", ["train", "--config", "ok.yaml", "--address", "127.0.0.1:1"]),
    ("train-address-without-port", ["train", "--config", "ok.yaml", "--address", "somewhere"]),
    ("train-unreachable-mlflow", ["train", "--config", "ok.yaml", "--override", "mlflow.enabled=true",
                                  "--override", f"mlflow.tracking_uri=http://robot:{SECRET}@127.0.0.1:1"]),
    ("train-unknown-flag", ["train", "--config", "ok.yaml", "--bogus"]),
    ("train-init-from-missing", ["train", "--config", "ok.yaml", "--init-from", "nowhere"]),
    ("train-init-from-another-model", ["train", "--config", "ok.yaml", "--init-from", "ckpt", "--override", "model.chunk_size=5"]),
    ("train-init-from-truncated", ["train", "--config", "ok.yaml", "--init-from", "ckpt_truncated"]),
    # --- run: sweep files, names, storage, flags
    ("run-missing-space", ["run", "missing.yaml"]),
    ("run-binary-space", ["run", "binary.yaml"]),
    ("run-space-unknown-key", ["run", "space_badkey.yaml"]),
    ("run-space-no-parameters", ["run", "space_noparams.yaml"]),
    ("run-space-missing-base", ["run", "space_nobase.yaml"]),
    ("run-space-bad-value", ["run", "space_badvalue.yaml"]),
    ("run-name-dotdot", ["run", "space.yaml", "--name", "..", "--overwrite"]),
    ("run-name-dot", ["run", "space.yaml", "--name", ".", "--overwrite"]),
    ("run-name-parent-path", ["run", "space.yaml", "--name", "../escape"]),
    ("run-name-quote", ["run", "space.yaml", "--name", 'a"b']),
    ("run-name-newline", ["run", "space.yaml", "--name", "a\nb"]),
    ("run-name-empty", ["run", "space.yaml", "--name", ""]),
    ("run-name-hidden", ["run", "space.yaml", "--name", ".hidden"]),
    ("run-name-too-long", ["run", "space.yaml", "--name", "x" * 65]),
    ("run-storage-is-a-file", ["run", "space.yaml", "--storage", "afile"]),
    ("run-storage-under-a-file", ["run", "space.yaml", "--storage", "afile/runs"]),
    ("run-overwrite-a-user-folder", ["run", "space.yaml", "--storage", ".", "--name", "notes", "--overwrite"]),
    ("run-overwrite-a-damaged-run", ["run", "space.yaml", "--storage", "runs", "--name", "corrupt", "--overwrite"]),
    ("run-existing-sweep", ["run", "space.yaml", "--storage", "runs", "--name", "good"]),
    ("run-max-concurrent-zero", ["run", "space.yaml", "--max-concurrent", "0"]),
    ("run-max-failures-negative", ["run", "space.yaml", "--max-failures", "-2"]),
    ("run-num-cpus-zero", ["run", "space.yaml", "--num-cpus", "0"]),
    ("run-unreachable-address", ["run", "space.yaml", "--address", "127.0.0.1:1"]),
    ("run-override-a-swept-key", ["run", "space.yaml", "--override", "training.lr=1e-3"]),
    ("run-batch-larger-than-data", ["run", "space.yaml", "--override", "training.batch_size=100000"]),
    ("run-swept-batch-larger-than-data", ["run", "space_bigbatch.yaml"]),
    ("run-eval-device", ["run", "space.yaml", "--eval-best", "--eval-device", "tpu"]),
    ("run-dashboard-port", ["run", "space.yaml", "--dashboard", "--dashboard-port", "70000"]),
    ("run-wait-timeout", ["run", "space.yaml", "--wait-timeout", "-1"]),
    # --- resume / status / report
    ("resume-missing", ["resume", "nowhere"]),
    ("resume-user-folder", ["resume", "notes"]),
    ("resume-a-file", ["resume", "afile"]),
    ("resume-damaged", ["resume", "runs/corrupt"]),
    ("status-missing", ["status", "nowhere"]),
    ("status-damaged", ["status", "runs/corrupt"]),
    ("status-binary-sweep-file", ["status", "runs/binary"]),
    ("status-a-file", ["status", "afile"]),
    ("report-missing", ["report", "nowhere"]),
    ("report-damaged", ["report", "runs/corrupt"]),
    ("report-output-under-a-file", ["report", "runs/good", "-o", "afile/r.html"]),
    ("report-output-is-a-folder", ["report", "runs/good", "-o", "notes"]),
    # --- eval
    ("export-missing", ["export", "nowhere", "-o", "exported"]),
    ("export-output-exists", ["export", "ckpt", "-o", "ckpt_badjson"]),
    ("export-truncated-weights", ["export", "ckpt_truncated", "-o", "exported"]),
    ("export-damaged-config", ["export", "ckpt_badjson", "-o", "exported"]),
    ("export-unknown-format", ["export", "ckpt", "--format", "onnx", "-o", "exported"]),
    ("export-no-output", ["export", "ckpt"]),
    ("eval-missing", ["eval", "nowhere"]),
    ("eval-negative-ensemble-coeff", ["eval", "ckpt", "--temporal-ensemble-coeff", "-1"]),
    ("eval-not-a-checkpoint", ["eval", "notes"]),
    ("eval-truncated-weights", ["eval", "ckpt_truncated"]),
    ("eval-damaged-config", ["eval", "ckpt_badjson"]),
    ("eval-bad-device", ["eval", "ckpt", "--device", "tpu"]),
    ("eval-missing-gpu", ["eval", "ckpt", "--device", "cuda:7"]),
    ("eval-output-under-a-file", ["eval", "ckpt", "-o", "afile/e.csv"]),
    ("eval-output-suffix", ["eval", "ckpt", "-o", "e.txt"]),
    ("eval-missing-data-config", ["eval", "ckpt", "--data", "missing.yaml"]),
    ("eval-non-data-override", ["eval", "ckpt", "--override", "training.lr=1"]),
    # --- data
    ("demo-into-a-file", ["data", "demo", "afile"]),
    ("demo-video-as-bags", ["data", "demo", "fresh_demo", "--video"]),
    ("demo-unknown-video-codec", ["data", "demo", "fresh_demo", "--format", "lerobot", "--video", "--video-codec", "vp9"]),
    # --- dashboard, weights
    ("dashboard-not-a-sweep", ["dashboard", "notes"]),
    ("dashboard-missing-dir", ["dashboard", "nowhere"]),
    ("dashboard-bad-port", ["dashboard", "notes", "--port", "70000"]),
    ("run-dashboard-bad-port", ["run", "missing.yaml", "--dashboard", "--tune-dashboard-port", "-3"]),
    ("weights-without-action", ["weights"]),
    ("demo-under-a-file", ["data", "demo", "afile/x"]),
    ("demo-into-a-full-folder", ["data", "demo", "notes"]),
    ("demo-zero-episodes", ["data", "demo", "newdemo", "--episodes", "0"]),
    ("demo-negative-episodes", ["data", "demo", "newdemo", "--episodes", "-3"]),
    ("demo-binary-config", ["data", "demo", "newdemo", "--config", "binary.yaml"]),
    ("demo-bad-format", ["data", "demo", "newdemo", "--format", "hdf5"]),
    ("prepare-missing-config", ["data", "prepare", "missing.yaml"]),
    ("prepare-no-source", ["data", "prepare", "ok.yaml"]),
    ("prepare-cache-under-a-file", ["data", "prepare", "ok.yaml", "--override", "data.lerobot_root=lerobot",
                                    "--override", "data.cache_dir=afile/cache"]),
    # --- osmo / submit / the parser
    ("osmo-validate-binary", ["osmo", "validate", "binary.yaml"]),
    ("osmo-validate-missing", ["osmo", "validate", "missing.yaml"]),
    ("osmo-render-negative-workers", ["osmo", "render", str(REPO / "search_spaces" / "lr_grid.yaml"), "--workers", "-1"]),
    ("osmo-render-outside-checkout", ["osmo", "render", "space.yaml", "--workers", "0"]),
    ("osmo-render-unknown-value", ["osmo", "render", str(REPO / "search_spaces" / "lr_grid.yaml"), "--workers", "0",
                                   "--set", "nokey=1"]),
    ("osmo-render-bad-image", ["osmo", "render", str(REPO / "search_spaces" / "lr_grid.yaml"), "--workers", "0",
                               "--image", "a b"]),
    ("osmo-render-output-under-a-file", ["osmo", "render", str(REPO / "search_spaces" / "lr_grid.yaml"), "--workers", "0",
                                         "-o", "afile/wf.yaml"]),
    ("submit-outside-checkout", ["submit", "space.yaml", "--address", "http://127.0.0.1:1", "--storage", "/shared"]),
    ("no-command", []),
    ("unknown-command", ["bogus"]),
    ("run-without-space", ["run"]),
]


def _tree(root: Path) -> dict[str, tuple]:
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            out[rel] = ("link", os.readlink(path))
        elif path.is_dir():
            out[rel] = ("dir",)
        else:
            out[rel] = ("file", path.stat().st_size, hashlib.sha1(path.read_bytes()).hexdigest())
    return out


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    root = tmp_path_factory.mktemp("sandbox")
    (root / "home").mkdir()
    (root / "canary.txt").write_text("do not touch\n")
    (root / "notes").mkdir()
    (root / "notes" / "n.txt").write_text("a user's own folder\n")
    (root / "afile").write_text("a regular file used as a folder\n")
    (root / "binary.yaml").write_bytes(bytes(range(256)) * 4)
    (root / "list.yaml").write_text("- a\n- b\n")
    (root / "broken.yaml").write_text("training: [1, 2\n")
    tiny = TINY.read_text()
    (root / "ok.yaml").write_text(tiny + "\n")
    base = f"base_config: {TINY}\n"
    head = "method: grid\nmetric: {name: val_loss, goal: minimize}\n"
    (root / "space.yaml").write_text(head + base + "parameters:\n  training.lr: {values: [1.0e-4, 3.0e-4]}\n")
    (root / "space_badkey.yaml").write_text(head + base + "parameterz: {}\n")
    (root / "space_noparams.yaml").write_text(head + base + "parameters: {}\n")
    (root / "space_nobase.yaml").write_text(head + "base_config: nope.yaml\nparameters:\n  training.lr: {values: [1.0e-4]}\n")
    (root / "space_badvalue.yaml").write_text(head + base + "parameters:\n  model.n_heads: {values: [3]}\n")
    (root / "space_bigbatch.yaml").write_text(head + base + "parameters:\n  training.batch_size: {values: [4, 100000]}\n")
    # sweeps: a good one (no trials yet), a damaged one, one whose sweep.json is binary
    meta = {"name": "good", "source": "space.yaml", "method": "grid", "metric": "val_loss", "mode": "min",
            "parameters": ["training.lr"], "total_steps": 10, "raw": {}}
    for name, content in (("good", json.dumps(meta)), ("corrupt", '{"name": "corrupt", "param'), ("binary", None)):
        folder = root / "runs" / name
        folder.mkdir(parents=True)
        if content is None:
            (folder / "sweep.json").write_bytes(b"\xff\xfe\x00garbage")
        else:
            (folder / "sweep.json").write_text(content)
        (folder / "tuner.pkl").write_bytes(b"not a pickle")
        (folder / "base_config.yaml").write_text(tiny)
    # a real checkpoint (trained without Ray) and two damaged copies
    from tune_app.config import load_config
    from tune_app.train.loop import run
    from tune_app.train.session import LocalSession

    cfg = load_config(TINY, ["training.steps=2", "training.save_freq=2", "training.eval_freq=2", "training.log_freq=2",
                             "data.demo_episodes=6", "data.demo_episode_len=20", "training.device=cpu"])
    session = LocalSession("cpu", root / "train_tmp")
    run(cfg, session)
    shutil.copytree(session.checkpoints[-1], root / "ckpt")
    shutil.rmtree(root / "train_tmp")
    for name in ("ckpt_truncated", "ckpt_badjson"):
        shutil.copytree(root / "ckpt", root / name)
    weights = root / "ckpt_truncated" / "pretrained_model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    (root / "ckpt_badjson" / "pretrained_model" / "train_config.json").write_text('{"model": {')
    # a LeRobot dataset folder (empty: the cache check comes first)
    (root / "lerobot").mkdir()
    return root


@pytest.mark.parametrize("argv", [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(argv, sandbox):
    before = _tree(sandbox)
    env = {**os.environ, "HOME": str(sandbox / "home"), "TUNE_APP_CACHE": str(sandbox / "home" / "cache"),
           "PYTHONPATH": str(REPO), "RAY_ADDRESS": ""}
    env.pop("RAY_ADDRESS")
    proc = subprocess.run([sys.executable, "-m", "tune_app", *argv], cwd=sandbox, env=env, capture_output=True,
                          text=True, timeout=300)
    err = proc.stderr.strip()
    assert proc.returncode == 2, f"rc {proc.returncode}\n{proc.stdout[-2000:]}\n{err[-3000:]}"
    assert "Traceback" not in proc.stderr + proc.stdout, err[-3000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("tune_app: error:"), err[-3000:]
    assert SECRET not in proc.stderr + proc.stdout
    assert _tree(sandbox) == before


def test_the_table_covers_every_command():
    commands = {argv[0] if argv[0] not in ("data", "osmo") else " ".join(argv[:2]) for _, argv in CASES if argv}
    assert commands >= {"train", "run", "resume", "status", "report", "eval", "data demo", "data prepare",
                        "osmo validate", "osmo render", "submit", "dashboard", "weights", "export"}
    assert len(CASES) >= 60
