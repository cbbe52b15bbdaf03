"""Reading a run directory while Tune writes it (tune_app/sweep/results.py)."""

import json
import threading

from .conftest import run_cli


def _run_dir(tmp_path):
    (tmp_path / "sweep.json").write_text(json.dumps({"name": "live", "metric": "val_loss", "mode": "min",
                                                     "parameters": ["training.lr"], "total_steps": 10}))
    trials = [{"trial_id": "abc_00000", "status": "RUNNING", "params": {"training.lr": 1e-4}, "dir": "abc_00000"}]
    return tmp_path / "trials.json", json.dumps(trials)


def test_status_reads_the_trial_list_again_when_it_catches_a_partial_copy(tmp_path):
    from tune_app.sweep.results import load_run

    state_file, state = _run_dir(tmp_path)
    state_file.write_text(state[: len(state) // 2])            # a copy from a bucket caught half-way
    threading.Timer(0.5, state_file.write_text, args=(state,)).start()
    run = load_run(tmp_path)                                    # read before the rewrite ends: read again
    assert [(t.trial_id, t.state) for t in run.trials] == [("abc_00000", "RUNNING")]


def test_a_state_file_that_stays_broken_is_one_line_naming_it(tmp_path):
    state_file, state = _run_dir(tmp_path)
    state_file.write_text(state[:40])
    out = run_cli("status", str(tmp_path))
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert state_file.name in out.stderr and "damaged" in out.stderr
