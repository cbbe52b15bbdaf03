"""Reading a run directory while Tune writes it (tune_app/sweep/results.py)."""

import json
import threading

from .conftest import run_cli


def _run_dir(tmp_path):
    (tmp_path / "sweep.json").write_text(json.dumps({"name": "live", "metric": "val_loss", "mode": "min",
                                                     "parameters": ["training.lr"], "total_steps": 10}))
    trial = {"trial_id": "abc_00000", "status": "RUNNING", "config": {"training.lr": 1e-4}, "relative_logdir": "abc_00000"}
    state = json.dumps({"trial_data": [[json.dumps(trial), json.dumps({})]]})
    return tmp_path / "experiment_state-2026-11-29_06-00-00.json", state


def test_status_reads_the_state_again_when_it_catches_tune_rewriting_it(tmp_path):
    from tune_app.sweep.results import load_run

    state_file, state = _run_dir(tmp_path)
    state_file.write_text(state[: len(state) // 2])            # Tune is half-way through rewriting the file
    threading.Timer(0.5, state_file.write_text, args=(state,)).start()
    run = load_run(tmp_path)                                    # read before the rewrite ends: read again
    assert [(t.trial_id, t.state) for t in run.trials] == [("abc_00000", "RUNNING")]


def test_a_state_file_that_stays_broken_is_one_line_naming_it(tmp_path):
    state_file, state = _run_dir(tmp_path)
    state_file.write_text(state[:40])
    out = run_cli("status", str(tmp_path))
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert state_file.name in out.stderr and "damaged" in out.stderr
