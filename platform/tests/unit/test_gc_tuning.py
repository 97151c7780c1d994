"""Every long-running command runs with the collector tuned (cli_run.GC_THRESHOLDS): the defaults cost a gateway
about 40 % of its time in collections under the paced fan-out, and their full collections stall every socket."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import pytest

from notiflow import cli_run


@pytest.fixture
def restored_gc() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.set_threshold(*before)
    gc.unfreeze()


def test_commands_run_with_the_tuned_collector(restored_gc: None) -> None:
    gc.set_threshold(700, 10, 10)
    seen: dict[str, object] = {}

    async def main(stop: asyncio.Event) -> None:
        seen["thresholds"] = gc.get_threshold()
        seen["frozen"] = gc.get_freeze_count()

    assert cli_run._run_async(main) == 0
    assert seen["thresholds"] == cli_run.GC_THRESHOLDS
    assert isinstance(seen["frozen"], int) and seen["frozen"] > 0
    # A first generation far above the default, or the tuning does nothing.
    assert cli_run.GC_THRESHOLDS[0] >= 10_000
