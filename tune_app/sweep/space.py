"""Sweep files -> Ray Tune: parameter space, search algorithm, scheduler, sweep settings.

A sweep file uses the keys of a W&B sweep file, so an existing one works::

    method: grid                     # grid | random | bayes (Optuna TPE)
    metric: {name: val_loss, goal: minimize}
    parameters:                      # names are dotted training-config keys
      training.lr: {values: [1.0e-5, 5.0e-5, 1.0e-4]}
      training.kl_weight: {distribution: categorical, values: [10, 1]}
      model.chunk_size: {value: 20}
    early_terminate: {type: hyperband, min_iter: 100, eta: 2}   # -> ASHA, in optimizer steps
    run_cap: 20                      # samples for random/bayes

plus what W&B has no key for: ``base_config`` (a training config, relative to this file),
``overrides`` (dotted keys applied to the base config of every trial) and a ``ray:`` section with
the training config's own ``ray`` keys for each trial (``num_workers``, ``cpus_per_worker``,
``gpus_per_worker``) and the sweep's (``name``, ``storage_path``, ``max_concurrent_trials``).

Everything is checked before anything starts; a mistake is one :class:`UserError` line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tune_app.checks import check_name, is_uri
from tune_app.config import HINTS, Config, build_config, check_value, parse_override
from tune_app.errors import UserError, did_you_mean
from tune_app.yamlio import load_yaml

TOP_KEYS = ["method", "metric", "parameters", "early_terminate", "run_cap", "base_config", "overrides", "ray",
            # W&B keys accepted for compatibility: name/project/entity are used, the rest are ignored.
            "name", "description", "project", "entity", "program", "command"]
METHODS = ("grid", "random", "bayes")
PARAM_KEYS = ["value", "values", "distribution", "min", "max", "q", "mu", "sigma", "probabilities"]
DISTRIBUTIONS = ("constant", "categorical", "int_uniform", "uniform", "q_uniform", "log_uniform",
                 "log_uniform_values", "q_log_uniform_values", "normal", "q_normal")
TRIAL_RAY_KEYS = ("num_workers", "cpus_per_worker", "gpus_per_worker")
SWEEP_RAY_KEYS = ("name", "storage_path", "max_concurrent_trials")
# The trial-config entry that lists the swept keys (W&B shows it in the run config; MLflow as a param and a tag).
SWEEP_PARAMS_KEY = "sweep_params"
HYPERBAND_KEYS = ["type", "min_iter", "max_iter", "eta", "s", "strict"]


@dataclass
class Sweep:
    """A validated sweep, ready for :mod:`tune_app.sweep.run` to run."""

    source: Path
    name: str
    method: str
    metric: str
    mode: str                              # "min" | "max"
    base: Config                           # base config with overrides and the ray: trial keys applied
    parameters: dict[str, dict[str, Any]]  # dotted key -> normalised W&B spec
    num_samples: int
    max_concurrent_trials: int | None
    storage_path: str | None
    early_terminate: dict[str, Any] | None = None
    raw: dict = field(default_factory=dict)
    base_path: Path | None = None          # the base_config file, when the sweep names one

    def param_space(self) -> dict[str, Any]:
        """Tune's param_space: one entry per swept key (dotted names are kept as they are), every other
        key of the base config as a constant, and ``sweep_params`` (the swept keys).

        A trial's config is then its whole resolved training config (base + overrides + swept values,
        secrets masked), which Tune's W&B and MLflow callbacks log as the run's config and params and
        writes into the trial folder: a trial's tracker page alone is enough to rerun it, in both modes."""
        fixed = {key: value for key, value in self.base.flat().items() if key not in self.parameters}
        swept = {key: _domain(key, spec, self.method) for key, spec in self.parameters.items()}
        return {**fixed, **swept, SWEEP_PARAMS_KEY: list(self.parameters)}

    def grid_size(self) -> int:
        if self.method != "grid":
            return self.num_samples
        return math.prod(len(s["values"]) for s in self.parameters.values() if "values" in s)

    def trial_configs(self) -> list[Config]:
        """Configs that bound the trials: the base, each swept value (or range end) alone, and the
        largest batch with the most workers together (what data-size checks need)."""
        def candidates(spec: dict[str, Any]) -> list[Any]:
            if "values" in spec or "value" in spec:
                return list(spec.get("values", [])) + ([spec["value"]] if "value" in spec else [])
            return [v for v in (spec.get("min"), spec.get("max")) if isinstance(v, int) and spec["distribution"] == "int_uniform"]

        base = self.base.to_dict()
        configs = [self.base]
        for key, spec in self.parameters.items():
            configs += [build_config(base, source=str(self.source), overrides={key: v}) for v in candidates(spec)]
        largest = {k: max(candidates(self.parameters[k])) for k in ("training.batch_size", "ray.num_workers")
                   if k in self.parameters and candidates(self.parameters[k])}
        if len(largest) == 2:
            configs.append(build_config(base, source=str(self.source), overrides=largest))
        return configs

    def scheduler(self, run_dir: str):
        """ASHA for ``early_terminate`` (its rung decisions recorded in ``run_dir``, see :mod:`.rungs`), else None."""
        if not self.early_terminate:
            return None
        from tune_app.sweep.rungs import RecordingASHA

        et = self.early_terminate
        return RecordingASHA(run_dir=run_dir, metric=self.metric, mode=self.mode, time_attr="step", grace_period=et["min_iter"],
                             reduction_factor=et["eta"], max_t=et.get("max_iter") or self.base.training.steps)

    def search_alg(self):
        if self.method != "bayes":
            return None
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(seed=self.base.training.seed)


