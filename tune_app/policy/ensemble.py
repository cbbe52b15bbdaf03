"""Temporal ensembling (ACT paper, §3.3): query the policy every step, average the overlapping chunks.

At step t, every chunk predicted at an earlier step ``t - k`` (``k < chunk_size``) holds an action
for step t: its element ``k``. Those actions are averaged with weights ``w_i = exp(-coeff * i)``,
where ``i = 0`` is the *oldest* prediction: a positive ``coeff`` trusts older predictions more, so
the executed action changes smoothly when a new observation arrives. ``coeff = 0`` is a plain mean.

:class:`TemporalEnsembler` is the per-episode state: call :meth:`~TemporalEnsembler.step` with each
new chunk (``(chunk_size, action_dim)``, one per control step) and it returns the action to
execute now; :meth:`~TemporalEnsembler.reset` at the start of every episode. :class:`ChunkExecutor`
is the deployment without ensembling (ACT's default): one query per chunk, executed open loop.

LeRobot default when ensembling is on: ``coeff = 0.01``.
"""

from __future__ import annotations

from collections import deque

import numpy as np

LEROBOT_DEFAULT_COEFF = 0.01


class TemporalEnsembler:
    """Average, for the current step, every stored chunk's action for it (oldest weighted ``exp(0)``)."""

    def __init__(self, coeff: float, chunk_size: int):
        if coeff < 0:
            raise ValueError(f"temporal_ensemble_coeff must be >= 0, got {coeff}")
        self.coeff, self.chunk_size = float(coeff), int(chunk_size)
        self.chunks: deque[np.ndarray] = deque(maxlen=self.chunk_size)   # oldest first; chunks[-1] is this step's

    def reset(self) -> None:
        self.chunks.clear()

    def step(self, chunk: np.ndarray) -> np.ndarray:
        """Add this step's chunk ``(chunk_size, action_dim)``; the ensembled action for this step."""
        chunk = np.asarray(chunk, dtype=np.float64)
        if chunk.shape[0] != self.chunk_size:
            raise ValueError(f"expected a chunk of {self.chunk_size} actions, got {chunk.shape[0]}")
        self.chunks.append(chunk)
        n = len(self.chunks)
        # The chunk at position i (0 = oldest) was predicted n - 1 - i steps ago: its element n - 1 - i is for now.
        actions = np.stack([c[n - 1 - i] for i, c in enumerate(self.chunks)])
        weights = np.exp(-self.coeff * np.arange(n))
        return (weights[:, None] * actions).sum(0) / weights.sum()


class ChunkExecutor:
    """No ensembling: a new chunk is needed every ``chunk_size`` steps, and its actions run in order."""

    def __init__(self, chunk_size: int):
        self.chunk_size = int(chunk_size)
        self.chunk: np.ndarray | None = None
        self.index = 0

    def reset(self) -> None:
        self.chunk, self.index = None, 0

    def needs_query(self) -> bool:
        return self.chunk is None or self.index >= self.chunk_size

    def step(self, chunk: np.ndarray | None) -> np.ndarray:
        """The next action; ``chunk`` must be given when :meth:`needs_query` says so (ignored otherwise)."""
        if self.needs_query():
            if chunk is None:
                raise ValueError("a new chunk is needed at this step")
            self.chunk, self.index = np.asarray(chunk, dtype=np.float64), 0
        action = self.chunk[self.index]
        self.index += 1
        return action


def executed_actions(chunks: np.ndarray, coeff: float | None) -> np.ndarray:
    """The actions a deployment executes over one episode, given the chunk the policy predicts at
    every step (``(T, chunk_size, action_dim)``, observations as recorded): with ensembling when
    ``coeff`` is a number, else ACT's open-loop chunks (a query every ``chunk_size`` steps)."""
    steps, chunk_size = chunks.shape[:2]
    runner = TemporalEnsembler(coeff, chunk_size) if coeff is not None else ChunkExecutor(chunk_size)
    return np.stack([runner.step(chunks[t]) for t in range(steps)]) if steps else np.zeros((0, chunks.shape[2]))
