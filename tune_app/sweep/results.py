"""Reading a sweep's run directory: trials, their metrics and checkpoints, the best one, the table.

Reads only what Tune and Ray Train wrote (plus ``sweep.json``); it never imports the training
code, so ``status`` works during a sweep, after it, and on a machine without the cluster.
"""

from __future__ import annotations

import atexit
import json
import math
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tune_app.errors import UserError
from tune_app.policy.manifest import complete_checkpoints, is_complete_fs
from tune_app.sweep import storage
from tune_app.sweep.rundir import RESULTS_FILE, RUNGS_FILE, SWEEP_FILE, TRIALS_FILE, RunDir, parse_jsonl
from tune_app.sweep.space import trial_name
from tune_app.yamlio import read_text


@dataclass
class TrialRecord:
    trial_id: str
    name: str
    params: dict[str, Any]
    state: str                      # PENDING | RUNNING | TERMINATED | ERROR | PAUSED
    history: list[dict[str, Any]] = field(default_factory=list)
    checkpoint: str | None = None   # latest checkpoint directory on disk
    total_steps: int | None = None

    @property
    def last_step(self) -> int | None:
        steps = [r["step"] for r in self.history if isinstance(r.get("step"), (int, float))]
        return int(max(steps)) if steps else None

    def values(self, metric: str) -> list[float]:
        return [r[metric] for r in self.history if isinstance(r.get(metric), (int, float)) and math.isfinite(r[metric])]

    def last(self, metric: str) -> float | None:
        vals = self.values(metric)
        return vals[-1] if vals else None

    @property
    def stopped_early(self) -> bool:
        return (self.state == "TERMINATED" and self.total_steps is not None and self.last_step is not None
                and self.last_step < self.total_steps)

    @property
    def display_state(self) -> str:
        return "STOPPED EARLY" if self.stopped_early else self.state

    def latest(self, key: str) -> Any:
        """``key`` of the latest report that has it (Tune adds ``node_ip``, ``pid``, ``time_total_s``, ``timestamp``)."""
        return next((r[key] for r in reversed(self.history) if r.get(key) is not None), None)


@dataclass
class Run:
    path: Path
    name: str
    metric: str
    mode: str
    parameters: list[str]
    total_steps: int | None
    trials: list[TrialRecord]
    rungs: list[dict[str, Any]] = field(default_factory=list)    # ASHA's decisions (sweep.rungs), if any
    scheduler: dict[str, Any] | None = None                      # the sweep file's early_terminate, if any

    def _key(self, value: float) -> float:
        return value if self.mode == "min" else -value

    def best_metric(self, trial: TrialRecord) -> float | None:
        vals = trial.values(self.metric)
        return min(vals, key=self._key) if vals else None

    def best(self) -> BestTrial | None:
        scored = [(t, t.last(self.metric)) for t in self.trials if t.last(self.metric) is not None and t.state != "ERROR"]
        if not scored:
            return None
        trial, value = min(scored, key=lambda tv: self._key(tv[1]))
        return BestTrial(trial.trial_id, trial.name, trial.params, value, trial.checkpoint)

    def summary(self) -> dict[str, Any]:
        best = self.best()
        stops = {e["trial_id"]: e for e in self.rungs if e.get("stopped")}
        return {
            "name": self.name, "metric": self.metric, "mode": self.mode, "path": str(self.path),
            "best_trial": best.trial_id if best else None,
            "trials": [{"trial_id": t.trial_id, "name": t.name, "params": t.params, "state": t.display_state,
                        "last_step": t.last_step, "metric": t.last(self.metric), "best_metric": self.best_metric(t),
                        "checkpoint": t.checkpoint, "best": best is not None and t.trial_id == best.trial_id,
                        "node": t.latest("node_ip"), "pid": t.latest("pid"), "elapsed_s": t.latest("time_total_s"),
                        "last_report_at": t.latest("timestamp"), "stopped_at": stops.get(t.trial_id)}
                       for t in self.trials],
        }


@dataclass
class BestTrial:
    trial_id: str
    name: str
    params: dict[str, Any]
    metric_last: float
    checkpoint: str | None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return parse_jsonl(path.read_text()) if path.is_file() else []