def swept_values(trial_config: dict[str, Any]) -> dict[str, Any]:
    """The swept keys' values of a trial's config (all of it for a trial of a sweep started before
    trial configs held the whole training config)."""
    keys = trial_config.get(SWEEP_PARAMS_KEY)
    if keys is None:
        return dict(trial_config)
    return {key: trial_config[key] for key in keys}


def _fail(source: Path, msg: str) -> UserError:
    return UserError(f"{source}: {msg}")


def _domain(key: str, spec: dict[str, Any], method: str):
    from ray import tune

    dist = spec["distribution"]
    if dist == "constant":
        return spec["value"]
    if dist == "categorical":
        return tune.grid_search(spec["values"]) if method == "grid" else tune.choice(spec["values"])
    lo, hi = spec.get("min"), spec.get("max")
    if dist == "int_uniform":
        return tune.randint(lo, hi + 1)          # W&B's max is inclusive
    if dist == "uniform":
        return tune.uniform(lo, hi)
    if dist == "q_uniform":
        return tune.quniform(lo, hi, spec.get("q", 1.0))
    if dist == "log_uniform":                    # W&B: min/max are natural-log exponents
        return tune.loguniform(math.exp(lo), math.exp(hi))
    if dist == "log_uniform_values":
        return tune.loguniform(lo, hi)
    if dist == "q_log_uniform_values":
        return tune.qloguniform(lo, hi, spec.get("q", 1.0))
    if dist == "normal":
        return tune.randn(spec.get("mu", 0.0), spec.get("sigma", 1.0))
    if dist == "q_normal":
        return tune.qrandn(spec.get("mu", 0.0), spec.get("sigma", 1.0), spec.get("q", 1.0))
    raise AssertionError(dist)


def _check_parameter(source: Path, key: str, spec: Any, method: str) -> dict[str, Any]:
    where = f"parameters.{key}"
    if key not in HINTS:
        raise _fail(source, f"{where}: '{key}' is not a training-config key{did_you_mean(key, list(HINTS))}")
    if not isinstance(spec, dict):
        raise _fail(source, f"{where}: expected a mapping such as {{values: [...]}} or {{value: X}}, got {spec!r}")
    for k, v in spec.items():
        if k not in PARAM_KEYS:
            # A list value can only belong to 'values' (or 'probabilities'), whatever the spelling.
            options = ["values", "probabilities"] if isinstance(v, list) else PARAM_KEYS
            raise _fail(source, f"{where}: unknown key '{k}'{did_you_mean(str(k), options, True)}")
    spec = dict(spec)
    dist = spec.get("distribution")
    if dist is None:  # W&B's inference
        if "value" in spec:
            dist = "constant"
        elif "values" in spec:
            dist = "categorical"
        elif "min" in spec and "max" in spec:
            ints = all(isinstance(spec[b], int) and not isinstance(spec[b], bool) for b in ("min", "max"))
            dist = "int_uniform" if ints else "uniform"
        else:
            raise _fail(source, f"{where}: give 'value', 'values', or 'min' and 'max' (with a 'distribution')")
    if dist not in DISTRIBUTIONS:
        raise _fail(source, f"{where}: unsupported distribution '{dist}'{did_you_mean(str(dist), list(DISTRIBUTIONS), True)}")
    spec["distribution"] = dist
    label = f"{source} {where}"
    if dist == "constant":
        if "value" not in spec:
            raise _fail(source, f"{where}: distribution 'constant' needs 'value'")
        spec["value"] = check_value(key, spec["value"], label)
    elif dist == "categorical":
        values = spec.get("values")
        if not isinstance(values, list) or not values:
            raise _fail(source, f"{where}: 'values' must be a non-empty list, got {values!r}")
        spec["values"] = [check_value(key, v, label) for v in values]
        if len({repr(v) for v in spec["values"]}) != len(values):
            raise _fail(source, f"{where}: 'values' lists the same value twice")
    else:
        if method == "grid":
            raise _fail(source, f"{where}: method 'grid' needs a 'values' list, not distribution '{dist}'; "
                        "use method: random or bayes for distributions")
        if dist not in ("normal", "q_normal"):
            for bound in ("min", "max"):
                if bound not in spec:
                    raise _fail(source, f"{where}: distribution '{dist}' needs '{bound}'")
                if not isinstance(spec[bound], (int, float)) or isinstance(spec[bound], bool):
                    raise _fail(source, f"{where}: '{bound}' must be a number, got {spec[bound]!r}")
            if spec["min"] > spec["max"]:
                raise _fail(source, f"{where}: min ({spec['min']}) is greater than max ({spec['max']})")
            if dist in ("log_uniform_values", "q_log_uniform_values") and spec["min"] <= 0:
                raise _fail(source, f"{where}: '{dist}' needs min > 0, got {spec['min']}")
            sample = spec["min"] if dist != "log_uniform" else math.exp(spec["min"])
            if dist == "int_uniform" and not all(isinstance(spec[b], int) for b in ("min", "max")):
                raise _fail(source, f"{where}: int_uniform needs integer min and max")
            check_value(key, int(sample) if dist == "int_uniform" else float(sample), label)
    return spec


