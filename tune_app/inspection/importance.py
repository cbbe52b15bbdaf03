"""Which swept parameters matter: Optuna's importance evaluator on an in-memory study of the finished trials.

The study is built from the trials that ran to the end (``TERMINATED`` and not stopped early; as in
Optuna, early-stopped and failed trials are left out), each with its parameters and its last metric,
once there are :data:`MIN_FINISHED` of them. Parameters with a single value among them cannot matter
and are left out. The evaluator is PED-ANOVA (``optuna.importance.PedAnovaImportanceEvaluator``), which
needs no scikit-learn; importances sum to 1.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

from tune_app.sweep.results import Run

MIN_FINISHED = 4


def _distribution(values: list[Any]):
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        lo, hi = float(min(values)), float(max(values))
        return FloatDistribution(lo, hi, log=lo > 0 and hi / lo >= 10), [float(v) for v in values]
    choices = sorted({str(v) for v in values})
    return CategoricalDistribution(choices), [str(v) for v in values]


def param_importance(run: Run) -> dict[str, Any]:
    """``{"finished": N, "needed": 4, "evaluator": ..., "importances": {param: share} | None}``."""
    finished = [t for t in run.trials if t.state == "TERMINATED" and not t.stopped_early
                and t.last(run.metric) is not None and math.isfinite(t.last(run.metric))]
    out: dict[str, Any] = {"finished": len(finished), "needed": MIN_FINISHED, "evaluator": "PED-ANOVA (Optuna)", "importances": None}
    varying = [p for p in run.parameters if len({repr(t.params.get(p)) for t in finished}) > 1]
    if len(finished) < MIN_FINISHED or not varying:
        return out
    import optuna
    from optuna.importance import PedAnovaImportanceEvaluator, get_param_importances

    columns = {p: _distribution([t.params.get(p) for t in finished]) for p in varying}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize" if run.mode == "min" else "maximize")
    study.add_trials([optuna.trial.create_trial(params={p: columns[p][1][i] for p in varying},
                                                distributions={p: columns[p][0] for p in varying}, value=t.last(run.metric))
                      for i, t in enumerate(finished)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                       # PED-ANOVA is marked experimental
        importances = get_param_importances(study, evaluator=PedAnovaImportanceEvaluator())
    out["importances"] = {p: float(v) for p, v in importances.items()}
    return out
