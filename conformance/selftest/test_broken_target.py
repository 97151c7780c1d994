"""Proof that the suite can fail: the checker and the check modules, run against deliberately broken targets,
report the loss, and name exactly the notifications and users that were lost.

The broken target is a fault proxy in front of the gateways that drops socket frames or hides queue entries
and writes down exactly which. (The platform's own test-only frame-drop switch is gone: production code has no
test switches; the proxy does the same from outside.)
"""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from conformance.cluster import Target
from conformance.profile import PROFILES
from conformance.selftest.proxy import FaultProxy
from conformance.workload import run_mixed

ROOT = Path(__file__).resolve().parents[2]
SECTION = re.compile(r"^E?\s*(LOST|UNEXPECTED|MISSED LIVE|GAPS|RESURRECTED|DUPLICATED) \(\d+\):")
ROW = re.compile(r"^E?\s*notification (\S+) user (\S+):")
OUTCOME = re.compile(r"^(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS) (conformance/\S+?\.py)::(\S+)", re.M)

Pairs = set[tuple[str, str]]


@pytest.fixture
def proxies(target: Target) -> Iterator[Callable[..., list[FaultProxy]]]:
    started: list[FaultProxy] = []

    def start(**faults: int | str) -> list[FaultProxy]:
        started.extend(FaultProxy(url, **faults).start() for url in target.urls)  # type: ignore[arg-type]
        return started

    yield start
    for proxy in started:
        proxy.stop()


def _union(proxies: list[FaultProxy], what: str) -> Pairs:
    return {pair for p in proxies for pair in getattr(p, what)}


def reported(output: str) -> dict[str, Pairs]:
    """The (notification, user) rows of each section of the failure reports in a pytest run's output."""
    found: dict[str, Pairs] = {}
    section = None
    for line in output.splitlines():
        if m := SECTION.match(line):
            section = m.group(1)
        elif section and (m := ROW.match(line)):
            found.setdefault(section, set()).add((m.group(1), m.group(2)))
        elif not line.strip().startswith(("E", "history:")):
            section = None
    return found


async def run_suite(modules: list[str], urls: list[str]) -> tuple[dict[str, set[str]], str]:
    """Run check modules in a pytest subprocess against ``urls``; returns each module's set of test outcomes
    (``{"conformance/test_i01_no_loss.py": {"PASSED", "FAILED"}, ...}``) and the whole output."""
    cmd = [sys.executable, "-m", "pytest", *modules, "--profile", "selftest", "--report-limit", "100000"]
    cmd += ["-p", "no:cacheprovider", "-q", "-rA", "-o", "addopts="]
    for url in urls:
        cmd += ["--base-url", url]
    proc = await asyncio.create_subprocess_exec(
        *cmd, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 200)
    except TimeoutError:
        proc.kill()
        raise
    text = out.decode(errors="replace")
    outcomes: dict[str, set[str]] = {}
    for outcome, module, _ in OUTCOME.findall(text):
        outcomes.setdefault(module, set()).add(outcome)
    return outcomes, text


@pytest.mark.timeout(120)
async def test_the_checker_names_exactly_the_frames_a_broken_gateway_dropped(
    proxies: Callable[..., list[FaultProxy]], http: httpx.AsyncClient, run_id: str
) -> None:
    broken = proxies(drop_ws_every=7)
    run = await run_mixed([p.url for p in broken], http, PROFILES["selftest"], run_id, seed=1)
    dropped = _union(broken, "dropped")
    assert dropped, "the proxy dropped nothing, so this self-test would prove nothing"
    assert set(run.verdict.missed_live) == dropped, run.verdict.report(1000)
    # What was dropped on the wire is still in the offline queue: no loss, and I1 must not cry wolf.
    assert run.verdict.valid, run.verdict.report(1000)
    text = run.verdict.report(100_000)
    assert all(f"notification {nid} user {user}:" in text for nid, user in dropped)


@pytest.mark.timeout(120)
async def test_the_checker_names_exactly_what_a_broken_offline_queue_lost(
    proxies: Callable[..., list[FaultProxy]], http: httpx.AsyncClient, run_id: str
) -> None:
    broken = proxies(hide_every=4)
    run = await run_mixed([p.url for p in broken], http, PROFILES["selftest"], run_id, seed=2)
    hidden = _union(broken, "hidden")
    assert hidden, "the proxy hid nothing, so this self-test would prove nothing"
    assert not run.verdict.valid
    assert set(run.verdict.lost) == hidden, run.verdict.report(1000)
    assert set(run.verdict.gaps) == hidden
    text = run.verdict.report(100_000)
    assert all(f"notification {nid} user {user}:" in text for nid, user in hidden)


@pytest.mark.timeout(240)
async def test_the_no_loss_and_offline_modules_fail_naming_the_lost_ids(
    proxies: Callable[..., list[FaultProxy]],
) -> None:
    broken = proxies(hide_every=4)
    i01, i03 = "conformance/test_i01_no_loss.py", "conformance/test_i03_offline.py"
    outcomes, out = await run_suite([i01, i03], [p.url for p in broken])
    hidden = _union(broken, "hidden")
    assert hidden, "the proxy hid nothing"
    for module in (i01, i03):
        assert "FAILED" in outcomes.get(module, set()), f"{module} passed against a lossy queue\n{out[-3000:]}"
    assert reported(out).get("LOST") == hidden, out[-5000:]


@pytest.mark.timeout(240)
async def test_the_live_module_fails_naming_the_dropped_frames_and_no_loss_does_not(
    proxies: Callable[..., list[FaultProxy]],
) -> None:
    broken = proxies(drop_ws_every=5)
    i01, i02 = "conformance/test_i01_no_loss.py", "conformance/test_i02_live.py"
    outcomes, out = await run_suite([i01, i02], [p.url for p in broken])
    dropped = _union(broken, "dropped")
    assert dropped, "the proxy dropped nothing"
    # Dropped frames stay in the offline queue: I2 (live delivery) must fail, I1 (no loss) must not.
    assert outcomes.get(i02) == {"FAILED"}, f"I2 outcomes {outcomes.get(i02)}\n{out[-3000:]}"
    assert outcomes.get(i01) == {"PASSED"}, f"I1 outcomes {outcomes.get(i01)}\n{out[-3000:]}"
    sections = reported(out)
    assert sections.get("MISSED LIVE") == dropped, out[-5000:]
    assert "LOST" not in sections


@pytest.mark.timeout(400)
async def test_the_topic_and_collapse_key_modules_fail_behind_a_lossy_gateway(
    proxies: Callable[..., list[FaultProxy]],
) -> None:
    """The checks added with topics and collapse keys fail too when the platform loses work: frames dropped on
    the wire and queue entries hidden for the topic's subscribers and the collapse scenario's offline users."""
    topics, collapse = "conformance/test_topics.py", "conformance/test_collapse_keys.py"
    broken = proxies(drop_ws_every=3, hide_every=2, hide_users="-")  # every user of both modules has a "-"
    outcomes, out = await run_suite([topics, collapse], [p.url for p in broken])
    assert _union(broken, "hidden") or _union(broken, "dropped"), "the proxy broke nothing"
    for module in (topics, collapse):
        assert "FAILED" in outcomes.get(module, set()), f"{module} passed against a lossy gateway\n{out[-3000:]}"
