"""State-pool wrappers for runtime tests: they pass every call on to a session's pool and watch or bend it."""

from __future__ import annotations

import numpy as np


class PoolWrapper:
    """A state pool that passes everything on to the session's own one."""

    def __init__(self, pool) -> None:
        self.pool = pool

    def __getattr__(self, name: str):
        return getattr(self.pool, name)


class Recorder(PoolWrapper):
    """Keeps the logits and the input shape ``(B, L)`` of every call."""

    def __init__(self, pool) -> None:
        super().__init__(pool)
        self.logits: list[np.ndarray] = []
        self.shapes: list[tuple[int, int]] = []

    def run(self, slots, input_ids, start_pos, num_pad):
        logits = self.pool.run(slots, input_ids, start_pos, num_pad)
        self.logits.append(self.pool.to_numpy(logits).copy())
        self.shapes.append(input_ids.shape)
        return logits


def recording(session) -> Recorder:
    """Wrap ``session``'s pool in a :class:`Recorder` and return it."""
    session.pool = Recorder(session.pool)
    return session.pool