def _check_early_terminate(source: Path, et: Any) -> dict[str, Any] | None:
    if et is None:
        return None
    if not isinstance(et, dict):
        raise _fail(source, f"early_terminate: expected a mapping with type: hyperband, got {et!r}")
    for k in et:
        if k not in HYPERBAND_KEYS:
            raise _fail(source, f"early_terminate: unknown key '{k}'{did_you_mean(str(k), HYPERBAND_KEYS, True)}")
    if et.get("type") != "hyperband":
        raise _fail(source, f"early_terminate.type: only 'hyperband' (run as ASHA) is supported, got {et.get('type')!r}")
    out = {"type": "hyperband", "min_iter": et.get("min_iter", 1), "eta": et.get("eta", 3), "max_iter": et.get("max_iter")}
    for k in ("min_iter", "eta") + (("max_iter",) if out["max_iter"] is not None else ()):
        if not isinstance(out[k], int) or isinstance(out[k], bool) or out[k] < 1:
            raise _fail(source, f"early_terminate.{k}: must be a positive integer (optimizer steps), got {out[k]!r}")
    if out["eta"] < 2:
        raise _fail(source, f"early_terminate.eta: must be >= 2, got {out['eta']}")
    return out


def load_sweep(path: str | Path, overrides: list[str] | None = None, name: str | None = None,
               storage_path: str | None = None, max_concurrent: int | None = None) -> Sweep:
    """Read and check a sweep file; CLI arguments (``--override``, ``--name``, ...) win over the file."""
    source = Path(path)
    raw = load_yaml(source, "search-space file")
    for key in raw:
        if key not in TOP_KEYS:
            raise _fail(source, f"unknown key '{key}'{did_you_mean(str(key), TOP_KEYS, True)}")

    method = raw.get("method", "grid")
    if method not in METHODS:
        raise _fail(source, f"method: '{method}' is not one of {', '.join(METHODS)}")
    metric = raw.get("metric", {"name": "val_loss", "goal": "minimize"})
    if not isinstance(metric, dict) or not isinstance(metric.get("name"), str):
        raise _fail(source, "metric: expected {name: METRIC, goal: minimize|maximize}")
    for k in metric:
        if k not in ("name", "goal", "target"):
            raise _fail(source, f"metric: unknown key '{k}'{did_you_mean(str(k), ['name', 'goal', 'target'], True)}")
    goal = metric.get("goal", "minimize")
    if goal not in ("minimize", "maximize"):
        raise _fail(source, f"metric.goal: '{goal}' must be minimize or maximize")

    params = raw.get("parameters")
    if not isinstance(params, dict) or not params:
        raise _fail(source, "parameters: give at least one dotted config key to sweep, e.g. training.lr: {values: [1.0e-5, 1.0e-4]}")
    parameters = {str(k): _check_parameter(source, str(k), v, method) for k, v in params.items()}

    ray_section = raw.get("ray") or {}
    if not isinstance(ray_section, dict):
        raise _fail(source, f"ray: expected a mapping, got {ray_section!r}")
    allowed_ray = list(TRIAL_RAY_KEYS + SWEEP_RAY_KEYS)
    for k in ray_section:
        if k not in allowed_ray:
            raise _fail(source, f"ray: unknown key '{k}'{did_you_mean(str(k), allowed_ray, True)}")

    base_ref = raw.get("base_config")
    base_path = None
    if base_ref is not None:
        base_path = (source.parent / str(base_ref)).resolve()
        if not base_path.is_file():
            raise _fail(source, f"base_config: {base_path} does not exist (paths are relative to the sweep file)")
    file_overrides = raw.get("overrides") or {}
    if isinstance(file_overrides, list):
        file_overrides = dict(parse_override(str(o)) for o in file_overrides)
    if not isinstance(file_overrides, dict):
        raise _fail(source, "overrides: expected a mapping of dotted config keys to values")
    trial_ray = {f"ray.{k}": ray_section[k] for k in TRIAL_RAY_KEYS if k in ray_section}
    cli = dict(parse_override(o) for o in (overrides or []))

    base_raw = load_yaml(base_path, "base config") if base_path else {}
    base_dir = base_path.parent if base_path else source.parent
    # Order of precedence: base config < sweep overrides < sweep ray: keys < --override.
    merged = build_config(base_raw, source=str(base_path or source), base_dir=base_dir,
                          overrides={**{str(k): v for k, v in file_overrides.items()}, **trial_ray},
                          override_source=f"{source} overrides", override_base_dir=source.parent)
    base = build_config(merged.to_dict(), source=str(source), overrides=cli)
    swept_and_overridden = sorted(set(parameters) & set(cli))
    if swept_and_overridden:
        raise UserError(f"--override {swept_and_overridden[0]}: this key is swept by {source}; remove it from the sweep or the override")
    # Every value of every parameter must make a valid config with the base (dim_model % n_heads, ...).
    for key, spec in parameters.items():
        for value in spec.get("values", []) + ([spec["value"]] if "value" in spec else []):
            build_config(base.to_dict(), source=str(source), overrides={key: value},
                         override_source=f"{source} parameters")

    if metric["name"].startswith("val_") and base.data.val_fraction == 0:
        raise _fail(source, f"metric.name: '{metric['name']}' needs validation episodes but data.val_fraction is 0")

    run_cap = raw.get("run_cap")
    if run_cap is not None and (not isinstance(run_cap, int) or isinstance(run_cap, bool) or run_cap < 1):
        raise _fail(source, f"run_cap: must be a positive integer, got {run_cap!r}")
    if method == "grid":
        num_samples = 1
        size = math.prod(len(s.get("values", [0])) for s in parameters.values())
        if run_cap is not None and run_cap < size:
            raise _fail(source, f"run_cap ({run_cap}) is smaller than the grid ({size} combinations); "
                        "drop run_cap or use method: random")
    else:
        num_samples = run_cap or 10

    mct = max_concurrent if max_concurrent is not None else ray_section.get("max_concurrent_trials")
    if mct is not None and (not isinstance(mct, int) or isinstance(mct, bool) or mct < 1):
        raise _fail(source, f"ray.max_concurrent_trials: must be a positive integer, got {mct!r}")
    sweep_name = name if name is not None else ray_section.get("name") or raw.get("name") or source.stem
    check_name(sweep_name, "--name" if name is not None else f"{source}: name")
    if storage_path is not None and not str(storage_path).strip():
        raise UserError("--storage: empty; give a folder or a bucket URI (or leave the flag out for ./runs)")
    storage = storage_path or ray_section.get("storage_path")
    if storage and not is_uri(storage) and not Path(str(storage)).is_absolute() and not storage_path:
        storage = str((source.parent / str(storage)).resolve())   # file paths are relative to the file
    if raw.get("project") and "wandb.project" not in cli:
        base.wandb.project = str(raw["project"])
    if raw.get("entity") and "wandb.entity" not in cli:
        base.wandb.entity = str(raw["entity"])
    return Sweep(source=source, name=sweep_name, method=method, metric=metric["name"],
                 mode="min" if goal == "minimize" else "max", base=base, parameters=parameters,
                 num_samples=num_samples, max_concurrent_trials=mct, storage_path=str(storage) if storage else None,
                 early_terminate=_check_early_terminate(source, raw.get("early_terminate")), raw=raw,
                 base_path=base_path)


def trial_name(params: dict[str, Any], keys: list[str]) -> str:
    """``lr=5e-05,kl_weight=10``: the swept keys' last parts and values."""
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return str(int(v)) if v.is_integer() and abs(v) < 1e15 else repr(v)
        return str(v).replace(" ", "")
    leaves = [k.rsplit(".", 1)[-1] for k in keys]
    # Two swept keys with the same last part (model.dropout vs ...) keep their full names.
    return ",".join(f"{leaf if leaves.count(leaf) == 1 else key}={fmt(params.get(key))}" for leaf, key in zip(leaves, keys, strict=False))
