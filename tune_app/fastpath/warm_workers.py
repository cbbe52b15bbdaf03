"""Warm worker groups: a trial's process hands its finished Train run's workers to its next run.

Inside a sweep a trial's process (kept by Tune, ``reuse_actors=True``) drives one Train run after
another. Stock Train starts every run's workers from nothing: a placement group, a new Python
process per DDP worker that imports torch and Ray Train again (~3 CPU-s on a small machine), and
a synchronization actor (~0.85 CPU-s). :class:`WarmWorkerGroup` keeps those three when a run ends
cleanly and gives them to the next run of the same shape started from the same process. Each run
still gets a fresh train context, its own DDP process group (the torch backend sets one up again
and the kept group's is destroyed first) and its own storage; only processes are reused, the way
Tune reuses trial actors.

What is kept: only a group whose last poll said every worker finished without error, with nobody
inside a barrier. An aborted (early-stopped), failed or restarted group is shut down as stock.
Kept workers nobody claims within ``IDLE_S`` are shut down, so an idle process never holds CPUs
another trial waits for. When the process dies, Ray ends the actors it owns and the sweep's
janitor frees the placement group (:mod:`tune_app.fastpath.janitor` keeps watching a kept group).

Ray creates the synchronization actor through the ``SynchronizationActor`` name of its
worker-group module, with no hook; :meth:`WarmWorkerGroup._start_impl` points that name at the
kept actor for the duration of its own start (one run at a time per trial process).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
from typing import Any

import ray
from ray.train.v2._internal.execution.checkpoint.sync_actor import SynchronizationActor
from ray.train.v2._internal.execution.worker_group import worker_group as _wg_module
from ray.train.v2._internal.execution.worker_group.placement_group_handle import DefaultPlacementGroupHandle
from ray.train.v2._internal.execution.worker_group.state import WorkerGroupState
from ray.train.v2._internal.execution.worker_group.worker import Worker
from ray.train.v2._internal.execution.worker_group.worker_group import WorkerGroup

from tune_app.fastpath.swap import SwapMismatch, swapped

log = logging.getLogger("tune_app.fastpath.warm_workers")

IDLE_S = 10.0           # Tune hands a kept trial process its next trial within ~1-3 s
CHECK_TIMEOUT_S = 10.0


@dataclasses.dataclass
class Kept:
    """A finished run's workers, their placement group and synchronization actor, ready for reuse."""

    shape: tuple
    placement_group_handle: DefaultPlacementGroupHandle
    workers: list[Worker]
    sync_actor: Any

    def release(self) -> None:
        """Shut them down as stock Train would (actors killed, placement group removed)."""
        for actor in [w.actor for w in self.workers] + [self.sync_actor]:
            with contextlib.suppress(Exception):
                ray.kill(actor)
        with contextlib.suppress(Exception):
            self.placement_group_handle.shutdown()

    def usable(self) -> bool:
        """Every process alive and the barrier empty (asked, not assumed: a node may have gone)."""
        try:
            metadata = ray.get([w.actor.get_metadata.remote() for w in self.workers], timeout=CHECK_TIMEOUT_S)
            counter, required = ray.get([self.sync_actor.get_counter.remote(),
                                         self.sync_actor.get_required_ranks.remote()], timeout=CHECK_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - dead actor, lost node, timeout: start fresh
            log.info("kept workers are not usable (%s); starting new ones", exc)
            return False
        for worker, meta in zip(self.workers, metadata, strict=True):
            worker.metadata = meta
        return counter == 0 and required is None


class WarmPool:
    """At most one kept worker group per process, shut down if unclaimed for ``idle_s``."""

    def __init__(self, idle_s: float = IDLE_S):
        self._idle_s = idle_s
        self._lock = threading.Lock()
        self._kept: Kept | None = None
        self._timer: threading.Timer | None = None
        self.reused = 0            # runs started on kept workers (tests read it)

    def keep(self, kept: Kept) -> None:
        with self._lock:
            previous, self._kept = self._kept, kept
            self._restart_timer(kept)
        if previous is not None:
            previous.release()

    def take(self, shape: tuple) -> Kept | None:
        """The kept group when it has this shape and is usable; anything else kept is released."""
        with self._lock:
            kept, self._kept = self._kept, None
            self._restart_timer(None)
        if kept is None:
            return None
        if kept.shape != shape or not kept.usable():
            kept.release()
            return None
        self.reused += 1
        return kept

    def _restart_timer(self, kept: Kept | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if kept is not None:
            self._timer = threading.Timer(self._idle_s, self._expire, args=(kept,))
            self._timer.daemon = True
            self._timer.start()

    def _expire(self, kept: Kept) -> None:
        with self._lock:
            if self._kept is not kept:
                return
            self._kept = None
            self._timer = None
        log.info("kept workers unclaimed for %.0f s: shutting them down", self._idle_s)
        kept.release()


POOL = WarmPool()


class _SyncActorSource:
    """Stands in for Ray's ``SynchronizationActor`` class during one start: the kept actor, else a new one."""

    def __init__(self, group: WarmWorkerGroup, real):
        self._group, self._real, self._options = group, real, {}
        self.asked = False

    def options(self, **options):
        self._options = options
        return self

    def remote(self, *args, **kwargs):
        self.asked = True
        if self._group.claimed is not None:
            return self._group.claimed.sync_actor
        return self._real.options(**self._options).remote(*args, **kwargs)


@dataclasses.dataclass(frozen=True)
class _KeepOnShutdown(WorkerGroupState):
    """The state of a cleanly finished group: its shutdown hands the processes to the pool."""

    shape: tuple = ()
    keeps_placement_group = True          # read by the janitor callback: keep watching it

    def shutdown(self):
        try:
            ray.get([w.execute_async(_end_process_group) for w in self.workers]
                    + [w.actor.shutdown.remote() for w in self.workers], timeout=CHECK_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - a worker that cannot be cleaned is not reused
            log.info("not keeping the workers (%s)", exc)
            super().shutdown()
            return
        POOL.keep(Kept(self.shape, self.placement_group_handle, list(self.workers), self.sync_actor))


def _end_process_group() -> None:
    """Destroy the worker's default process group (Train leaves a 1-worker group's in place)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class WarmWorkerGroup(WorkerGroup):
    """Ray Train's ``WorkerGroup`` that starts on kept workers when it can and keeps them at a clean end."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.claimed: Kept | None = None
        self._reuse = True

    def _shape(self) -> tuple:
        ctx = self._worker_group_context
        return (ctx.num_workers, tuple(sorted(ctx.resources_per_worker.items())), ctx.placement_strategy,
                repr(ctx.label_selector), repr(self._train_run_context.run_config.worker_runtime_env),
                self._worker_cls, self._collective_timeout_s, self._collective_warn_interval_s)

    def _start_impl(self, worker_group_state_builder):
        source = _SyncActorSource(self, SynchronizationActor)
        stack = contextlib.ExitStack()
        try:
            stack.enter_context(swapped(_wg_module, "SynchronizationActor", source, SynchronizationActor))
        except SwapMismatch as exc:
            log.warning("tune_app: starting Train workers without reuse (%s)", exc)
            self._reuse = False
        try:
            with stack:
                super()._start_impl(worker_group_state_builder)
            if self.claimed is not None and not source.asked:
                log.warning("tune_app: Ray did not create the synchronization actor through its module name; "
                            "the kept one is released")
                with contextlib.suppress(Exception):
                    ray.kill(self.claimed.sync_actor)
        finally:
            self.claimed = None

    def _create_placement_group(self, scaling_config, worker_group_context):
        if self._reuse and not scaling_config.use_tpu:
            self.claimed = POOL.take(self._shape())
            if self.claimed is not None:
                return self.claimed.placement_group_handle
        return super()._create_placement_group(scaling_config, worker_group_context)

    def _create_workers(self, num_workers, placement_group, resources_per_worker,
                        placement_group_bundle_indices=None, starting_world_rank=0, world_size=None,
                        replica_group_size=None):
        kept = self.claimed
        if (kept is None or placement_group_bundle_indices is not None
                or placement_group is not kept.placement_group_handle.placement_group):
            return super()._create_workers(num_workers, placement_group, resources_per_worker,
                                           placement_group_bundle_indices, starting_world_rank, world_size,
                                           replica_group_size)
        workers = [Worker(w.actor, w.metadata, resources_per_worker,
                          placement_group_bundle_index=w.placement_group_bundle_index) for w in kept.workers]
        return WorkerGroup._assign_worker_ranks(workers, starting_world_rank, world_size, replica_group_size)

    def shutdown(self):
        state = self._worker_group_state
        if state is not None and self._finished_cleanly(state):
            fields = {f.name: getattr(state, f.name) for f in dataclasses.fields(WorkerGroupState)}
            self._worker_group_state = _KeepOnShutdown(**fields, shape=self._shape())
        super().shutdown()

    def _finished_cleanly(self, state: WorkerGroupState) -> bool:
        status = self.get_latest_poll_status()
        return (isinstance(state.placement_group_handle, DefaultPlacementGroupHandle)
                and status is not None and bool(status.finished) and not status.errors
                and status.get_preemption_info() is None
                and len(status.worker_statuses) == len(state.workers))
