"""I12 delivery receipts (issue 23, docs/contract.md §4a): a notification that names a ``status_url`` gets a signed
event there for each delivery and channel that reaches a terminal state (acknowledged, expired, dead), and one that
names none gets nothing. The checker (receipts.py) compares the terminal states read through the API with the
events the suite's sink received.

The status_url is the suite's webhook sink (an allowed host of the shared cluster). Against a --base-url target
this is skipped.
"""

from __future__ import annotations

import httpx
import pytest

from conformance.client import Api, until
from conformance.cluster import Target
from conformance.history import History
from conformance.receipts import record_receipts
from conformance.report import judge
from conformance.sink import WebhookSink


@pytest.mark.timeout(120)
async def test_every_terminal_delivery_that_asked_gets_its_receipt(
    target: Target, sink: WebhookSink, http: httpx.AsyncClient, history: History, run_id: str, report_limit: int
) -> None:
    target.require_control("the webhook sink must be an allowed host")
    api = Api(http, target.urls[0], history, "api")
    tag = f"{run_id}-receipts"
    acked, expiring, hooked, plain = (f"{run_id}-off-rcpt-{k}" for k in ("ack", "ttl", "hook", "plain"))
    status_url = sink.url("ok", tag)
    a = await api.ingest([acked], status_url=status_url)
    e = await api.ingest([expiring], ttl_seconds=1, status_url=status_url)
    h = await api.ingest([hooked], webhook_url=sink.url("reject", tag), status_url=status_url)
    p = await api.ingest([plain])  # asks for no receipts
    assert all(r.id for r in (a, e, h, p)), "ingest with a status_url was refused"
    for user, result in ((acked, a), (plain, p)):
        assert (await api.ack(user, ids=[str(result.id)])).status_code == 200
    want = {(str(a.id), acked): ("status", "delivered"), (str(e.id), expiring): ("status", "expired"),
            (str(h.id), hooked): ("webhook_status", "dead")}

    async def terminal() -> bool:
        for (nid, user), (field, state) in want.items():
            read = await api.as_process("poll").status(nid, user)
            if not read or read["deliveries"][0].get(field) != state:
                return False
        return True

    problems = [] if await until(terminal, 30, 0.25) else [f"not all of {want} reached their terminal state"]
    # Three events (one per terminal delivery above); the open socket channel of `hooked` sends none.
    if not await until(lambda: len({ev["id"] for c in sink.calls("ok", tag) for ev in c.body["events"]}) >= 3, 30):
        problems.append("fewer than 3 receipts arrived within 30 s")
    record_receipts(history, [(c.body, c.signature_ok) for c in sink.calls("ok", tag)])
    for user in (acked, expiring, hooked, plain):
        await api.as_process(f"sweep-{user}").sweep(user)
    judge("I12 delivery receipts", history, limit=report_limit, problems=problems)
