"""Report, eval and export on a real small sweep (one finished trial set with a failed trial)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from tune_app.data import ChunkDataset, prepare
from tune_app.inspection.evaluate import evaluate
from tune_app.inspection.report import extract_data, write_report
from tune_app.policy import load_policy  # the documented entry point
from tune_app.policy.act import act_loss
from tune_app.sweep.run import run_sweep
from tune_app.sweep.space import load_sweep

from .conftest import TINY

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sweep_dir(ray_local, tmp_path_factory):
    """A 3-trial grid: two learning rates that train and a batch size no dataset holds (fails)."""
    folder = tmp_path_factory.mktemp("inspect")
    space = folder / "space.yaml"
    space.write_text("method: grid\nmetric: {name: val_loss, goal: minimize}\n"
                     f"base_config: {TINY}\n"
                     "parameters:\n  training.lr: {values: [1.0e-4, 1.0e-5]}\n  training.batch_size: {values: [8, 100000]}\n"
                     "overrides:\n  training.steps: 30\n  training.log_freq: 10\n  training.eval_freq: 10\n"
                     "  training.save_freq: 30\n  training.val_batches: null\n  data.demo_episodes: 12\n"
                     "  training.scheduler: cosine\n  training.warmup_steps: 10\n")
    sweep = load_sweep(str(space), storage_path=str(folder / "runs"), name="inspect")
    summary = run_sweep(sweep, ray_local)
    return Path(folder / "runs" / "inspect"), summary


def test_report_holds_every_trial_and_plot_data(sweep_dir):
    run_dir, summary = sweep_dir
    html = (run_dir / "report.html").read_text()            # written by the sweep itself
    data = extract_data(html)
    assert len(data["trials"]) == 4 and data["best_trial"] == summary["best_trial"]
    states = sorted(t["state"] for t in data["trials"])
    assert states == ["ERROR", "ERROR", "TERMINATED", "TERMINATED"]
    for t in data["trials"]:
        if t["state"] == "TERMINATED":
            steps = [r["step"] for r in t["history"]]
            assert steps == [0, 10, 20, 30]
            lrs = [r["lr"] for r in t["history"]]
            peak = t["params"]["training.lr"]
            assert lrs[1] == pytest.approx(peak) and lrs[-1] < lrs[2] < peak   # warmup done at 10, cosine decay after
            assert all("val_loss" in r for r in t["history"]) and all("loss" in r for r in t["history"][1:])
    assert "http://" not in html.split("<script")[0] and "src=" not in html  # nothing fetched
    best_cfg = (run_dir / "best_config.yaml").read_text()
    assert data["best_config"] == best_cfg


def test_report_of_a_sweep_in_progress(sweep_dir, tmp_path):
    run_dir, _ = sweep_dir
    copy = tmp_path / "live"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("best*", "summary.json", "report.html"))
    trials = [json.loads(x) for x in (copy / "trials.jsonl").read_text().splitlines()]
    trial = next(t for t in trials if t["status"] == "TERMINATED")
    trial["status"] = "RUNNING"
    (copy / "trials.jsonl").write_text("".join(json.dumps(t) + "\n" for t in trials))
    result_file = copy / trial["dir"] / "result.json"
    result_file.write_text("\n".join(result_file.read_text().splitlines()[:2]) + "\n")
    data = extract_data(write_report(copy).read_text())
    live = next(t for t in data["trials"] if t["trial_id"] == trial["trial_id"])
    assert data["in_progress"] and live["state"] == "RUNNING" and len(live["history"]) == 2


def test_report_renders_in_headless_chromium(sweep_dir, chromium):
    run_dir, _ = sweep_dir
    out = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", (run_dir / "report.html").as_uri()],
                         capture_output=True, text=True, timeout=120)
    dom = out.stdout
    assert 'data-rendered="ok"' in dom and "data-errors" not in dom, out.stderr[-2000:]
    finished = 2
    # training loss, validation loss, lr: one line per trial that reported; parallel coordinates: one per finished trial
    assert dom.count('class="series"') >= 3 * finished + finished
    assert dom.count('class="point"') == 2 * finished                 # metric vs lr, metric vs batch_size
    for chart in ("training loss", "learning rate", "parallel", "scatter training.lr", "scatter training.batch_size"):
        assert f'data-chart="{chart}' in dom, chart
    assert dom.count("<tr") == 1 + 4                                   # header + every trial


def test_eval_matches_a_direct_computation(sweep_dir):
    run_dir, summary = sweep_dir
    result = evaluate(run_dir / "best", latency_steps=5)
    policy = load_policy(run_dir / "best")
    prepared = prepare(policy.cfg)
    assert result.episodes == prepared.val_ids and len(result.rows) == result.frames
    ds = ChunkDataset(prepared.episodes, prepared.val_ids, policy.cfg.model.chunk_size, policy.stats)
    batch = torch.utils.data.default_collate([ds[i] for i in range(len(ds))])
    with torch.no_grad():
        pred, _ = policy.model(batch["state"], batch["image"])
    _, l1, _ = act_loss(pred, batch["action"], batch["action_is_pad"], None, 0.0)
    assert result.l1 == pytest.approx(l1.item(), rel=1e-5)
    best = next(t for t in summary["trials"] if t["best"])
    assert result.l1 == pytest.approx(best["metric"], rel=1e-4)          # training's own val_loss (all val batches)
    # per-joint MAE in raw units from the public predict() path, frame by frame
    eps = prepared.episodes
    frames = ds.frames
    raw = policy.predict(eps.states[frames], np.asarray(eps.images[frames]))
    err_sum, count = np.zeros(6), 0
    for k, f in enumerate(frames):
        n = min(policy.cfg.model.chunk_size, int(ds.frame_end[f]) - int(f))
        err_sum += np.abs(raw[k, :n] - eps.actions[f:f + n]).sum(0)
        count += n
    np.testing.assert_allclose(result.mae, err_sum / count, rtol=1e-4)
    assert 0 < result.latency_ms_median <= result.latency_ms_p95
    # executed actions without ensembling: one query every chunk_size steps of each episode, run open loop
    chunk, row_of = policy.cfg.model.chunk_size, {int(f): k for k, f in enumerate(frames)}
    errors = []
    for e in prepared.val_ids:
        start, end = int(eps.episode_starts[e]), int(eps.episode_ends[e])
        for f in range(start, end):
            query = start + (f - start) // chunk * chunk
            errors.append(np.abs(raw[row_of[query], f - query] - eps.actions[f]))
    np.testing.assert_allclose(result.mae_open_loop, np.mean(errors, 0), rtol=1e-4)
    assert result.ensemble_coeff == 0.01 and not np.allclose(result.mae_ensembled, result.mae_open_loop)


def test_eval_cli_writes_per_frame_values(sweep_dir, tmp_path):
    from .conftest import run_cli

    run_dir, _ = sweep_dir
    proc = run_cli("eval", str(run_dir / "best"), "-o", str(tmp_path / "e.parquet"), "--temporal-ensemble-coeff", "0.1")
    assert proc.returncode == 0, proc.stderr
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "e.parquet")
    assert {"episode", "frame", "l1", "mae_shoulder_pan_joint"} <= set(table.column_names)
    summary = json.loads((tmp_path / "e.json").read_text())
    assert table.num_rows == summary["frames"] and "latency per step" in proc.stdout
    assert "executed: open loop" in proc.stdout and "ensembled (0.1)" in proc.stdout and summary["ensemble_coeff"] == 0.1


def test_exported_best_checkpoint_is_self_contained(sweep_dir, tmp_path):
    run_dir, _ = sweep_dir
    moved = tmp_path / "exported"
    shutil.copytree(run_dir / "best" / "pretrained_model", moved)       # the folder alone, away from the run
    for name in ("config.json", "model.safetensors", "train_config.json", "data_split.json",
                 "policy_preprocessor_step_3_normalizer_processor.safetensors"):
        assert (moved / name).is_file()
    a, b = load_policy(moved), load_policy(run_dir / "best")
    eps = prepare(a.cfg).episodes
    np.testing.assert_array_equal(a.predict(eps.states[:3], np.asarray(eps.images[:3])),
                                  b.predict(eps.states[:3], np.asarray(eps.images[:3])))


def test_finishing_a_sweep_in_a_bucket_mirrors_without_checkpoints(sweep_dir, tmp_path, monkeypatch):
    """The bucket code path (pyarrow filesystem) on a local filesystem: mirror, best checkpoint, upload."""
    import pyarrow.fs

    from tune_app.sweep.run import finish

    run_dir, summary = sweep_dir
    bucket = tmp_path / "bucket" / "inspect"
    shutil.copytree(run_dir, bucket, ignore=shutil.ignore_patterns("best", "best_config.yaml", "summary.json", "report.html"))
    monkeypatch.chdir(tmp_path)
    again = finish(str(bucket), fs=pyarrow.fs.LocalFileSystem())
    assert again["best_trial"] == summary["best_trial"]
    mirror = tmp_path / "runs" / "inspect"
    assert not list(mirror.glob("trials/*/checkpoint_0*"))                    # checkpoints stay in the bucket
    assert (mirror / "best" / "pretrained_model" / "model.safetensors").is_file()
    for name in ("summary.json", "best_config.yaml", "report.html", "best/pretrained_model/model.safetensors"):
        assert (bucket / name).is_file(), name                                # uploaded back beside Tune's files
    assert load_policy(bucket / "best").cfg.training.lr == load_policy(run_dir / "best").cfg.training.lr


def test_eval_on_other_data_given_by_a_config(sweep_dir, tmp_path):
    """--data CONFIG: the same demo episodes written as bags give (almost) the same numbers."""
    from tune_app.config import load_config
    from tune_app.data.bagwriter import write_demo_bags
    from tune_app.data.demo import make_demo

    run_dir, _ = sweep_dir
    policy = load_policy(run_dir / "best")
    eps = make_demo(12, policy.cfg.data.demo_episode_len, (48, 64))
    write_demo_bags(tmp_path / "bags", load_config(TINY), eps)
    data_cfg = tmp_path / "data.yaml"
    data_cfg.write_text(f"data:\n  bag_dir: {tmp_path / 'bags'}\n  cache_dir: {tmp_path / 'cache'}\n"
                        "  camera_topic: /camera/camera/color/image_raw\n")
    on_demo = evaluate(run_dir / "best", latency_steps=3)
    on_bags = evaluate(run_dir / "best", data_config=str(data_cfg), latency_steps=3)
    assert on_bags.data_source.startswith("ROS 2 bags") and on_bags.episodes == on_demo.episodes
    assert on_bags.l1 == pytest.approx(on_demo.l1, rel=0.05)       # only each episode's last action differs (0 in bags)
