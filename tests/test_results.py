"""Reading a run directory (tune_app/sweep/results.py): the trial list tune_app writes beside Tune's files."""

import json

from .conftest import run_cli


def _run_dir(tmp_path):
    (tmp_path / "sweep.json").write_text(json.dumps({"name": "live", "metric": "val_loss", "mode": "min",
                                                     "parameters": ["training.lr"], "total_steps": 10}))
    trials = [{"trial_id": "abc_00000", "status": "RUNNING", "params": {"training.lr": 1e-4}, "dir": "abc_00000"},
              {"trial_id": "abc_00001", "status": "PENDING", "params": {"training.lr": 1e-3}, "dir": None}]
    (tmp_path / "abc_00000").mkdir()
    (tmp_path / "abc_00000" / "result.json").write_text(json.dumps({"step": 5, "val_loss": 0.5}) + "\n")
    return tmp_path / "trials.jsonl", "".join(json.dumps(t) + "\n" for t in trials)


def test_status_lists_each_trial_with_its_state_and_results(tmp_path):
    from tune_app.sweep.results import load_run

    trials_file, text = _run_dir(tmp_path)
    trials_file.write_text(text)
    run = load_run(tmp_path)
    assert [(t.trial_id, t.state, t.last_step) for t in run.trials] == [("abc_00000", "RUNNING", 5), ("abc_00001", "PENDING", None)]
    assert run.best().trial_id == "abc_00000"


def test_a_damaged_trial_list_is_one_line_naming_it(tmp_path):
    trials_file, text = _run_dir(tmp_path)
    trials_file.write_text(text[:40])
    out = run_cli("status", str(tmp_path))
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert trials_file.name in out.stderr and "damaged" in out.stderr


def test_a_resumed_trials_curve_joins_the_rows_before_and_after_the_resume():
    """A run resumed from its step-20 checkpoint reports 30.. again; the rows it went back over (30, 40) go."""
    from tune_app.sweep.results import continuous

    rows = [{"step": s, "run": 1} for s in (0, 10, 20, 30, 40)] + [{"step": s, "run": 2} for s in (30, 40, 50)]
    assert [(r["step"], r["run"]) for r in continuous(rows)] == [(0, 1), (10, 1), (20, 1), (30, 2), (40, 2), (50, 2)]
    resumed_at_end = [{"step": s} for s in (0, 10, 20)] + [{"step": 20, "final": True}]
    assert continuous(resumed_at_end)[-1] == {"step": 20, "final": True} and len(continuous(resumed_at_end)) == 3
    assert continuous([{"x": 1}, {"step": 0}, {"x": 2}]) == [{"x": 1}, {"step": 0}, {"x": 2}]
