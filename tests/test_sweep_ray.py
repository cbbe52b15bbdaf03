"""Real sweeps on a local Ray: the grid, ASHA, status, kill + resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tune_app import fastpath
from tune_app.sweep.results import load_run, render_table
from tune_app.sweep.run import run_sweep
from tune_app.sweep.space import load_sweep

from .conftest import REPO, grid_space, run_cli

pytestmark = pytest.mark.slow

SHORT = ["training.steps=10", "training.log_freq=5", "training.eval_freq=5", "training.save_freq=5",
         "training.val_batches=2", "data.demo_episodes=12", "data.demo_episode_len=30"]


@pytest.fixture(scope="module")
def grid_run(ray_local, tmp_path_factory):
    storage = tmp_path_factory.mktemp("sweeps")
    sweep = load_sweep(REPO / "search_spaces" / "lr_grid.yaml", overrides=SHORT, storage_path=str(storage))
    summary = run_sweep(sweep, ray_local)
    return storage / "lr_grid", summary


def test_grid_runs_every_combination_once_with_its_parameters(grid_run):
    run_dir, summary = grid_run
    combos = sorted((t["params"]["training.lr"], t["params"]["training.kl_weight"]) for t in summary["trials"])
    assert combos == sorted((lr, kl) for lr in (1e-5, 5e-5, 1e-4) for kl in (10.0, 1.0))
    for t in summary["trials"]:
        assert t["state"] == "TERMINATED" and t["last_step"] == 10
        used = json.loads((Path(t["checkpoint"]) / "pretrained_model" / "train_config.json").read_text())
        assert used["training"]["lr"] == t["params"]["training.lr"]
        assert used["training"]["kl_weight"] == t["params"]["training.kl_weight"]
    starts = [json.loads(x) for x in (run_dir / "trial_events.jsonl").read_text().splitlines() if '"start"' in x]
    assert len(starts) == 6
    # Two trial slots: the six trials ran in two reused trial processes (each hosting its Train controller),
    # and each process started its runs on the DDP worker its previous run finished with (warm workers).
    assert len(_trial_pids(run_dir)) == 2
    assert len(_trial_pids(run_dir, "worker_pid")) == 2
    # ... and the kept ones were freed when the sweep ended: no CPU of the cluster stays reserved.
    from ray.util.placement_group import placement_group_table

    assert {pg["state"] for pg in placement_group_table().values()} <= {"REMOVED"}


def _trial_pids(run_dir: Path, key: str = "pid") -> set[int]:
    return {json.loads(line)[key] for result in run_dir.glob("*/result.json") for line in result.read_text().splitlines()}


def test_sweep_writes_best_config_and_checkpoint(grid_run):
    run_dir, summary = grid_run
    best = [t for t in summary["trials"] if t["best"]]
    assert len(best) == 1 and best[0]["metric"] == min(t["metric"] for t in summary["trials"])
    from tune_app.config import load_config

    cfg = load_config(run_dir / "best_config.yaml")
    assert cfg.training.lr == best[0]["params"]["training.lr"] and cfg.training.steps == 10
    assert (run_dir / "best" / "pretrained_model" / "model.safetensors").is_file()
    assert (run_dir / "base_config.yaml").is_file()


def test_status_after_a_sweep(grid_run):
    run_dir, summary = grid_run
    proc = run_cli("status", str(run_dir))
    assert proc.returncode == 0
    lines = proc.stdout.splitlines()
    assert sum("TERMINATED" in x for x in lines) == 6
    best_line = [x for x in lines if x.startswith("*")]
    assert len(best_line) == 1 and summary["best_trial"] in best_line[0]
    data = json.loads(run_cli("status", str(run_dir), "--json").stdout)
    assert data["best_trial"] == summary["best_trial"] and len(data["trials"]) == 6


def test_run_resume_existing_continues_instead_of_starting_over(grid_run):
    run_dir, _ = grid_run
    before = [e for e in _events(run_dir) if e["event"] == "start"]
    proc = run_cli("run", str(REPO / "search_spaces" / "lr_grid.yaml"), "--storage", str(run_dir.parent), "--num-cpus", "2",
                   "--resume-existing", *sum((["--override", o] for o in SHORT), []))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "exists" in proc.stdout and "resuming it" in proc.stdout
    assert [e for e in _events(run_dir) if e["event"] == "start"] == before      # every trial was done: none rerun
    assert len(load_run(run_dir).trials) == 6


@pytest.mark.parametrize(("fast", "workers"), [(True, 1), (True, 2), (False, 1)], ids=["fast", "fast-ddp", "stock"])
def test_asha_stops_a_weak_trial_early(ray_local, tmp_path, fast, workers):
    space = grid_space(tmp_path, "asha", [3.0e-4, 1.0e-3, 1.0e-8, 1.0e-9],
                       "early_terminate: {type: hyperband, min_iter: 10, eta: 2, max_iter: 30}\nray: {max_concurrent_trials: 1}")
    overrides = ["training.steps=30", "training.log_freq=10", "training.eval_freq=10", "training.save_freq=10",
                 "training.val_batches=2", "data.demo_episodes=12", "data.demo_episode_len=30", f"ray.num_workers={workers}"]
    mode = fastpath.Mode(fast, "" if fast else "test")
    summary = run_sweep(load_sweep(space, overrides=overrides, storage_path=str(tmp_path)), ray_local, mode=mode)
    steps = {t["params"]["training.lr"]: t["last_step"] for t in summary["trials"]}
    assert steps[3e-4] == 30                                 # the first trial sets the bar and runs out
    assert any(s < 30 for s in steps.values())               # at least one weak trial was cut at a rung
    assert any(t["state"] == "STOPPED EARLY" for t in summary["trials"])
    assert "STOPPED EARLY" in render_table(load_run(tmp_path / "asha"))
    if not fast:
        return
    # An early-stopped run ends at its workers' next step (DDP: every rank at the same one) instead of
    # being aborted, so the one trial process ran every trial on the same warm workers.
    assert len(_trial_pids(tmp_path / "asha")) == 1
    assert len(_trial_pids(tmp_path / "asha", "worker_pid")) == 1
    for t in summary["trials"]:                              # a stopped run saved nothing after its rung
        if t["state"] == "STOPPED EARLY":
            saved = sorted(p.name for p in (tmp_path / "asha" / "trials" / f"train-{t['trial_id']}").glob("checkpoint_0*"))
            assert saved and saved[-1] == f"checkpoint_{t['last_step']:06d}", (t, saved)


def _events(run_dir):
    path = run_dir / "trial_events.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.is_file() else []


@pytest.mark.parametrize("fast", ["1", "0"], ids=["fast", "stock"])
def test_killed_sweep_resumes_without_rerunning_finished_trials(tmp_path, fast):
    env = {**os.environ, "TUNE_APP_FAST": fast}
    space = grid_space(tmp_path, "two", [1.0e-4, 5.0e-5], "ray: {max_concurrent_trials: 1, name: two}")
    args = ["run", str(space), "--storage", str(tmp_path), "--num-cpus", "2",
            "--override", "training.steps=80", "--override", "training.save_freq=10", "--override", "training.log_freq=10",
            "--override", "training.eval_freq=40", "--override", "training.val_batches=2"]
    run_dir = tmp_path / "two"
    proc = subprocess.Popen([sys.executable, "-m", "tune_app", *args], cwd=REPO, start_new_session=True, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    try:
        while True:
            assert proc.poll() is None, "the sweep ended before it could be killed"
            assert time.monotonic() < deadline, "the second trial never checkpointed"
            done = {e["trial_id"] for e in _events(run_dir) if e["event"] == "complete"}
            started = [e["trial_id"] for e in _events(run_dir) if e["event"] == "start"]
            second = [t for t in started if t not in done]
            if done and second and list((run_dir / "trials" / f"train-{second[0]}").glob("checkpoint_0000[2-9]0")):
                break
            time.sleep(0.5)
        during = run_cli("status", str(run_dir))
    finally:
        killed_at = time.time()
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert during.returncode == 0 and "TERMINATED" in during.stdout
    finished, interrupted = done.pop(), second[0]
    before = next(t for t in load_run(run_dir).trials if t.trial_id == interrupted).history   # as stored at the kill

    again = run_cli(*args, env=env)
    assert again.returncode == 2 and "resume" in again.stderr          # no silent mixing
    resumed = run_cli("resume", str(run_dir), "--num-cpus", "2", env=env)
    assert ("stock Ray mode" in resumed.stdout) == (fast == "0")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]

    starts = [e["trial_id"] for e in _events(run_dir) if e["event"] == "start"]
    assert starts.count(finished) == 1                                  # not rerun
    assert starts.count(interrupted) == 2                               # restarted once ...
    run = load_run(run_dir)
    trial = next(t for t in run.trials if t.trial_id == interrupted)
    steps = [r["step"] for r in trial.history]
    assert steps == sorted(set(steps)) and steps[-1] == 80              # one curve, to the end ...
    after = [r for r in trial.history if r["timestamp"] > killed_at]
    assert after and after[0]["step"] >= 30                         # ... continued from its checkpoint (>= 20) ...
    kept = [r for r in trial.history if r["timestamp"] <= killed_at]    # ... after what was stored before the kill
    assert kept == [r for r in before if r["step"] < after[0]["step"]]
    assert all(t.state == "TERMINATED" and t.last_step == 80 for t in run.trials)
    assert "best:" in resumed.stdout


def _quick_trial(config):
    from ray import tune

    for step in range(3):
        tune.report({"step": step, "x": config["x"]})


def _tune_state_on_storage(folder: Path) -> dict[str, str]:
    """Trial statuses in Tune's newest experiment-state file (Ray 2.60's layout; the fast path's own test)."""
    files = sorted(folder.glob("experiment_state-*.json"))
    if not files:
        return {}
    for _ in range(10):
        try:
            data = json.loads(files[-1].read_text())
            break
        except json.JSONDecodeError:
            time.sleep(0.1)
    trials = [json.loads(item[0]) for item in data.get("trial_data", [])]
    return {t["trial_id"]: t["status"] for t in trials}


