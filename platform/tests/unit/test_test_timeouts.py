"""The repository's rule for tests that hang (conftest.py at its root), run on a suite of its own in a child
pytest: an async test that hangs while a background task keeps the event loop busy fails alone, within its
bound, and the next test still runs. Under pytest-timeout's signal method, the timeout landed in the busy task,
asyncio kept it as that task's exception, and the test hung on (a CI run spent its hour that way)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]

INNER_SUITE = '''
import asyncio


async def _busy() -> None:
    while True:
        sum(range(200_000))
        await asyncio.sleep(0)


async def test_hangs_behind_a_busy_task() -> None:
    busy = asyncio.create_task(_busy())
    try:
        await asyncio.Event().wait()
    finally:
        busy.cancel()


async def test_runs_after_it() -> None:
    await asyncio.sleep(0)


async def test_its_own_timeout_error_is_not_relabelled() -> None:
    raise TimeoutError("the test's own")
'''

INNER_INI = """[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = session
asyncio_default_test_loop_scope = session
timeout = 3
timeout_method = thread
"""


@pytest.mark.timeout(60)
def test_an_async_test_that_hangs_behind_a_busy_task_fails_alone(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text((ROOT / "conftest.py").read_text())
    (tmp_path / "pytest.ini").write_text(INNER_INI)
    (tmp_path / "test_inner.py").write_text(INNER_SUITE)
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rf", "test_inner.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=50, check=False, env={**os.environ, "COLUMNS": "300"},
    )
    out = run.stdout
    assert "2 failed, 1 passed" in out, out + run.stderr
    assert "FAILED test_inner.py::test_hangs_behind_a_busy_task - Failed: the test did not finish within 2.4 s" in out
    assert "FAILED test_inner.py::test_its_own_timeout_error_is_not_relabelled - TimeoutError: the test's own" in out
