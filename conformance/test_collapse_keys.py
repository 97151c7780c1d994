"""Collapse keys (the contract's "Collapse keys"): a newer notification with the same key for the same user replaces
the older unacknowledged one. The replaced one is never listed again and its state reads ``replaced`` (terminal, I1);
the newest of each key arrives: live on open sockets, with its ``collapse_key`` in the frame, and in the queue.

Producers on every node send concurrently to overlapping users, with a few keys and without one; the checker
(collapse.py) judges the history, and the scenario checks what it can say exactly once everything is quiet."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from typing import Any

import httpx
import pytest

from conformance.client import Api, Socket, until
from conformance.cluster import Target
from conformance.history import History
from conformance.report import judge

KEYS = ("badge", "score", "chat:42")


@pytest.mark.timeout(240)
async def test_the_newest_of_each_key_replaces_the_older_ones(
    target: Target, http: httpx.AsyncClient, history: History, run_id: str, report_limit: int
) -> None:
    urls, n = target.urls, len(target.urls)
    online = [f"{run_id}-ck-on{i}" for i in range(3)]
    offline = [f"{run_id}-ck-off{i}" for i in range(3)]
    users = online + offline
    sockets = [await Socket(urls[i % n], u, history, f"ws-{u}").open() for i, u in enumerate(online)]
    sent: list[tuple[str, list[str], str | None]] = []  # (id, users, key) of every accepted notification

    async def producer(p: int) -> None:
        api = Api(http, urls[p % n], history, f"ck-producer-{p}")
        rng = random.Random(p)
        for k in range(40):
            api = api.as_process(api.process, urls[(p + k) % n])
            to = rng.sample(users, rng.randint(1, 3))
            key = rng.choice((*KEYS, None))
            result = await api.ingest(to, event="collapse.t", payload={"k": k, "p": p}, collapse_key=key)
            assert result.outcome == "ok", f"ingest answered {result.status}: {result.body}"
            assert result.id is not None
            sent.append((result.id, to, key))

    await asyncio.gather(*(producer(p) for p in range(3)))
    api = Api(http, urls[0], history, "ck-api")
    # Each delivery's state and seq (recorded: the checker orders concurrent senders by these seqs).
    state: dict[tuple[str, str], dict[str, Any]] = {}
    for nid, _, _ in sent:
        detail = await api.status(nid, limit=10)
        assert detail is not None
        for d in detail["deliveries"]:
            state[(nid, d["user_id"])] = d
    newest: dict[tuple[str, str], tuple[int, str]] = {}
    for nid, to, key in sent:
        for user in to:
            if key is not None:
                seq = int(state[(nid, user)]["seq"])
                newest[(user, key)] = max(newest.get((user, key), (0, "")), (seq, nid))

    # The newest of each key reaches the sockets of its online users, with its key.
    async def arrived() -> bool:
        return all(nid in s.received for s in sockets for (u, _), (_, nid) in newest.items() if u == s.user)

    await until(arrived, timeout_s=30)
    queues = {u: await api.as_process(f"ck-sweep-{u}").sweep(u, limit=17) for u in users}
    for s in sockets:
        await s.close()

    problems: list[str] = []
    for nid, to, key in sent:
        for user in to:
            status = state[(nid, user)]["status"]
            listed = nid in {str(i["id"]) for i in queues[user]}
            is_newest = key is None or newest[(user, key)][1] == nid
            if is_newest and (status == "replaced" or not listed):
                problems.append(f"{nid} for {user} (key {key}) is the newest of its key, but reads {status}")
            if not is_newest and (status != "replaced" or listed):
                problems.append(f"{nid} for {user} (key {key}) has a newer one, but reads {status} (listed {listed})")
    by_key: dict[tuple[str, str], list[str]] = defaultdict(list)
    for user, items in queues.items():
        for item in items:
            if item.get("collapse_key") is not None:
                by_key[(user, item["collapse_key"])].append(str(item["id"]))
    problems += [f"{u} lists {len(ids)} notifications of key {k}" for (u, k), ids in by_key.items() if len(ids) != 1]
    for s in sockets:
        for (u, key), (_, nid) in newest.items():
            frame = s.received.get(nid) if u == s.user else None
            if frame is not None and frame.get("collapse_key") != key:
                problems.append(f"{s.conn}: frame of {nid} carries collapse_key {frame.get('collapse_key')!r}")
    if not any(st["status"] == "replaced" for st in state.values()):
        problems.append("the scenario replaced nothing")
    judge("collapse keys", history, limit=report_limit, problems=problems)
