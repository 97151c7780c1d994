"""What a collapse key costs PostgreSQL per delivery (issue 23): the ingest of keyed notifications against the same
notifications without keys, measured like ``pg_floor.py`` (backend CPU of one connection, /proc of pg_backend_pid),
with version 7 ids (the day partitions the gateway writes).

A keyed batch runs as the gateway runs it (service/ingest.py): BEGIN, the insert statement, ``apply_collapse``
(store/collapse.py), COMMIT; each user gets a new notification of one of ``--keys`` keys per round, so that from
the second round on every keyed insert replaces an older delivery. Rows without a key take the statement they
always took; ``pg_floor.py`` before and after migration 011 says whether they got dearer.

    NOTIFLOW_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres python loadtests/collapse_floor.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from backend_cpu import Meter
from stores import fresh_database

from notiflow.ids import new_id
from notiflow.models import NewNotification
from notiflow.store import collapse
from notiflow.store import ingest as ingest_sql


def _batch(users: list[list[str]], key: str | None) -> list[NewNotification]:
    return [
        NewNotification(new_id(), u, "floor.test", '{"order": 42}', None, None, collapse_key=key) for u in users
    ]


async def _ingest(conn: Any, batches: list[list[NewNotification]]) -> int:
    """Each batch as the gateway commits it; how many deliveries were replaced."""
    replaced = 0
    for batch in batches:
        if any(i.collapse_key for i in batch):
            async with conn.transaction():
                await ingest_sql.insert_notifications(conn, batch)
                replaced += await collapse.apply_collapse(conn, collapse.keyed_rows(batch))
        else:
            await ingest_sql.insert_notifications(conn, batch)
    return replaced


async def run(m: Meter, args: argparse.Namespace) -> None:
    uni = [f"uni-{i}" for i in range(args.unicast_batch)]
    fan = [f"fan-{i}" for i in range(args.fanout_users)]
    keys = [f"key-{k}" for k in range(args.keys)]

    def unicast(key: str | None, rounds: int) -> list[list[NewNotification]]:
        return [_batch([[u] for u in uni], key) for _ in range(rounds)]

    def cycling() -> list[list[NewNotification]]:  # each round the next key: each insert replaces one
        return [b for r in range(args.rounds) for b in unicast(keys[r % len(keys)], 1)]

    def fanout(key: str | None) -> list[list[NewNotification]]:
        return [_batch([fan] * args.fanout_notifications, key) for _ in range(args.rounds)]

    await _ingest(m.conn, unicast(None, 2) + [b for k in keys for b in unicast(k, 1)])  # warm-up, every key once
    await m.conn.execute("ANALYZE")
    n_uni = args.rounds * args.unicast_batch
    n_fan = args.rounds * args.fanout_notifications * args.fanout_users
    replaced: dict[str, int] = {}
    for name, batches, n in (
        ("unicast insert, no key", lambda: unicast(None, args.rounds), n_uni),
        ("unicast insert, keyed", cycling, n_uni),
        ("fanout insert, no key", lambda: fanout(None), n_fan),
        ("fanout insert, keyed", lambda: fanout(keys[0]), n_fan),
    ):
        todo = batches()

        async def phase(todo: list[list[NewNotification]] = todo, name: str = name) -> None:
            replaced[name] = await _ingest(m.conn, todo)

        await m.phase(name, n, phase)
    print("replaced:", json.dumps(replaced))


async def main(args: argparse.Namespace) -> dict[str, Any]:
    async with fresh_database("collapsefloor") as db:
        await run(db.meter, args)
    return {"phases": db.meter.results}


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=10, help="statements per phase")
    p.add_argument("--unicast-batch", type=int, default=2000, help="one-recipient notifications per statement")
    p.add_argument("--fanout-notifications", type=int, default=10)
    p.add_argument("--fanout-users", type=int, default=1000)
    p.add_argument("--keys", type=int, default=3, help="keys each user's notifications cycle through")
    return p.parse_args()


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(parse()))))
