"""The process a run trains in: its age (``started_at``), its memory (``rss_mb``) and handing back what
a finished run freed (``release_memory``).

A kept Ray Train worker runs one trial after another. Each run's model, optimizer and batches are
freed when it ends (nothing of them stays reachable), but glibc's allocator keeps the freed pages
in its heaps and thread arenas: measured on act_tiny, a reused worker grew ~50 MB a trial
(0.78 GB after its 1st, 3.4 GB after its 50th) with no tensor alive between trials, and one
``malloc_trim(0)`` brought it back to ~0.6 GB. :func:`release_memory` runs after every run.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os

import torch


def rss_mb() -> float:
    """This process's resident memory in MB (Linux ``/proc``; elsewhere the peak, from ``getrusage``)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def started_at() -> float | None:
    """Unix time this process started (Linux ``/proc``; None elsewhere): a cold trial's start-up
    splits at it into "Ray made the process" and "the process got ready"."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])        # field 22, after the command name
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def _malloc_trim():
    """glibc's ``malloc_trim``, or None where the C library has none (macOS, musl)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return getattr(libc, "malloc_trim", None)


_TRIM = _malloc_trim()


def release_memory() -> None:
    """Collect cycles, empty CUDA's cache and return free heap pages to the OS."""
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    if _TRIM is not None:
        _TRIM(0)
