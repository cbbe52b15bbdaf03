"""Sweep files: W&B keys -> Tune; every mistake is one line before anything starts."""

import pytest
from ray.tune.schedulers import ASHAScheduler

from tune_app.errors import UserError
from tune_app.sweep.space import SWEEP_PARAMS_KEY, load_sweep, swept_values, trial_name

from .conftest import REPO, run_cli

GOOD = """
method: grid
metric: {name: val_loss, goal: minimize}
base_config: BASE
parameters:
  training.lr: {values: [1.0e-5, 5.0e-5]}
  training.kl_weight: {values: [10, 1]}
"""


def _write(tmp_path, text, name="space.yaml"):
    path = tmp_path / name
    path.write_text(text.replace("BASE", str(REPO / "configs" / "act_tiny.yaml")))
    return path


def test_flagship_grid_is_three_by_two_on_the_tiny_config():
    sweep = load_sweep(REPO / "search_spaces" / "lr_grid.yaml")
    assert sweep.grid_size() == 6 and sweep.metric == "val_loss" and sweep.mode == "min"
    assert sweep.parameters["training.lr"]["values"] == [1e-5, 5e-5, 1e-4]
    assert sweep.parameters["training.kl_weight"]["values"] == [10.0, 1.0]
    assert sweep.base.model.dim_model == 64 and sweep.name == "lr_grid"


def test_shipped_spaces_build_their_searchers():
    asha = load_sweep(REPO / "search_spaces" / "asha_random.yaml")
    assert isinstance(asha.scheduler("runs/asha"), ASHAScheduler) and asha.num_samples == 8
    tpe = load_sweep(REPO / "search_spaces" / "tpe.yaml")
    assert type(tpe.search_alg()).__name__ == "OptunaSearch" and tpe.max_concurrent_trials == 2


def test_a_trial_config_is_the_whole_training_config_with_the_swept_keys_named(tmp_path):
    sweep = load_sweep(_write(tmp_path, GOOD + "overrides: {training.steps: 42}\n"))
    space = sweep.param_space()
    assert space[SWEEP_PARAMS_KEY] == ["training.lr", "training.kl_weight"]
    assert space["training.steps"] == 42 and space["data.fps"] == sweep.base.data.fps
    assert set(space) == set(sweep.base.flat()) | {SWEEP_PARAMS_KEY}
    assert type(space["training.lr"]).__name__ == "dict" and "grid_search" in space["training.lr"]
    trial = {**space, "training.lr": 5e-5, "training.kl_weight": 1.0}
    assert swept_values(trial) == {"training.lr": 5e-5, "training.kl_weight": 1.0}
    assert swept_values({"training.lr": 5e-5}) == {"training.lr": 5e-5}    # a trial of an older sweep


def test_overrides_and_ray_section_reach_the_base_config(tmp_path):
    path = _write(tmp_path, GOOD + "overrides: {training.steps: 42}\nray: {num_workers: 2, cpus_per_worker: 0.5, max_concurrent_trials: 3}\n")
    sweep = load_sweep(path, overrides=["training.batch_size=4"])
    assert sweep.base.training.steps == 42 and sweep.base.training.batch_size == 4
    assert sweep.base.ray.num_workers == 2 and sweep.base.ray.cpus_per_worker == 0.5
    assert sweep.max_concurrent_trials == 3


def test_distributions_map_to_tune_domains(tmp_path):
    text = GOOD.replace("method: grid", "method: random").replace(
        "training.kl_weight: {values: [10, 1]}",
        "training.kl_weight: {distribution: uniform, min: 0.5, max: 20}\n  training.batch_size: {min: 2, max: 8}\n"
        "  training.weight_decay: {distribution: log_uniform_values, min: 1.0e-6, max: 1.0e-2}")
    space = load_sweep(_write(tmp_path, text)).param_space()
    assert type(space["training.kl_weight"]).__name__ == "Float"
    assert type(space["training.batch_size"]).__name__ == "Integer"
    lo, hi = space["training.weight_decay"].lower, space["training.weight_decay"].upper
    assert (lo, hi) == (1e-6, 1e-2)


