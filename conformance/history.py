"""The run's history, in the style of a Jepsen total-queue test.

Every client operation is recorded as an ``invoke`` followed by exactly one completion: ``ok`` (it happened),
``fail`` (it definitely did not happen) or ``info`` (the outcome is unknown: a timeout is ``info``, never
``fail``). Observations that have no request of their own (a frame arriving on a socket, a socket closing)
are recorded as a single ``ok``. The checker (``checker.py``) reads nothing but this history.

Operation functions (``f``) and their values:

=============  ===============================================================================================
``ingest``     invoke ``{"cid", "user_ids", "node", "ttl"[, "collapse_key"]}``; ok ``{"id", "recipients"}``;
               fail/info ``{"status", "error"}``
``ws_open``    ok ``{"conn", "user_id", "node", "live"}`` once the socket is accepted (``live``: it must stay
               up and receive everything sent to its user while it is open)
``ws_recv``    ok ``{"conn", "user_id", "id", "seq", "cid", "event", "collapse_key"}``
``ws_close``   ok ``{"conn", "user_id", "code", "by"}`` (``by``: ``client`` or ``server``)
``ws_ack``     ok ``{"conn", "user_id", "ids"}``: an ack frame was sent (maybe applied until confirmed)
``ws_acked``   ok ``{"conn", "user_id", "ids"}``: the gateway confirmed an ack (``acked`` with the frame's ref; the ids
               are the client's, kept by ref): applied, for good
``ws_ack_failed`` ok ``{"conn", "user_id", "ids"}``: the gateway answered ``ack_failed``: maybe applied
``fetch``      invoke ``{"user_id", "after_seq", "limit"}``; ok ``{"items": [{"id", "seq", "cid"}], "next"}``
``sweep``      ok ``{"user_id", "items": [...], "complete"}``: a whole offline queue read page by page
``ack``        invoke ``{"user_id", "ids" | "up_to_seq"}``; ok ``{"acknowledged"}``
``status``     ok ``{"id", "user_id", "status", "seq"}``: a delivery's state from ``GET /notifications/{id}``
``dlq``        ok ``{"entries": [{"notification_id", "user_id", "channel"}]}``
=============  ===============================================================================================
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

OpType = Literal["invoke", "ok", "fail", "info"]


@dataclass(frozen=True, slots=True)
class Op:
    """One history entry. ``index`` orders the history; ``time_ns`` is monotonic since the recorder began."""

    index: int
    process: str
    type: OpType
    f: str
    value: dict[str, Any] = field(default_factory=dict)
    time_ns: int = 0


@dataclass(slots=True)
class Invocation:
    """A pending operation: complete it with ``ok``, ``fail`` or ``info`` exactly once."""

    recorder: History
    process: str
    f: str
    invoke: Op
    done: Op | None = None

    def _complete(self, kind: OpType, value: dict[str, Any]) -> Op:
        if self.done is not None:
            raise RuntimeError(f"{self.f!r} of {self.process!r} was already completed as {self.done.type}")
        self.done = self.recorder.append(self.process, kind, self.f, value)
        return self.done

    def ok(self, **value: Any) -> Op:
        return self._complete("ok", value)

    def fail(self, **value: Any) -> Op:
        return self._complete("fail", value)

    def info(self, **value: Any) -> Op:
        return self._complete("info", value)


class History:
    """A thread-safe, append-only list of operations."""

    def __init__(self, name: str = "run", clock: Callable[[], int] | None = None) -> None:
        """``clock`` returns nanoseconds; tests pass a fake one to write histories with exact times."""
        self.name = name
        self._ops: list[Op] = []
        self._lock = threading.Lock()
        self._counter = itertools.count()
        self._start_ns = time.monotonic_ns()
        self._clock = clock

    def now_ns(self) -> int:
        if self._clock is not None:
            return self._clock()
        return time.monotonic_ns() - self._start_ns

    def append(self, process: str, kind: OpType, f: str, value: dict[str, Any] | None = None) -> Op:
        with self._lock:
            op = Op(next(self._counter), process, kind, f, dict(value or {}), self.now_ns())
            self._ops.append(op)
            return op

    def invoke(self, process: str, f: str, **value: Any) -> Invocation:
        return Invocation(self, process, f, self.append(process, "invoke", f, value))

    def observe(self, process: str, f: str, **value: Any) -> Op:
        """Record an observation that has no invocation of its own (a receive, a close)."""
        return self.append(process, "ok", f, value)

    @property
    def ops(self) -> list[Op]:
        with self._lock:
            return list(self._ops)

    def __iter__(self) -> Iterator[Op]:
        return iter(self.ops)

    def __len__(self) -> int:
        with self._lock:
            return len(self._ops)


def pairs(ops: list[Op]) -> list[tuple[Op, Op | None]]:
    """Match each invoke with its completion (same process and f, the next one); ``None`` if none.

    A process runs one operation at a time, as in Jepsen, so the next completion of the process completes
    its pending invoke.
    """
    pending: dict[str, Op] = {}
    matched: list[tuple[Op, Op | None]] = []
    slot: dict[int, int] = {}
    for op in ops:
        if op.type == "invoke":
            if op.process in pending:
                busy = pending[op.process].f
                raise ValueError(f"process {op.process!r} invoked {op.f!r} while {busy!r} was pending")
            pending[op.process] = op
            slot[op.index] = len(matched)
            matched.append((op, None))
        elif op.process in pending and pending[op.process].f == op.f:
            inv = pending.pop(op.process)
            matched[slot[inv.index]] = (inv, op)
    return matched
