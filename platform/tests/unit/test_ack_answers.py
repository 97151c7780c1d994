"""What a socket's ack frame is answered when its commit fails (gateway/ws.py ``_Reader``, SPEC §3): with its
``ref`` when it carried one, else with its ids, the answer clients that send no ref rely on to send it again."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from notiflow.errors import StoreUnavailable
from notiflow.gateway.hub import Connection
from notiflow.gateway.ws import _Reader

pytestmark = pytest.mark.timeout(10)


async def test_a_failed_ack_is_answered_with_its_ref_or_else_with_its_ids() -> None:
    sent: list[dict[str, Any]] = []
    both = asyncio.Event()

    async def send(frames: list[str]) -> bool:
        sent.extend(orjson.loads(f) for f in frames)
        if len(sent) >= 2:
            both.set()
        return True

    def commit_fails(user_id: str, ids: list[str], done: Callable[[object], None]) -> None:
        # The group commit reports its outcome later, from its own task.
        asyncio.get_running_loop().call_soon(done, StoreUnavailable("PostgreSQL is away"))

    conn = Connection("ann", 10, lambda code: None, send)
    reader = _Reader(conn, commit_fails, 100, 1000)
    plain, referenced = str(uuid.uuid4()), str(uuid.uuid4())
    reader(orjson.dumps({"type": "ack", "ids": [plain]}).decode())
    reader(orjson.dumps({"type": "ack", "ids": [referenced], "ref": 7}).decode())
    await asyncio.wait_for(both.wait(), timeout=5)
    assert all(f["type"] == "error" and f["code"] == "ack_failed" for f in sent), sent
    assert [f["ids"] for f in sent if "ref" not in f] == [[plain]], sent  # no ref: its ids
    assert [f["ref"] for f in sent if "ref" in f] == [7] and all("ids" not in f for f in sent if "ref" in f), sent
    assert conn.acks_in_flight == 0
