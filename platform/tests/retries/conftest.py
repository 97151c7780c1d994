"""Fixtures of the retry/DLQ tests: a webhook sink that fails on purpose, and the platform in-process
(see harness.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from harness import FAST, Platform, PlatformFactory, start_platform
from pydantic import SecretStr
from sinkserver import Sink, new_secret

from notiflow.config import Settings


@pytest.fixture
async def sink() -> AsyncIterator[Sink]:
    server = await Sink(secret=new_secret()).start()
    yield server
    await server.stop()


@pytest.fixture
def hook_settings(settings: Settings, sink: Sink) -> Settings:
    """The session stores' settings, with the sink allowed and signing with the sink's secret."""
    return settings.model_copy(
        update={
            "webhook_allowed_hosts": [sink.host], "webhook_secret": SecretStr(sink.secret),
            "webhook_allow_private": True, **FAST,
        }
    )


@pytest.fixture
async def platform(hook_settings: Settings) -> AsyncIterator[PlatformFactory]:
    """``await platform(stream_workers=1, retry_workers=1, **setting_overrides)``; everything it started
    is stopped after the test, and a worker that died fails the test."""
    started: list[Platform] = []

    async def start(**kwargs: Any) -> Platform:
        plat = await start_platform(hook_settings, **kwargs)
        started.append(plat)
        return plat

    yield start
    crashed: dict[str, BaseException] = {}
    for plat in reversed(started):
        crashed.update(await plat.close())
    assert not crashed, f"workers died: {crashed!r}"
