"""Point a module-level name at a stand-in for the duration of one call into Ray.

Ray creates two objects through a module name with no hook to pass a class of our own: the Tune
controller (``ray.tune.tune.TuneController``, :mod:`tune_app.fastpath.tune_state`) and Train's
synchronization actor (:mod:`tune_app.fastpath.warm_workers`). A swap happens only when the name
still holds the class the stand-in was written for (:class:`SwapMismatch` otherwise, and the
caller runs Ray's own path), and always puts the original back.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import ModuleType
from typing import Any


class SwapMismatch(RuntimeError):
    """The name no longer holds the class the stand-in replaces."""


@contextlib.contextmanager
def swapped(module: ModuleType, name: str, stand_in: Any, expected: type) -> Iterator[Any]:
    """``module.name`` is ``stand_in`` inside the block; yields the original."""
    real = getattr(module, name, None)
    if real is not expected:
        raise SwapMismatch(f"{module.__name__}.{name} is {real!r}, not {expected.__module__}.{expected.__qualname__}")
    setattr(module, name, stand_in)
    try:
        yield real
    finally:
        setattr(module, name, real)