def test_state_on_storage_is_never_behind_a_trial_transition(ray_local, tmp_path):
    """After every controller step both states on storage list every trial with its current status: Tune's
    experiment state (what ``resume`` restores; fastpath.tune_state forces it, Tune alone saves it at most
    every 10 s) and tune_app's trials.jsonl (what ``status`` reads; written by a public Tune callback)."""
    from ray import tune

    from tune_app.fastpath.tune_state import durable_state
    from tune_app.sweep.progress import TrialStateWriter

    seen = []

    class CompareWithStorage(tune.Callback):
        def on_step_end(self, iteration, trials, **info):
            listed = tmp_path / "quick" / "trials.jsonl"
            ours = {json.loads(x)["trial_id"]: json.loads(x)["status"] for x in listed.read_text().splitlines()} if listed.is_file() else {}
            seen.append((_tune_state_on_storage(tmp_path / "quick"), ours, {t.trial_id: t.status for t in trials}))

    tuner = tune.Tuner(_quick_trial, param_space={"x": tune.grid_search([1, 2, 3, 4])},
                       tune_config=tune.TuneConfig(max_concurrent_trials=1, reuse_actors=True),
                       run_config=tune.RunConfig(name="quick", storage_path=str(tmp_path),
                                                 callbacks=[TrialStateWriter(str(tmp_path / "quick"), ["x"]), CompareWithStorage()]))
    with durable_state():
        results = tuner.fit()
    assert len(results) == 4 and not results.errors
    statuses = {s for _, _, memory in seen for s in memory.values()}
    assert {"PENDING", "RUNNING", "TERMINATED"} <= statuses             # the transitions did happen in between
    behind = [(tune_state, memory) for tune_state, _, memory in seen if tune_state != memory]
    assert not behind, behind[:3]
    behind = [(ours, memory) for _, ours, memory in seen if ours != memory]
    assert not behind, behind[:3]


