"""retry_conflicts: a deadlock or serialization victim runs again; every other error passes at once."""

from __future__ import annotations

import asyncpg
import pytest

from notiflow.errors import StoreUnavailable
from notiflow.store.pool import CONFLICT_ATTEMPTS, retry_conflicts

pytestmark = pytest.mark.timeout(10)


def _failing(errors: list[BaseException]) -> tuple[list[int], object]:
    calls: list[int] = []

    async def run() -> str:
        calls.append(1)
        if errors:
            raise errors.pop(0)
        return "done"

    return calls, run


async def test_deadlock_victims_run_again_until_they_succeed() -> None:
    deadlock = asyncpg.exceptions.DeadlockDetectedError("deadlock detected")
    wrapped = StoreUnavailable("postgresql: serialization")
    wrapped.__cause__ = asyncpg.exceptions.SerializationError("could not serialize access")
    calls, run = _failing([deadlock, wrapped])
    assert await retry_conflicts(run) == "done"  # type: ignore[arg-type]
    assert len(calls) == 3


async def test_conflicts_give_up_after_the_bounded_attempts() -> None:
    calls, run = _failing([asyncpg.exceptions.DeadlockDetectedError("d") for _ in range(10)])
    with pytest.raises(asyncpg.exceptions.DeadlockDetectedError):
        await retry_conflicts(run)  # type: ignore[arg-type]
    assert len(calls) == CONFLICT_ATTEMPTS


async def test_other_errors_are_not_retried() -> None:
    calls, run = _failing([asyncpg.exceptions.UniqueViolationError("dup"), StoreUnavailable("down")])
    with pytest.raises(asyncpg.exceptions.UniqueViolationError):
        await retry_conflicts(run)  # type: ignore[arg-type]
    assert len(calls) == 1
