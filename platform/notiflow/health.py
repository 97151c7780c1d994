"""Liveness of a worker, answered at ``GET /healthz`` on its metrics port (see ``metrics.serve``).

A worker's main loop beats once per round (a stream read, a retry move, a pause while a store is away): the
worker is live while the loop has started, has not ended, and beat within ``stale_after_s``. Liveness says
nothing about the stores: a worker holding its batch through a PostgreSQL outage still beats, since
restarting it would not bring PostgreSQL back (gateways have ``/readyz`` for the stores).

The loop runs on the event loop's thread and the answer is read from the metrics server's thread; each side
reads or writes one attribute at a time, which needs no lock.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from typing import Any

#: Seconds without a beat after which a running loop counts as stuck. A round is one stream read (blocking
#: NOTIFLOW_WORKER_BLOCK_MS at most) and one batch; a batch held through an outage beats on each try.
STALE_AFTER_S = 60.0


class LoopState(enum.Enum):
    """Where a worker's main loop is."""

    STARTING = "starting"
    RUNNING = "running"
    STOPPED = "stopped"


class Health:
    """A worker's liveness: ``beat`` from the loop, ``check`` from the metrics thread."""

    def __init__(self, stale_after_s: float = STALE_AFTER_S, clock: Callable[[], float] = time.monotonic) -> None:
        self._stale_after_s = stale_after_s
        self._clock = clock
        self._state = LoopState.STARTING
        self._last_beat = clock()

    def beat(self) -> None:
        """The loop went round once (and so is running). Work that ends after the loop stopped (a webhook
        call drained at shutdown) beats too, and does not bring a stopped loop back."""
        self._last_beat = self._clock()
        if self._state is LoopState.STARTING:
            self._state = LoopState.RUNNING

    def stopped(self) -> None:
        """The loop has ended: asked to stop, or crashed."""
        self._state = LoopState.STOPPED

    def check(self) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON body): 200 while the loop runs and beats, else 503 with the reason."""
        age_s = round(self._clock() - self._last_beat, 3)
        state = self._state
        if state is LoopState.RUNNING and age_s > self._stale_after_s:
            return 503, {"status": "stuck", "last_beat_s": age_s, "stale_after_s": self._stale_after_s}
        body = {"status": state.value, "last_beat_s": age_s}
        return (200 if state is LoopState.RUNNING else 503), body
