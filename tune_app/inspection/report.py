"""``python -m tune_app report RUN_DIR``: one self-contained HTML file with a sweep's pictures.

Everything comes from :mod:`.results` (what Tune wrote; no training code, no cluster), so it works
on a finished sweep, one still running and one with failed trials. The page embeds the data as
JSON and draws the plots as SVG with a few lines of inline JavaScript: no network fetches, it opens
offline from a file. Shown: the sortable trials table, training/validation loss and learning-rate
curves per trial on shared axes, a parallel-coordinates plot of parameters against the metric, the
metric against each parameter, early-stopped (dashed, amber) and failed (red) trials, and the best
trial with its config and checkpoint, ASHA's rungs (who passed, who was stopped, against which
cut-off) and the parameter importance. ``python -m tune_app dashboard`` serves the same page live
(:mod:`.dashboard`).
"""

from __future__ import annotations

import html
import json
import math
import time
from importlib import resources
from pathlib import Path
from typing import Any

from tune_app.checks import check_writable_file
from tune_app.inspection.importance import param_importance
from tune_app.sweep.results import Run, load_run
from tune_app.sweep.rundir import RunDir

CURVE_KEYS = ("step", "loss", "val_loss", "lr", "lr_backbone", "l1_loss", "kl_loss")


def report_data(run_dir: str | Path, run: Run | None = None) -> dict:
    """The JSON the page draws from: the ``status --json`` summary, each trial's curves, ASHA's rung
    decisions and the parameter importance (``run``: the sweep already loaded)."""
    run = run or load_run(run_dir)
    summary = run.summary()
    by_id = {t.trial_id: t for t in run.trials}
    for row in summary["trials"]:
        row["history"] = [{k: r[k] for k in CURVE_KEYS if k in r} for r in by_id[row["trial_id"]].history]
    best_config = Path(run.path) / "best_config.yaml"
    summary.update(parameters=run.parameters, best_config=best_config.read_text() if best_config.is_file() else None,
                   in_progress=any(t.state in ("RUNNING", "PENDING") for t in run.trials),
                   generated=time.strftime("%Y-%m-%d %H:%M:%S"), rungs=run.rungs,
                   scheduler=run.scheduler, importance=param_importance(run))
    return summary


def finite(value: Any) -> Any:
    """``value`` with NaN/inf numbers replaced by None (JSON has no NaN; a browser's JSON.parse refuses it)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def to_json(data: dict) -> str:
    return json.dumps(finite(data), default=str)


def render_html(data: dict) -> str:
    """The page: the static report, or (``data["live"]`` set) the dashboard's, which polls for new data."""
    template = resources.files("tune_app.inspection").joinpath("report_template.html").read_text()
    payload = to_json(data).replace("</", "<\\/")       # safe inside <script>
    return template.replace("__TITLE__", html.escape(str(data["name"]))).replace("__DATA__", payload)


def write_report(run_dir: str | Path, output: str | Path | None = None) -> Path:
    """Write the report (atomically); the run is read and the output place checked before any write."""
    out = Path(output) if output else RunDir(run_dir).local_dir / "report.html"
    text = render_html(report_data(run_dir))
    check_writable_file(out, "-o")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        tmp.write_text(text)
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def extract_data(html_text: str) -> dict:
    """The embedded data of a written report (for tests and tools)."""
    start = html_text.index('<script type="application/json" id="sweep-data">') + len('<script type="application/json" id="sweep-data">')
    return json.loads(html_text[start:html_text.index("</script>", start)].replace("<\\/", "</"))
