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
