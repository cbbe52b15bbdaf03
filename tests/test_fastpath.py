"""The Ray seam: private Ray names only in tune_app/fastpath, the version gate, checked swaps."""

import ast
import logging
import re
import types
from pathlib import Path

import pytest

from tune_app import fastpath
from tune_app.fastpath import compat
from tune_app.fastpath.swap import SwapMismatch, swapped

PACKAGE = Path(__file__).resolve().parents[1] / "tune_app"
PRIVATE_MODULE = re.compile(r"\bray(?:\.\w+)*\._\w+")      # "ray._private...", "ray.train.v2._internal..." (logger names too)


def _private_ray_uses(path: Path) -> list[str]:
    """Imports of ``ray`` modules or names with a leading underscore, private attributes of Ray objects
    reached through an imported Ray name (``TuneReportCallback._x``, ``ray._private``), and strings that
    name a private Ray module (a logger looked up by name)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found, ray_names = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "ray":
                    ray_names.add((alias.asname or alias.name).split(".")[0])
                    if any(part.startswith("_") for part in alias.name.split(".")):
                        found.append(f"{path.name}:{node.lineno} import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "ray":
            if any(part.startswith("_") for part in node.module.split(".")):
                found.append(f"{path.name}:{node.lineno} from {node.module}")
            for alias in node.names:
                ray_names.add(alias.asname or alias.name)
                if alias.name.startswith("_"):
                    found.append(f"{path.name}:{node.lineno} from {node.module} import {alias.name}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and PRIVATE_MODULE.search(node.value):
            found.append(f"{path.name}:{node.lineno} names {PRIVATE_MODULE.search(node.value).group(0)}")
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in ray_names:
                found.append(f"{path.name}:{node.lineno} {root.id}...{node.attr}")
    return found


def test_no_private_ray_name_outside_the_seam():
    outside = [p for p in PACKAGE.rglob("*.py") if "fastpath" not in p.relative_to(PACKAGE).parts]
    assert len(outside) > 30
    uses = [use for p in outside for use in _private_ray_uses(p)]
    assert not uses, uses


def test_the_scan_sees_private_names_where_they_are():
    """The scanner itself: the seam's modules do use private names, and it finds them."""
    seam = [use for p in (PACKAGE / "fastpath").glob("*.py") for use in _private_ray_uses(p)]
    assert any("ray.train.v2._internal" in use for use in seam)
    assert any("_logger_actor_cls" in use for use in seam)


def test_fast_only_on_a_tested_ray_and_never_when_asked_not_to(monkeypatch):
    monkeypatch.delenv(fastpath.ENV, raising=False)
    assert fastpath.choose().fast                                   # this venv runs a tested Ray
    old = fastpath.choose(version="2.55.1")
    assert not old.fast and "2.55.1" in old.why and "2.60.x" in old.why
    assert not fastpath.choose(version="2.61.0").fast
    assert "stock Ray mode" in old.line() and "\n" not in old.line()
    assert fastpath.choose(fast_start=False).why == "ray.fast_start: false"
    monkeypatch.setenv(fastpath.ENV, "0")
    assert fastpath.choose().why == "TUNE_APP_FAST=0"


def test_a_mismatch_in_rays_internals_falls_back_to_stock(monkeypatch):
    monkeypatch.delenv(fastpath.ENV, raising=False)
    from ray.tune import tune as tune_module

    monkeypatch.setattr(tune_module, "TuneController", type("SomethingElse", (), {}))
    mode = fastpath.choose()
    assert not mode.fast and "ray.tune.tune.TuneController" in mode.why
    monkeypatch.undo()
    from ray.tune.execution.tune_controller import TuneController

    monkeypatch.delattr(TuneController, "_set_trial_status")
    mode = fastpath.choose()
    assert not mode.fast and "_set_trial_status" in mode.why


def test_a_swap_checks_the_name_it_replaces():
    class Expected:
        pass

    module = types.ModuleType("m")
    module.Name = Expected
    with swapped(module, "Name", "stand-in", Expected) as real:
        assert module.Name == "stand-in" and real is Expected
    assert module.Name is Expected
    module.Name = object
    with pytest.raises(SwapMismatch, match="m.Name"):
        with swapped(module, "Name", "stand-in", Expected):
            pass
    assert module.Name is object


def test_durable_state_falls_back_when_the_controller_name_changed(monkeypatch, caplog):
    from ray.tune import tune as tune_module

    from tune_app.fastpath.tune_state import durable_state

    other = type("OtherController", (), {})
    monkeypatch.setattr(tune_module, "TuneController", other)
    with caplog.at_level(logging.WARNING, logger="tune_app.fastpath"), durable_state():
        assert tune_module.TuneController is other                # left alone: Ray's own path runs
    assert "Tune's own period" in caplog.text


def test_every_expected_private_name_exists_on_this_ray():
    assert compat.check() is None


def test_stock_mode_uses_rays_own_classes():
    from ray.air.integrations.mlflow import MLflowLoggerCallback
    from ray.air.integrations.wandb import WandbLoggerCallback
    from ray.train.torch import TorchTrainer

    stock = fastpath.Mode(False, "test")
    assert fastpath.trainer_cls(stock) is TorchTrainer
    assert fastpath.wandb_callback_cls(stock) is WandbLoggerCallback
    assert fastpath.mlflow_callback_cls(stock) is MLflowLoggerCallback
    assert not fastpath.reuse_actors(stock)
    fast = fastpath.Mode(True)
    assert issubclass(fastpath.trainer_cls(fast), TorchTrainer) and fastpath.trainer_cls(fast) is not TorchTrainer
    assert issubclass(fastpath.wandb_callback_cls(fast), WandbLoggerCallback)
    assert issubclass(fastpath.mlflow_callback_cls(fast), MLflowLoggerCallback)


def test_rays_transient_resource_request_warning_is_one_line_and_other_tracebacks_stay():
    """Under CPU load the Train controller's resource request times out and Ray logs "safe to ignore"
    with a traceback each time; where the controller runs in the trial process, that is one line."""
    import io

    compat.one_line_transient_warnings()
    compat.one_line_transient_warnings()                         # idempotent: one filter
    logger = logging.getLogger(compat.RESOURCE_REQUEST_LOGGERS[0])
    assert sum(type(f).__name__ == "_OneLineTransientWarning" for f in logger.filters) == 1
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    logger.addHandler(handler)
    try:
        for text in ("Failed to send resource request for train-1. If this only happens transiently during network "
                     "partition or CPU being overloaded, it's safe to ignore this error.", "a real problem"):
            try:
                raise TimeoutError("Get timed out: some object(s) not ready.")
            except TimeoutError:
                logger.warning(text, exc_info=True)
    finally:
        logger.removeHandler(handler)
    first, rest = out.getvalue().split("\n", 1)
    assert "safe to ignore" in first and first.endswith("(TimeoutError: Get timed out: some object(s) not ready.)")
    assert rest.startswith("a real problem\nTraceback (most recent call last):") and rest.count("Traceback") == 1
