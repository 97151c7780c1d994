"""One scenario, start to verdict: workload throughout, the fault in the middle, heal, recovery, drain, final
sweeps and DLQ reads, then the conformance checker over the history, plus what this suite adds to it:

- the webhook channel (SPEC I1): every accepted delivery with a webhook reaches ``succeeded``, ``dead`` (with
  its DLQ entry) or ``expired``; anything else after the drain is lost;
- SPEC §4: a socket delivery that is ``dead`` is still listed in its user's offline queue; one that is dead and
  absent from the final sweep is lost (the conformance checker counts any DLQ entry as an outcome);
- the scenario's bound: the probe healthy again within ``recover_bound_s`` after heal, and for faults that must
  not touch other users, p99 end-to-end latency during the fault under ``p99_fault_bound_ms``.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from chaos.cluster import ChaosTarget, NeedsControl
from chaos.nemesis import Nemesis
from chaos.profile import Profile
from chaos.report import Result, series
from chaos.workload import Workload
from conformance.checker import Verdict, check
from conformance.client import Api, until
from conformance.history import History, pairs
from conformance.timeline import Timeline, percentile

#: Good probes in a row that make the platform "recovered".
STREAK = 4
_WEBHOOK_DONE = ("succeeded", "dead", "expired")
Key = tuple[str, str]


@dataclass
class Ctx:
    """What a scenario's parts see."""

    target: ChaosTarget
    http: httpx.AsyncClient
    history: History
    run_id: str
    profile: Profile
    workload: Workload
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Scenario:
    name: str
    row: str  # the fault as SPEC §6 names it
    make: Callable[[Ctx], Nemesis]
    webhooks: bool = True
    baseline_sink: str = "ok"  # the webhook downstream's mode for the whole run
    isolated: bool = False  # the fault must not slow other users: p99 during the fault is bounded
    fault_s: Callable[[Profile], float] | None = None
    during: Callable[[Ctx], Awaitable[None]] | None = None  # run once the fault is in
    check: Callable[[Ctx], Awaitable[list[str]]] | None = None  # extra findings after the drain
    min_nodes: int = 1


async def run_scenario(
    sc: Scenario, target: ChaosTarget, http: httpx.AsyncClient, profile: Profile, *, seed: int | None = None
) -> Result:
    run_id = f"x{secrets.token_hex(3)}"
    history = History(sc.name)
    if len(target.urls) < sc.min_nodes:
        why = f"needs {sc.min_nodes} gateway nodes; give --base-url {sc.min_nodes} times"
        return Result.skipped(sc.name, sc.row, why)
    hook = None
    if sc.webhooks and target.sink is not None:
        target.sink.modes[run_id] = sc.baseline_sink
        hook = target.sink.url("switch", run_id)
    work = Workload(target.urls, http, history, run_id, profile.mix, hook, seed if seed is not None else 0)
    ctx = Ctx(target, http, history, run_id, profile, work)
    try:
        nemesis = sc.make(ctx)
    except NeedsControl as exc:
        return Result.skipped(sc.name, sc.row, str(exc))
    started = time.monotonic()
    problems: list[str] = []
    try:
        await work.start()
        await asyncio.sleep(profile.warm_s)  # the scenario's own clock: workload before the fault
        inject_ns = history.now_ns()
        history.observe("nemesis", "nemesis", phase="inject", name=nemesis.name)
        fault_s = sc.fault_s(profile) if sc.fault_s else profile.fault_s
        async with nemesis.fault():
            if sc.during is not None:
                await sc.during(ctx)
            await asyncio.sleep(max(0.0, fault_s - (history.now_ns() - inject_ns) / 1e9))
        heal_ns = history.now_ns()
        history.observe("nemesis", "nemesis", phase="heal", name=nemesis.name)
        await until(lambda: work.healthy_streak(heal_ns, STREAK) is not None, profile.recover_bound_s, 0.25)
        await asyncio.sleep(profile.post_s)
        await work.stop_producers()
        drained = await work.drain(profile.drain_s)
        # Webhooks get longer: one whose work was lost on the way is put back by the reconciler only after
        # STUCK_AFTER_S (10 s here).
        settle_s = profile.drain_s + 20
        lost_hooks, dead_hooks = await _webhooks_settled(ctx, settle_s) if hook else ({}, set())
        if sc.check is not None:
            problems += await sc.check(ctx)
    finally:
        if target.sink is not None:
            target.sink.modes.pop(run_id, None)
        await work.finish()
    ops = history.ops
    verdict = check(ops)
    tl = Timeline.build(ops, pairs(ops))
    lost = {**verdict.lost, **_dead_unlisted(tl), **lost_hooks, **_dead_without_dlq(tl, dead_hooks)}
    streak = work.healthy_streak(heal_ns, STREAK)
    recovery_s = None if streak is None else max(0.0, (work.probes[streak].sent_ns - heal_ns) / 1e9)
    # The nemesis's own users (the slow or half-open client) are what the fault does; p99 is about the others.
    p99_fault = _p99_between(tl, inject_ns, heal_ns, exclude=set(work.extra_users))
    if recovery_s is None:
        problems.append(f"not recovered: the probe was not healthy {STREAK} times in a row within"
                        f" {profile.recover_bound_s:g}s after heal")  # fmt: skip
    # Relative to the warm-up as well: on a shared machine the baseline itself moves.
    p99_before = _p99_between(tl, 0, inject_ns, exclude=set(work.extra_users)) or 0.0
    p99_bound = max(profile.p99_fault_bound_ms, 4 * p99_before)
    if sc.isolated and p99_fault is not None and p99_fault > p99_bound:
        problems.append(f"p99 during the fault {p99_fault:.0f} ms > {p99_bound:.0f} ms (warm-up p99 {p99_before:.0f}"
                        " ms): the fault slowed users it should not touch")  # fmt: skip
    return Result.of(
        sc.name, sc.row, nemesis, verdict, lost, problems, recovery_s=recovery_s, p99_fault_ms=p99_fault,
        window=(inject_ns, heal_ns), runtime_s=time.monotonic() - started, drained=drained, run_id=run_id,
        timeline=series(history.ops, inject_ns, heal_ns),
    )  # fmt: skip


