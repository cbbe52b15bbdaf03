"""What a running sweep tells the user and leaves for ``status``: three public Tune callbacks.

* :class:`ProgressPrinter`: one line per trial report, start and end, instead of Tune's periodic
  tables; trial start/end times go to ``trial_events.jsonl`` (start-up and efficiency benchmarks).
* :class:`TrialStateWriter`: ``trials.jsonl`` (each trial's id, status, parameters and folder),
  rewritten whenever a trial is added or changes status. ``status``, ``report`` and the end of a
  sweep read it, so they never depend on the layout of Tune's own experiment-state files.
* :class:`ResultsFileLogger`: Tune's ``result.json`` writer, keeping a resumed trial's earlier results.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ray.tune import Callback
from ray.tune.logger import JsonLoggerCallback

from tune_app.sweep.rundir import RESULTS_FILE, TRIALS_FILE, RunDir
from tune_app.sweep.space import trial_name


class TrialNamer:
    """Names trials after their parameters (``lr=5e-05,kl_weight=10``); picklable for tuner.pkl."""

    def __init__(self, keys: list[str]):
        self.keys = keys

    def __call__(self, trial) -> str:
        return trial_name(trial.config, self.keys)


class TrialDirNamer(TrialNamer):
    def __call__(self, trial) -> str:
        return f"{trial.trial_id}_{trial_name(trial.config, self.keys)}"[:120]


class ProgressPrinter(Callback):
    def __init__(self, keys: list[str], total_steps: int, metric: str, events_file: str | None):
        self.keys, self.total_steps, self.metric, self.events_file = keys, total_steps, metric, events_file
        self.start = time.monotonic()

    def _event(self, trial, event: str) -> None:
        if self.events_file:
            with open(self.events_file, "a") as f:
                f.write(json.dumps({"trial_id": trial.trial_id, "event": event, "time": time.time()}) + "\n")

    def _say(self, trial, text: str) -> None:
        print(f"[{time.monotonic() - self.start:6.1f}s] {trial_name(trial.config, self.keys)}: {text}", flush=True)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._event(trial, "start")
        self._say(trial, "started")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        parts = [f"step {result.get('step', '?')}/{self.total_steps}"]
        parts += [f"{k} {result[k]:.4g}" for k in ("loss", self.metric) if isinstance(result.get(k), (int, float))]
        self._say(trial, " | ".join(parts))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._event(trial, "complete")
        self._say(trial, "finished")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._event(trial, "error")
        self._say(trial, f"FAILED (see {trial.local_path}/error.txt)")


class TrialStateWriter(Callback):
    """Keeps ``<run dir>/trials.jsonl`` equal to Tune's list of trials and their statuses, as of the
    end of every controller step (where Tune settles a trial's transition)."""

    def __init__(self, run_dir: str, keys: list[str]):
        self.run_dir, self.keys = run_dir, keys
        self._written: tuple | None = None

    def _write(self, trials) -> None:
        # Called at every controller step: compare ids and statuses first, build the file only on a change.
        seen = tuple((t.trial_id, t.status) for t in trials)
        if seen == self._written:
            return
        rows = [{"trial_id": t.trial_id, "status": t.status, "params": {k: t.config.get(k) for k in self.keys},
                 "dir": Path(t.local_path).name if t.local_path else None} for t in trials]
        RunDir(self.run_dir).write_text(TRIALS_FILE, "".join(json.dumps(r, default=str) + "\n" for r in rows))
        self._written = seen

    def on_step_end(self, iteration, trials, **info):
        self._write(trials)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._write(trials)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._write(trials)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._write(trials)

    # Not on_experiment_end: after an interruption Tune marks the trials it stops there TERMINATED,
    # though resume continues them (its saved state, like this file, has them as they were).


class ResultsFileLogger(JsonLoggerCallback):
    """Tune's ``result.json`` writer (Tune adds none of its own when one is given), which keeps what a
    resumed trial reported before the interruption.

    Tune writes a trial's results on the driver's local disk and copies them to the run directory.
    A resumed sweep runs in a new Ray session with an empty local folder, and Tune fetches the
    earlier file back only for trials that *Tune* holds a checkpoint of; here Ray Train checkpoints,
    so Tune would start the file afresh and its next copy would replace the one in the run
    directory: a trial's curve would lose everything before the resume, all of it for a trial resumed
    from its final checkpoint. Before Tune opens a trial's local file, this puts the run directory's
    copy there when the local one is missing (:func:`tune_app.sweep.results.continuous` joins the
    rows after the resume to the ones before).
    """

    def __init__(self, run_dir: str):
        super().__init__()
        self.run_dir = run_dir

    def log_trial_start(self, trial) -> None:
        local = Path(trial.local_path) / RESULTS_FILE
        if not local.exists():
            earlier = RunDir(self.run_dir).read_text(f"{local.parent.name}/{RESULTS_FILE}") or ""
            earlier = earlier[:earlier.rfind("\n") + 1]          # whole lines only: a copy may have been cut short
            if earlier:
                local.parent.mkdir(parents=True, exist_ok=True)
                local.write_text(earlier)
        super().log_trial_start(trial)
