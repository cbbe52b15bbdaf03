"""Point a module-level name at a stand-in for the duration of one call into Ray.

Ray creates a few objects through a module name with no hook to pass our own class: the Tune
controller (``ray.tune.tune.TuneController``, :mod:`tune_app.fastpath.tune_state`) and Train's
synchronization actor (:mod:`tune_app.fastpath.warm_workers`). Both swap that name only around the one
call that reads it and always put the original back.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import ModuleType
from typing import Any


@contextlib.contextmanager
def swapped(module: ModuleType, name: str, stand_in: Any) -> Iterator[Any]:
    """``module.name`` is ``stand_in`` inside the block; yields the original."""
    real = getattr(module, name)
    setattr(module, name, stand_in)
    try:
        yield real
    finally:
        setattr(module, name, real)