async def _webhooks_settled(ctx: Ctx, timeout_s: float) -> tuple[dict[Key, str], set[Key]]:
    """Wait (bounded) until every accepted webhook delivery is terminal; what is not is lost (SPEC I1).
    Also returns the deliveries whose webhook is ``dead``: each must have its DLQ entry."""
    api = Api(ctx.http, ctx.target.urls[0], ctx.history, "webhook-reader")
    todo: dict[tuple[str, str], str] = {
        (str(r.id), u): "never read" for r in ctx.workload.results if r.id is not None and r.cid in ctx.workload.hooked
        for u in r.user_ids
    }  # fmt: skip
    ids = sorted({nid for nid, _ in todo})
    dead: set[Key] = set()

    async def settled() -> bool:
        for nid in [n for n in ids if any(k[0] == n for k in todo)]:
            resp = await api.http.get(f"{api.base_url}/notifications/{nid}", params={"limit": 100})
            if resp.status_code != 200:
                continue
            for d in resp.json().get("deliveries", []):
                key = (nid, d["user_id"])
                if key in todo:
                    state = d.get("webhook_status")
                    if state in _WEBHOOK_DONE:
                        del todo[key]
                        if state == "dead":
                            dead.add(key)
                    else:
                        tries = d.get("attempts") or []
                        last = json.dumps(tries[-1], default=str)[:240] if tries else "none"
                        todo[key] = f"webhook_status {state} after the drain; {len(tries)} attempts, last {last}"
        return not todo

    await until(settled, timeout_s, 0.5)
    return {k: f"webhook channel: {v}" for k, v in todo.items()}, dead


def _dead_without_dlq(tl: Timeline, dead: set[Key]) -> dict[Key, str]:
    return {
        k: "webhook channel: dead, but no DLQ entry names it"
        for k in dead
        if "webhook" not in (tl.deliveries[k].dlq_channels if k in tl.deliveries else set())
    }


def _dead_unlisted(tl: Timeline) -> dict[Key, str]:
    """Socket deliveries in the DLQ that their user's final sweep did not list (SPEC §4: they stay listed)."""
    found = {}
    for key, d in tl.deliveries.items():
        if "socket" not in d.dlq_channels or d.acked_ok_ns is not None or d.ws_ack_sent_ns is not None:
            continue
        final = tl.final_sweep.get(key[1])
        if final is not None and key[0] not in final.ids:
            found[key] = "socket delivery dead (DLQ) and not listed in its user's offline queue (SPEC §4)"
    return found


def _p99_between(tl: Timeline, start_ns: int, end_ns: int, exclude: set[str]) -> float | None:
    samples = []
    for ing in tl.ok_ingests():
        if not start_ns <= ing.invoke_ns <= end_ns:
            continue
        for user in ing.user_ids:
            d = tl.deliveries.get((str(ing.id), user))
            if user not in exclude and d is not None and d.first_recv_ns is not None:
                samples.append((d.first_recv_ns - ing.invoke_ns) / 1e6)
    return round(percentile(samples, 99), 1) if samples else None


__all__ = ["Ctx", "Scenario", "Verdict", "run_scenario"]
