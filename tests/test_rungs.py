"""ASHA's rung decisions, recorded: the book kept beside Ray's scheduler agrees with what Ray decides."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
from ray.tune.schedulers import TrialScheduler

from tune_app.sweep.rungs import RUNGS_FILE, RecordingASHA, RungBook


@pytest.mark.parametrize("mode", ["min", "max"])
def test_recorded_rungs_agree_with_rays_decisions(tmp_path, mode):
    sched = RecordingASHA(run_dir=str(tmp_path), metric="val_loss", mode=mode, time_attr="step", grace_period=2,
                          reduction_factor=2, max_t=16)
    sched.set_search_properties("val_loss", mode)
    rng = np.random.default_rng(0)
    trials = [SimpleNamespace(trial_id=f"t{i}") for i in range(12)]
    alive, decisions = set(), []
    for t in trials:
        sched.on_trial_add(None, t)
        alive.add(t.trial_id)
    quality = {t.trial_id: rng.normal() for t in trials}
    for step in range(1, 17):                     # every trial reports every step, in a shuffled order
        for t in rng.permutation(trials):
            if t.trial_id not in alive:
                continue
            value = float(quality[t.trial_id] + rng.normal(0, 0.3) + 1.0 / step)
            action = sched.on_trial_result(None, t, {"step": step, "val_loss": value})
            decisions.append((step, action))
            if action == TrialScheduler.STOP:
                alive.discard(t.trial_id)
    events = [json.loads(line) for line in (tmp_path / RUNGS_FILE).read_text().splitlines()]
    assert {e["milestone"] for e in events} == {2, 4, 8}        # 16 = max_t is the end, not a rung
    assert all(e["stopped"] == e["below_cutoff"] for e in events), events
    assert any(e["stopped"] for e in events) and not all(e["stopped"] for e in events)
    stops_recorded = sum(e["stopped"] for e in events)
    stops_by_ray = sum(a == TrialScheduler.STOP for s, a in decisions if s < 16)   # at max_t (16) every trial stops
    assert stops_recorded == stops_by_ray
    for e in events:                                             # cut-offs in the metric's units, on the right side
        if e["stopped"]:
            assert (e["metric"] > e["cutoff"]) if mode == "min" else (e["metric"] < e["cutoff"])


def test_rung_book_quantile_matches_the_asha_paper():
    book = RungBook(grace_period=1, max_t=9, eta=3, mode="min")
    assert book.milestones == [1, 3, 9]
    for i, v in enumerate([0.1, 0.2, 0.3, 0.4]):
        book.observe(f"a{i}", 1, v)
    event = book.observe("late", 1, 0.25)
    # the 1 - 1/3 quantile of the rewards -0.1..-0.4 is -0.2 (numpy's linear interpolation): loss cut-off 0.2
    assert event["cutoff"] == pytest.approx(0.2) and event["below_cutoff"]
    assert book.observe("late", 2, 0.1) is None                  # already recorded at rung 0, rung 1 not reached