def test_trial_names_say_their_parameters():
    assert trial_name({"training.lr": 5e-05, "training.kl_weight": 10.0}, ["training.lr", "training.kl_weight"]) == "lr=5e-05,kl_weight=10"


BAD = [
    ("unknown top-level key", GOOD + "paramaters: {}\n", "unknown key 'paramaters' (did you mean 'parameters'?)"),
    ("unknown method", GOOD.replace("method: grid", "method: hyperopt"), "method: 'hyperopt' is not one of"),
    ("parameter not a config key", GOOD.replace("training.kl_weight:", "training.kl_wieght:"),
     "'training.kl_wieght' is not a training-config key (did you mean 'training.kl_weight'?)"),
    ("empty values", GOOD.replace("[10, 1]", "[]"), "'values' must be a non-empty list"),
    ("min greater than max", GOOD.replace("method: grid", "method: random").replace("{values: [10, 1]}", "{min: 5.0, max: 1.0}"),
     "min (5.0) is greater than max (1.0)"),
    ("misspelled parameter key", GOOD.replace("{values: [10, 1]}", "{valuse: [10, 1]}"), "unknown key 'valuse' (did you mean 'values'?)"),
    ("distribution on grid", GOOD.replace("{values: [10, 1]}", "{distribution: uniform, min: 1.0, max: 2.0}"),
     "method 'grid' needs a 'values' list"),
    ("bad metric goal", GOOD.replace("goal: minimize", "goal: lowest"), "metric.goal: 'lowest' must be minimize or maximize"),
    ("wrong value type", GOOD.replace("[10, 1]", "[10, ten]"), "must be float, got 'ten'"),
    ("unknown ray key", GOOD + "ray: {num_worker: 2}\n", "ray: unknown key 'num_worker' (did you mean 'num_workers'?)"),
    ("missing base config", GOOD.replace("base_config: BASE", "base_config: nope.yaml"), "base_config:"),
    ("unknown distribution", GOOD.replace("method: grid", "method: random").replace("{values: [10, 1]}", "{distribution: gaussian, min: 1.0, max: 2.0}"),
     "unsupported distribution 'gaussian'"),
    ("bad early_terminate", GOOD + "early_terminate: {type: median}\n", "only 'hyperband'"),
    ("no parameters", "method: grid\nparameters: {}\n", "parameters: give at least one"),
    ("bad override key in file", GOOD + "overrides: {training.stepz: 3}\n", "unknown config key 'training.stepz'"),
    ("negative concurrency", GOOD + "ray: {max_concurrent_trials: 0}\n", "max_concurrent_trials: must be a positive integer"),
    ("invalid combination", GOOD.replace("training.kl_weight: {values: [10, 1]}", "model.n_heads: {values: [4, 3]}"),
     "divisible by model.n_heads"),
]


@pytest.mark.parametrize("label, text, message", BAD, ids=[b[0] for b in BAD])
def test_bad_search_space_is_one_clear_line(tmp_path, label, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(UserError) as err:
        load_sweep(path)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_cli_rejects_bad_space_with_exit_2_and_starts_nothing(tmp_path):
    path = _write(tmp_path, GOOD.replace("[10, 1]", "[]"))
    proc = run_cli("run", str(path), "--storage", str(tmp_path / "runs"))
    assert proc.returncode == 2
    lines = [x for x in proc.stderr.strip().splitlines() if x]
    assert len(lines) == 1 and "'values' must be a non-empty list" in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_cli_train_bad_key_exits_2_without_traceback(tmp_path):
    proc = run_cli("train", "--config", str(REPO / "configs" / "act_tiny.yaml"), "--override", "training.lrr=1")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "did you mean 'training.lr'" in proc.stderr


def test_cli_train_missing_bag_dir_exits_2(tmp_path):
    proc = run_cli("train", "--config", str(REPO / "configs" / "act_tiny.yaml"), "--override", f"data.bag_dir={tmp_path / 'bags'}")
    assert proc.returncode == 2 and "data.bag_dir" in proc.stderr and "does not exist" in proc.stderr
