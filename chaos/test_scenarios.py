"""Every scenario of SPEC §6 (and the issue's two offline-queue scenarios): lost = 0, unexpected = 0, and the
scenario's bound. A failure prints the checker's report, naming every notification and user involved."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from chaos.cluster import ChaosTarget
from chaos.profile import Profile
from chaos.report import Result
from chaos.runner import run_scenario
from chaos.scenarios import BY_NAME, SCENARIOS

#: Scenarios that catch a platform bug not fixed yet: they run and are reported (xfail); the fix removes the entry.
KNOWN_BUGS: dict[str, str] = {}  # scenario -> why it is expected to fail (none today)


@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    "name",
    [pytest.param(s.name, marks=[pytest.mark.xfail(reason=KNOWN_BUGS[s.name], strict=False)] if s.name in KNOWN_BUGS
                  else []) for s in SCENARIOS],
)  # fmt: skip
async def test_scenario(
    name: str, chaos_target: ChaosTarget, chaos_http: httpx.AsyncClient, chaos_profile: Profile,
    chaos_results: list[Result],
) -> None:  # fmt: skip
    await asyncio.to_thread(chaos_target.toxi.reset_sync)  # whatever an earlier scenario did is healed
    result = await run_scenario(BY_NAME[name], chaos_target, chaos_http, chaos_profile)
    chaos_results.append(result)
    if result.status == "skipped":
        pytest.skip(result.reason)
    found = "\n".join(result.problems + result.lost[:50] + result.unexpected[:50])
    assert result.passed, f"{name}: {result.reason}\n{found}\n{result.checker}"
    assert result.counts["accepted"] > 0 and result.counts["delivered_live"] > 0, "the workload degenerated"
