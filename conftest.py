"""Rules for every test of the repository (platform/tests, conformance, chaos, loadtests): how a test that hangs
is ended.

pytest-timeout (``timeout`` in pyproject.toml, or a test's ``timeout`` mark) bounds each test's setup, call and
teardown together. Its method is ``thread``: past the bound it prints every thread's stack and ends the process.
Its ``signal`` method raised the timeout wherever the main thread happened to be; in an async test that is as
often a background task or a protocol callback as the test itself, and asyncio keeps a task's exception (or logs
a callback's) instead of ending the test: a suite hung in CI for an hour with its timeout spent that way.

So that a hang in an async test still fails only that test, with the traceback of the await it hung on, the test
body also runs under ``asyncio.timeout`` in its own event loop, at ``CALL_SHARE`` of the test's bound: the
cancellation reaches the test's own task, its ``finally`` blocks run, and its fixtures tear down.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest

#: The share of a test's pytest-timeout bound its async body may take; the rest is for setup and teardown.
CALL_SHARE = 0.8


#: The test's pytest-timeout bound in seconds, as pytest-timeout itself worked it out (its mark, ``--timeout``,
#: PYTEST_TIMEOUT or the ini value), kept when pytest-timeout sets its timer.
_BOUND_S = pytest.StashKey[float]()


def pytest_timeout_set_timer(item: pytest.Item, settings: Any) -> None:
    """pytest-timeout's hook, called with the test's settings before its setup: keep the bound, and return None
    so that pytest-timeout's own implementation sets its timer as usual."""
    item.stash[_BOUND_S] = float(settings.timeout)


def _bounded(test: Callable[..., Coroutine[Any, Any, Any]], seconds: float) -> Callable[..., Any]:
    @functools.wraps(test)
    async def run(*args: Any, **kwargs: Any) -> Any:
        limit = asyncio.timeout(seconds)
        try:
            async with limit:
                return await test(*args, **kwargs)
        except TimeoutError:
            if limit.expired():
                pytest.fail(f"the test did not finish within {seconds:g} s (conftest.py: CALL_SHARE of its timeout)")
            raise

    return run


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    test = getattr(item, "obj", None)
    seconds = item.stash.get(_BOUND_S, 0.0) * CALL_SHARE
    if not isinstance(item, pytest.Function) or not inspect.iscoroutinefunction(test) or seconds <= 0:
        yield
        return
    item.obj = _bounded(test, seconds)
    try:
        yield
    finally:
        item.obj = test
