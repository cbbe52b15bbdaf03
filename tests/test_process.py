"""The process a run trains in: its start time, and handing freed heap back after a run."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tune_app.train.process import _TRIM, release_memory, rss_mb, started_at


def test_started_at_is_when_this_process_started():
    begun = started_at()
    assert begun is not None and begun <= time.time()
    # A child started now reports a start time after ours and within a second or so of now.
    child = subprocess.run([sys.executable, "-c", "from tune_app.train.process import started_at; print(started_at())"],
                           capture_output=True, text=True, check=True, env={**os.environ})
    assert begun <= float(child.stdout) <= time.time() and time.time() - float(child.stdout) < 60


@pytest.mark.skipif(_TRIM is None, reason="the C library has no malloc_trim")
def test_release_memory_returns_a_fragmented_heap():
    """Freed blocks pinned between live ones stay in the heap (what a reused worker grew by);
    release_memory hands their pages back."""
    blocks = [bytes(2048) for _ in range(150_000)]          # ~300 MB in malloc'd (not pymalloc) blocks
    kept = blocks[::64]                                      # pins the heap: free() alone cannot shrink it
    del blocks
    before = rss_mb()
    release_memory()
    after = rss_mb()
    assert len(kept) and before - after > 150, (before, after)
