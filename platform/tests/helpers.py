"""Test helpers. Tests wait on conditions with these, never with bare sleeps."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any


def _describe(predicate: Callable[[], Any], message: str | None) -> str:
    if message:
        return message
    name = getattr(predicate, "__qualname__", repr(predicate))
    if name.endswith("<lambda>"):
        try:
            return inspect.getsource(predicate).strip()
        except (OSError, TypeError):
            pass
    return name


async def wait_for(
    predicate: Callable[[], Any | Awaitable[Any]],
    timeout_s: float = 10.0,
    interval_s: float = 0.02,
    *,
    message: str | None = None,
    retry_on: tuple[type[BaseException], ...] = (AssertionError,),
) -> Any:
    """Poll ``predicate`` (sync or async) until it returns something truthy; return that value.

    An exception in ``retry_on`` counts as "not yet" (so a predicate may simply ``assert``). Fails with
    the predicate's description, its last value and its last exception when ``timeout_s`` runs out.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    last_value: Any = None
    last_error: BaseException | None = None
    while True:
        try:
            value = predicate()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return value
            last_value, last_error = value, None
        except retry_on as exc:
            last_error = exc
        if loop.time() >= deadline:
            raise AssertionError(_timeout_message(predicate, message, timeout_s, last_value, last_error))
        await asyncio.sleep(interval_s)


def wait_for_sync(
    predicate: Callable[[], Any],
    timeout_s: float = 10.0,
    interval_s: float = 0.02,
    *,
    message: str | None = None,
    retry_on: tuple[type[BaseException], ...] = (AssertionError,),
) -> Any:
    """``wait_for`` for synchronous tests."""
    deadline = time.monotonic() + timeout_s
    last_value: Any = None
    last_error: BaseException | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
            last_value, last_error = value, None
        except retry_on as exc:
            last_error = exc
        if time.monotonic() >= deadline:
            raise AssertionError(_timeout_message(predicate, message, timeout_s, last_value, last_error))
        time.sleep(interval_s)


def _timeout_message(
    predicate: Callable[[], Any],
    message: str | None,
    timeout_s: float,
    last_value: Any,
    last_error: BaseException | None,
) -> str:
    text = f"timed out after {timeout_s}s waiting for: {_describe(predicate, message)}; last value {last_value!r}"
    if last_error is not None:
        text += f"; last error {type(last_error).__name__}: {last_error}"
    return text