def test_janitor_frees_the_placement_group_of_a_killed_run_owner(ray_local):
    """A trial process killed mid-run (node loss, hard kill) leaves its workers' placement group to the job;
    the sweep's janitor removes it once the owner is dead, and leaves a live owner's alone."""
    import ray
    from ray.util.placement_group import placement_group, placement_group_table

    from tune_app.fastpath.janitor import start_janitor

    janitor = start_janitor("janitor-test")

    @ray.remote(num_cpus=0)
    class Owner:
        def start_run(self, janitor_name):
            pg = placement_group([{"CPU": 1}])
            ray.get(pg.ready())
            context = ray.get_runtime_context()
            ray.get(ray.get_actor(janitor_name).watch.remote(context.current_actor, context.get_actor_id(), pg))
            return pg

    owner = Owner.remote()
    pg = ray.get(owner.start_run.remote("janitor-test"))
    time.sleep(3)                                           # several janitor rounds with a live owner
    assert placement_group_table(pg)["state"] == "CREATED"
    assert len(ray.get(janitor.watching.remote())) == 1
    ray.kill(owner)
    deadline = time.monotonic() + 60
    while placement_group_table(pg)["state"] != "REMOVED":
        assert time.monotonic() < deadline, "the dead owner's placement group was never removed"
        time.sleep(0.5)
    assert ray.get(janitor.watching.remote()) == []
    ray.kill(janitor)


