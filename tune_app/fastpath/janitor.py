"""A per-sweep placement-group janitor: frees the workers' resources of a run whose owner died.

A Train run's worker placement group belongs to the job, not to the process that created it, so
when Tune kills a trial's process (early stopping, failure) the group would stay reserved until
the sweep ends and later trials could not start (ray-notes.md §3). Ray Train starts a
``PlacementGroupCleaner`` actor per run for this; one janitor per sweep does it for all runs. It
watches each owner through an actor handle (a pending ``__ray_ready__`` call fails when the owner
dies), so it needs no State API.
"""

from __future__ import annotations

import logging
import threading
import time

import ray
from ray.train.v2._internal.execution.callback import ControllerCallback, WorkerGroupCallback

log = logging.getLogger("tune_app.fastpath.janitor")


@ray.remote(num_cpus=0)
class PlacementGroupJanitor:
    """Removes a run's worker placement group once the process that owns the run has died."""

    def __init__(self, interval_s: float = 1.0):
        self._watched: dict[str, tuple] = {}      # owner actor id -> (placement group, owner handle, pending ping)
        self._lock = threading.Lock()
        self._interval_s = interval_s
        threading.Thread(target=self._loop, daemon=True, name="janitor").start()

    def watch(self, owner, owner_id: str, placement_group) -> None:
        with self._lock:
            self._watched[owner_id] = (placement_group, owner, owner.__ray_ready__.remote())

    def release(self, owner_id: str) -> None:
        with self._lock:
            self._watched.pop(owner_id, None)

    def free_all(self) -> int:
        """Remove every watched placement group (the sweep is over: no run needs one); returns how many."""
        with self._lock:
            items = list(self._watched.items())
        for owner_id, (pg, _owner, _ping) in items:
            self._free(owner_id, pg)
        return len(items)

    def watching(self) -> list[str]:
        with self._lock:
            return list(self._watched)

    def _loop(self) -> None:
        while True:
            time.sleep(self._interval_s)
            with self._lock:
                items = list(self._watched.items())
            for owner_id, (pg, owner, ping) in items:
                ready, _ = ray.wait([ping], timeout=0)
                if not ready:
                    continue                     # a busy owner is a live owner
                try:
                    ray.get(ping)
                except ray.exceptions.RayActorError:
                    self._free(owner_id, pg)
                    continue
                with self._lock:
                    if owner_id in self._watched:
                        self._watched[owner_id] = (pg, owner, owner.__ray_ready__.remote())

    def _free(self, owner_id: str, pg) -> None:
        with self._lock:
            if self._watched.pop(owner_id, None) is None:
                return
        try:
            ray.util.remove_placement_group(pg)
            log.info("removed placement group %s of dead run owner %s", pg.id.hex(), owner_id)
        except Exception as exc:  # noqa: BLE001 - already removed, or the cluster is going away
            log.debug("placement group %s: %s", pg.id.hex(), exc)


def start_janitor(name: str):
    """The sweep's janitor (created here, owned by the sweep driver, so it ends with the sweep).

    It lives on the driver's node: a 0-CPU actor could otherwise land on any node, and losing
    that node would take the janitor with it, just when dead trial processes leave groups behind.
    """
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return PlacementGroupJanitor.options(name=name, get_if_exists=True, scheduling_strategy=here).remote()


class JanitorCallback(ControllerCallback, WorkerGroupCallback):
    """Registers each worker group's placement group with the sweep's janitor, and releases it at a clean end."""

    def __init__(self, name: str):
        self._name = name
        self._owner_id: str | None = None

    def _janitor(self):
        try:
            return ray.get_actor(self._name)
        except ValueError:
            log.warning("placement-group janitor %s not found: an early-stopped run's workers are freed "
                        "only when the sweep ends", self._name)
            return None

    def after_worker_group_start(self, worker_group) -> None:
        janitor = self._janitor()
        if janitor is None:
            return
        context = ray.get_runtime_context()
        self._owner_id = context.get_actor_id()
        pg = worker_group.get_worker_group_state().placement_group_handle.placement_group
        janitor.watch.remote(context.current_actor, self._owner_id, pg)

    def before_worker_group_shutdown(self, worker_group) -> None:
        if getattr(worker_group.get_worker_group_state(), "keeps_placement_group", False):
            return                  # kept for this process's next run (tune_app.fastpath.warm_workers): keep watching
        self._release()

    def before_controller_abort(self) -> None:
        self._release()

    def _release(self) -> None:
        if self._owner_id is not None and (janitor := self._janitor()) is not None:
            janitor.release.remote(self._owner_id)
        self._owner_id = None
