"""What a socket ack promises (SPEC §3, issue 24 window 3), under PostgreSQL resets, socket closes and a SIGKILL.

The gateway answers each ack frame that carries a ``ref`` (the conformance client sends one with every ack) with
``{"type": "acked", "ref"}`` once its commit is durable, or ``ack_failed`` with the ref when the commit failed; a
socket that closes first gets neither. A confirmed ack holds like an HTTP ack: its notifications are
never listed again. An unconfirmed one may or may not have been applied. The history records every ack frame
sent (``ws_ack``) and every confirmation (``ws_acked``), and the checker holds confirmed acks to the promise
(``resurrected``) while unconfirmed ones may come back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import asyncpg
import httpx
import pytest

from conformance.client import Api, Socket
from conformance.cluster import Target
from conformance.history import History
from conformance.report import judge

ROUNDS = 6
PER_ROUND = 8


async def _reset_postgresql(database_url: str) -> int:
    """Terminate every other backend of the cluster's database: each process's pooled connections break
    mid-use, as on a PostgreSQL restart or a reset connection."""
    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        killed = await conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
        )
    finally:
        await conn.close()
    return int(killed)


async def _sweep_once_healed(api: Api, user: str, timeout_s: float = 60.0) -> list[dict[str, object]]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        try:
            return await api.sweep(user, limit=100)
        except (AssertionError, httpx.HTTPError):
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.5)


@pytest.mark.timeout(300)
async def test_a_confirmed_socket_ack_never_comes_back_through_resets_closes_and_a_kill(
    start_cluster: Callable[..., Target], http: httpx.AsyncClient, history: History, run_id: str, report_limit: int
) -> None:
    target: Target = start_cluster("PostgreSQL resets, SIGKILL", gateways=1, stream_workers=1, retry_workers=1)
    assert target.database_url is not None and target.stack is not None
    url = target.urls[0]
    user = f"{run_id}-sockack"
    api = Api(http, url, history, "producer")
    sock = await Socket(url, user, history, "ws-0").open()
    ids: list[str] = []
    for k in range((ROUNDS + 1) * PER_ROUND):
        result = await api.ingest([user], event="socket.acks", payload={"k": k})
        assert result.outcome == "ok" and result.id is not None, f"ingest answered {result.status}: {result.body}"
        ids.append(result.id)
    assert await sock.wait_for_ids(set(ids), 60), "the open socket did not receive every notification"

    # Before any fault: an ack is confirmed once committed.
    first = ids[:PER_ROUND]
    await sock.ack(first)
    assert await sock.wait_for_confirmed(set(first), 30), "the gateway never confirmed a committed socket ack"

    # Each round acks a batch, then resets PostgreSQL while that ack commits; every other round also closes
    # the socket at once (a confirmation or an ack_failed then has nowhere to go) and opens a new one.
    confirmed: set[str] = set(first)
    resets = 0
    for r in range(1, ROUNDS):
        batch = ids[r * PER_ROUND : (r + 1) * PER_ROUND]
        await sock.ack(batch)
        resets += await _reset_postgresql(target.database_url)
        if r % 2:
            await sock.close()
            confirmed |= sock.confirmed
            sock = await Socket(url, user, history, f"ws-{r}", live=False).open()
        else:
            await sock.wait_for_confirmed(set(batch), 5)  # confirmed or not: both are allowed
    assert resets > 0, "no backend was reset"

    # Last, the node is killed (SIGKILL) right after an ack frame: acks still queued for their group commit die
    # with it, unconfirmed. The node is started again for the reads.
    batch = ids[ROUNDS * PER_ROUND :]
    await sock.ack(batch)
    target.stack.kill("gateway-0")
    await sock.wait_for_confirmed(set(batch), 10)  # returns once the socket is seen closed
    await sock.close()
    confirmed |= sock.confirmed
    await asyncio.to_thread(target.stack.start_process, "gateway-0")

    # Healed: the queue is read (again, to see anything come back late); no confirmed ack may be listed.
    reader = api.as_process("reader")
    listed = {str(i["id"]) for i in await _sweep_once_healed(reader, user)}
    listed |= {str(i["id"]) for i in await _sweep_once_healed(reader, user)}
    came_back = sorted(confirmed & listed)
    unconfirmed_back = sorted((set(ids) - confirmed) & listed)
    print(f"socket acks: {len(confirmed)} of {len(ids)} confirmed, {len(unconfirmed_back)} unconfirmed came back")
    judge(
        "socket acks through PostgreSQL resets, socket closes and a SIGKILL",
        history,
        limit=report_limit,
        latency=False,
        problems=[f"confirmed ack of {nid} came back" for nid in came_back],
    )