def test_kept_workers_are_reused_only_when_alive_and_of_the_same_shape_and_freed_when_unclaimed(ray_local):
    """tune_app.fastpath.warm_workers: a trial process keeps a finished run's workers for its next run, and never
    holds them when they cannot be used: another shape, a dead worker, or nobody claiming them in time."""
    import ray
    from ray.train.v2._internal.execution.checkpoint.sync_actor import SynchronizationActor
    from ray.train.v2._internal.execution.worker_group.placement_group_handle import DefaultPlacementGroupHandle
    from ray.train.v2._internal.execution.worker_group.worker import RayTrainWorker, Worker
    from ray.util.placement_group import placement_group, placement_group_table
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from tune_app.fastpath.warm_workers import Kept, WarmPool

    def finished_run():
        pg = placement_group([{"CPU": 1}])
        ray.get(pg.ready(), timeout=60)
        actor = ray.remote(num_cpus=1)(RayTrainWorker).options(
            scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=0)).remote()
        worker = Worker(actor, ray.get(actor.get_metadata.remote()), {"CPU": 1}, placement_group_bundle_index=0)
        sync_actor = SynchronizationActor.remote()
        ray.get(sync_actor.__ray_ready__.remote(), timeout=60)             # as after a run: every process up
        return Kept(("1 worker",), DefaultPlacementGroupHandle(pg), [worker], sync_actor)

    def released(kept: Kept) -> bool:
        deadline = time.monotonic() + 30
        while placement_group_table(kept.placement_group_handle.placement_group)["state"] != "REMOVED":
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)
        with pytest.raises(ray.exceptions.RayActorError):
            ray.get(kept.workers[0].actor.get_metadata.remote(), timeout=30)
        return True

    pool = WarmPool(idle_s=2.0)
    kept = finished_run()
    pool.keep(kept)
    assert pool.take(("1 worker",)) is kept and pool.reused == 1        # same shape, alive: reused as is
    pool.keep(kept)
    assert pool.take(("2 workers",)) is None and released(kept)       # another shape: freed, new ones start

    kept = finished_run()
    pool.keep(kept)
    ray.kill(kept.workers[0].actor)
    assert pool.take(("1 worker",)) is None and released(kept)        # a dead worker (lost node): freed

    kept = finished_run()
    pool.keep(kept)
    time.sleep(3)                                                     # nobody claimed it within idle_s
    assert released(kept) and pool.take(("1 worker",)) is None
    assert pool.reused == 1
