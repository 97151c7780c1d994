"""The HTTP ack by ids plans only the day partitions of its ids (docs/record.md, "What a statement costs as
partitions accumulate"; loadtests/plan_cost.py), and acks exactly the open deliveries it names, across days."""

from __future__ import annotations

import re
from datetime import timedelta

import asyncpg
import pytest

from notiflow.ids import id_at, new_id
from notiflow.models import NewNotification
from notiflow.store import ingest as ingest_sql
from notiflow.store import partitions
from notiflow.store import queries as q

pytestmark = pytest.mark.timeout(60)


def note(nid: object, users: list[str]) -> NewNotification:
    return NewNotification(nid, users, "e", "{}", None, None)  # type: ignore[arg-type]


async def test_the_ack_by_ids_plans_only_the_partitions_of_its_ids(db: asyncpg.Pool) -> None:
    async with db.acquire() as conn:
        today = (await partitions.server_now(conn)).date()
        await partitions.ensure(conn, today, behind=12)  # 16 day partitions
        item = note(new_id(), ["ann"])
        await ingest_sql.insert_notifications(conn, [item])
        plan = "\n".join(r[0] for r in await conn.fetch(f"EXPLAIN (COSTS off) {q._ACK_IDS}", "ann", [item.id]))
        days = set(re.findall(r"deliveries_p(\d{8})", plan))
        # The lock step and the UPDATE each reach today's partition (and the legacy one), no other day.
        assert days == {f"{today:%Y%m%d}"}, plan
        assert await q.ack_ids(conn, "ann", [item.id]) == 1


async def test_the_ack_by_ids_acks_the_open_deliveries_it_names_on_any_day_and_nothing_else(db: asyncpg.Pool) -> None:
    async with db.acquire() as conn:
        now = await partitions.server_now(conn)
        await partitions.ensure(conn, now.date(), behind=3)
        old, new, acked, theirs, spare = (
            note(id_at(now - timedelta(days=2)), ["ann"]), note(new_id(), ["ann"]), note(new_id(), ["ann"]),
            note(new_id(), ["bob"]), note(new_id(), ["ann"]),
        )  # fmt: skip
        await ingest_sql.insert_notifications(conn, [old, new, acked, theirs, spare])
        assert await q.ack_ids(conn, "ann", [acked.id]) == 1
        # Two open, one acked already, one not ann's (bob's delivery), one unknown id; `spare` is not named.
        assert await q.ack_ids(conn, "ann", [old.id, new.id, acked.id, theirs.id, new_id()]) == 2
        assert await q.ack_ids(conn, "ann", []) == 0
        rows = await conn.fetch("SELECT notification_id, user_id, status FROM deliveries")
        status = {(r["notification_id"], r["user_id"]): r["status"] for r in rows}
        assert status == {
            (old.id, "ann"): "delivered", (new.id, "ann"): "delivered", (acked.id, "ann"): "delivered",
            (theirs.id, "bob"): "pending", (spare.id, "ann"): "pending",
        }  # fmt: skip


async def test_the_socket_ack_walks_its_pairs_in_key_order_through_the_primary_key(db: asyncpg.Pool) -> None:
    """Migration 014: the socket ack updates without a lock step, so its plan must take the rows in the pairs' key
    order (the order of every multi-row writer: no deadlock) and find each by its key, never by a scan. The
    function's own statement, as stored, under its own settings and as a generic (cached) plan."""
    async with db.acquire() as conn:
        today = (await partitions.server_now(conn)).date()
        await partitions.ensure(conn, today, behind=12)  # 16 day partitions, as small as a new database's
        src, config = await conn.fetchrow("SELECT prosrc, proconfig FROM pg_proc WHERE proname = 'notiflow_ack_pairs'")
        body = src[src.index("WITH p AS") : src.index("SELECT count(*) INTO n")]
        for name, param in (("users", "$1::text"), ("ids", "$2::text"), ("sep", "$3::text")):
            body = re.sub(rf"\b{name}\b", param, body)
        async with conn.transaction():
            for setting in config:  # the function's own SET clauses
                name, _, value = setting.partition("=")
                await conn.execute(f"SET LOCAL {name} = {value}")
            await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
            await conn.execute(f"PREPARE ack_plan(text, text, text) AS {body} SELECT count(*) FROM acked")
            plan = [r[0] for r in await conn.fetch("EXPLAIN (COSTS off) EXECUTE ack_plan('a', 'b', 'c')")]
            await conn.execute("DEALLOCATE ack_plan")
        text = "\n".join(plan)
        assert "Hash Join" not in text and "Merge Join" not in text and "Seq Scan on deliveries" not in text, text
        assert "Join Filter" not in text and "Materialize" not in text, text  # no scan of a whole partition
        loop = next(i for i, line in enumerate(plan) if "Nested Loop" in line)
        children = [" ".join(line.split()) for line in plan[loop + 1 :] if line.strip().startswith("->")]
        assert children[0].startswith("-> CTE Scan on p"), text  # the outer side: the sorted pairs
        assert "Index Scan using deliveries_p" in text or "Index Scan using deliveries_v7" in text, text
        item = note(new_id(), ["ann", "bob"])
        await ingest_sql.insert_notifications(conn, [item])
        assert await q.ack_pairs(conn, [("ann", str(item.id)), ("bob", str(item.id)), ("cy", str(item.id))]) == 2
