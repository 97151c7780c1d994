"""Hand-written histories for the checker's unit tests: one method per kind of operation, exact times."""

from __future__ import annotations

from typing import Any

from conformance.history import History


class Script:
    """Builds a history step by step; every operation advances a fake clock by one millisecond."""

    def __init__(self) -> None:
        self.t_ns = 0
        self.history = History("script", clock=self._tick)
        self.cids: dict[str, str] = {}

    def _tick(self) -> int:
        self.t_ns += 1_000_000
        return self.t_ns

    def ingest(
        self, cid: str, users: list[str], outcome: str = "ok", process: str = "p0", ttl: bool = False,
        receipts: bool = False, collapse_key: str | None = None,
    ) -> str:
        """Send ``cid`` to ``users``; returns the notification id the server answered (``n-<cid>``)."""
        nid = f"n-{cid}"
        self.cids[nid] = cid
        extra = {} if collapse_key is None else {"collapse_key": collapse_key}
        inv = self.history.invoke(process, "ingest", cid=cid, user_ids=users, node="gw0", ttl=ttl, receipts=receipts,
                                  **extra)  # fmt: skip
        if outcome == "ok":
            inv.ok(id=nid, recipients=len(users))
        elif outcome == "fail":
            inv.fail(status=422, error="invalid")
        elif outcome == "info":
            inv.info(status=None, error="timeout")
        return nid

    def open(self, conn: str, user: str, live: bool = True) -> None:
        self.history.observe(conn, "ws_open", conn=conn, user_id=user, node="gw0", live=live)

    def recv(self, conn: str, user: str, nid: str, seq: int, cid: str | None = None) -> None:
        cid = cid if cid is not None else self.cids.get(nid)
        self.history.observe(conn, "ws_recv", conn=conn, user_id=user, id=nid, seq=seq, cid=cid, event="e")

    def overlapping(self, cids: list[str], user: str, collapse_key: str, process: str = "p") -> list[str]:
        """Send ``cids`` to ``user`` concurrently (every invoke before any answer), all with ``collapse_key``."""
        invs = []
        for i, cid in enumerate(cids):
            self.cids[f"n-{cid}"] = cid
            invs.append(self.history.invoke(
                f"{process}{i}", "ingest", cid=cid, user_ids=[user], node="gw0", ttl=False, collapse_key=collapse_key
            ))
        for cid, inv in zip(cids, invs, strict=True):
            inv.ok(id=f"n-{cid}", recipients=1)
        return [f"n-{cid}" for cid in cids]

    def close(self, conn: str, user: str, by: str = "client", code: int = 1000) -> None:
        self.history.observe(conn, "ws_close", conn=conn, user_id=user, code=code, by=by)

    def ws_ack(self, conn: str, user: str, ids: list[str]) -> None:
        self.history.observe(conn, "ws_ack", conn=conn, user_id=user, ids=ids)

    def ws_acked(self, conn: str, user: str, ids: list[str]) -> None:
        """The gateway confirmed an ack of ``ids`` on ``conn`` (an ``acked`` frame arrived)."""
        self.history.observe(conn, "ws_acked", conn=conn, user_id=user, ids=ids)

    def ws_ack_failed(self, conn: str, user: str, ids: list[str]) -> None:
        self.history.observe(conn, "ws_ack_failed", conn=conn, user_id=user, ids=ids)

    def _items(self, items: list[tuple[str, int]]) -> list[dict[str, Any]]:
        return [{"id": nid, "seq": seq, "cid": self.cids.get(nid)} for nid, seq in items]

    def sweep(self, user: str, items: list[tuple[str, int]], complete: bool = True) -> None:
        started = self.history.now_ns()
        self.history.observe(
            f"sweeper-{user}", "sweep", user_id=user, items=self._items(items), complete=complete,
            started_ns=started,
        )  # fmt: skip

    def fetch(self, user: str, items: list[tuple[str, int]], after_seq: int = 0) -> None:
        inv = self.history.invoke(f"fetcher-{user}", "fetch", user_id=user, after_seq=after_seq, limit=100)
        inv.ok(items=self._items(items), next=None)

    def ack(self, user: str, ids: list[str] | None = None, up_to_seq: int | None = None, acknowledged: int = 0) -> None:
        value: dict[str, Any] = {"user_id": user}
        if up_to_seq is not None:
            value["up_to_seq"] = up_to_seq
        else:
            value["ids"] = ids or []
        self.history.invoke(f"acker-{user}", "ack", **value).ok(acknowledged=acknowledged)

    def status(
        self, nid: str, user: str, status: str, seq: int | None = None, webhook_status: str | None = None
    ) -> None:
        self.history.observe(
            "reader", "status", id=nid, user_id=user, status=status, seq=seq, webhook_status=webhook_status
        )

    def receipt(self, nid: str, user: str, kind: str, channel: str = "socket", signed: bool = True) -> None:
        """The status_url received one POST with one ``delivery.<kind>`` event for (nid, user)."""
        event = {"id": f"rcpt-{nid}-{user}-{channel}-{kind}", "type": f"delivery.{kind}", "timestamp": "t",
                 "data": {"notification_id": nid, "user_id": user, "seq": 1, "channel": channel, "status": kind}}
        self.history.observe("status-url", "receipts", events=[event], signed=signed)

    def dlq(self, entries: list[tuple[str, str, str]]) -> None:
        rows = [{"notification_id": n, "user_id": u, "channel": c} for n, u, c in entries]
        self.history.observe("reader", "dlq", entries=rows)