def continuous(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A trial's reports as one curve: where a resumed run reports from an earlier step again (it went
    back to its last checkpoint), the rows from that step on before the resume are dropped."""
    out: list[dict[str, Any]] = []
    for row in history:
        step = row.get("step")
        if isinstance(step, (int, float)):
            while out and isinstance(out[-1].get("step"), (int, float)) and out[-1]["step"] >= step:
                out.pop()
        out.append(row)
    return out


def _read_trials(trials_file: Path) -> list[dict[str, Any]]:
    """``trials.jsonl`` (:class:`tune_app.sweep.progress.TrialStateWriter`): it is replaced whole, so a
    line that does not parse is damage, not a write in progress."""
    rows = []
    for n, line in enumerate(trials_file.read_text().splitlines(), 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if not isinstance(row, dict) or "trial_id" not in row:
            raise UserError(f"{trials_file}: line {n} is not a trial record; the run directory is damaged")
        rows.append(row)
    return rows


def _latest_checkpoint(run_dir: Path, trial_id: str) -> str | None:
    ckpts = complete_checkpoints(run_dir / "trials" / f"train-{trial_id}")
    return str(ckpts[-1]) if ckpts else None


SWEEP_META_KEYS = ("name", "metric", "mode", "parameters")


def read_sweep_meta(meta_file: Path) -> dict[str, Any]:
    """``sweep.json``, checked: a damaged file is one line naming it."""
    try:
        meta = json.loads(read_text(meta_file, "sweep file"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{meta_file}: not valid JSON ({exc.msg}, line {exc.lineno}); the run directory is damaged") from None
    if not isinstance(meta, dict) or any(k not in meta for k in SWEEP_META_KEYS) or not isinstance(meta["parameters"], list):
        raise UserError(f"{meta_file}: not a tune_app sweep file (it needs {', '.join(SWEEP_META_KEYS)}); "
                        "the run directory is damaged")
    return meta


def load_run(run_dir: str | Path, mirror_dir: Path | None = None) -> Run:
    """Everything ``status``/``report`` show about a sweep directory (a local folder or a URI).
    ``mirror_dir``: for a URI, the local folder to copy it into (reused by callers that read it often);
    default: a new temporary folder removed at exit."""
    rd = RunDir(run_dir)
    if rd.remote:
        return _load_remote(rd, mirror_dir)
    return _load_local(rd.path)


def _load_remote(rd: RunDir, tmp: Path | None = None) -> Run:
    """A bucket run: its files but the checkpoints are copied to a local folder and read from there;
    checkpoints are named by their URI, complete ones only."""
    if not rd.exists(SWEEP_FILE):
        raise UserError(f"{rd}: not a tune_app sweep directory (no {SWEEP_FILE}); give the directory `run` printed")
    if tmp is None:
        tmp = Path(tempfile.mkdtemp(prefix="tune_app_run_"))
        atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    fs, root = rd.filesystem()
    checkpoints = storage.mirror(fs, root, tmp)
    run = _load_local(tmp)
    for trial in run.trials:
        complete = [c for c in checkpoints.get(f"trials/train-{trial.trial_id}", []) if is_complete_fs(fs, f"{root}/{c}")]
        trial.checkpoint = f"{rd}/{complete[-1]}" if complete else None
    return run


def _load_local(path: Path) -> Run:
    path = path.resolve()
    meta_file = path / SWEEP_FILE
    if not meta_file.is_file():
        raise UserError(f"{path}: not a tune_app sweep directory (no sweep.json); give the directory `run` printed, e.g. runs/lr_grid")
    meta = read_sweep_meta(meta_file)
    trials: list[TrialRecord] = []
    trials_file = path / TRIALS_FILE
    for entry in (_read_trials(trials_file) if trials_file.is_file() else []):
        trial_id = str(entry["trial_id"])
        params = {k: v for k, v in (entry.get("params") or {}).items() if k in meta["parameters"]}
        dirname = entry.get("dir") or ""
        history = continuous(_read_jsonl(path / dirname / RESULTS_FILE)) if dirname else []
        trials.append(TrialRecord(trial_id=trial_id, name=trial_name(params, meta["parameters"]), params=params,
                                  state=str(entry.get("status") or "PENDING"), history=history,
                                  checkpoint=_latest_checkpoint(path, trial_id), total_steps=meta.get("total_steps")))
    return Run(path=path, name=meta["name"], metric=meta["metric"], mode=meta["mode"], parameters=meta["parameters"],
               total_steps=meta.get("total_steps"), trials=trials, rungs=_read_jsonl(path / RUNGS_FILE),
               scheduler=(meta.get("raw") or {}).get("early_terminate"))


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.5g}"
    return str(v)


def render_table(run: Run) -> str:
    """Trial | params... | metric | best metric | steps | state, the best trial marked with '*'."""
    best = run.best()
    headers = ["", "trial", *[p.rsplit(".", 1)[-1] for p in run.parameters], run.metric, f"best {run.metric}", "steps", "state"]
    rows = []
    for t in run.trials:
        mark = "*" if best and t.trial_id == best.trial_id else ""
        rows.append([mark, t.trial_id, *[_fmt(t.params.get(p)) for p in run.parameters], _fmt(t.last(run.metric)),
                     _fmt(run.best_metric(t)), f"{_fmt(t.last_step)}/{_fmt(t.total_steps)}", t.display_state])
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)] if rows else [len(h) for h in headers]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=False)).rstrip()  # noqa: E731
    out = [f"sweep '{run.name}' ({len(run.trials)} trials, {run.metric} {'lower' if run.mode == 'min' else 'higher'} is better)",
           line(headers), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    return "\n".join(out)
