"""Instrumented clients: every HTTP call and every socket frame the checks make lands in the history.

These are the only ways the suite talks to the platform: HTTP and WebSocket, nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from conformance.history import History

#: Answers that mean "not done, and nothing was stored" (SPEC §2): a definite ``fail``.
_DEFINITE_FAILURES = range(400, 500)

#: A key sent with every request and socket of the checks (``--admin-key``: every scope), for a deployment
#: with authentication on; None (the suite's own clusters run with auth off) sends none.
CREDENTIAL: str | None = None


#: The deployment's NOTIFLOW_JWT_SECRET (``--jwt-secret``): sockets are end users' own (SPEC §7, an API key
#: opens none), so against a deployment with authentication on each socket carries its user's token.
JWT_SECRET: str | None = None


def auth_headers() -> dict[str, str]:
    return {"authorization": f"Bearer {CREDENTIAL}"} if CREDENTIAL else {}


def socket_headers(user_id: str) -> dict[str, str]:
    """What a socket of ``user_id`` sends: its own token (one hour) when the secret is known, else nothing."""
    if not JWT_SECRET:
        return {}
    now = int(time.time())
    token = jwt.encode({"sub": user_id, "iat": now, "exp": now + 3600}, JWT_SECRET, algorithm="HS256")
    return {"authorization": f"Bearer {token}"}


async def until(predicate: Callable[[], bool | Awaitable[bool]], timeout_s: float, interval_s: float = 0.05) -> bool:
    """Wait until ``predicate()`` holds, at most ``timeout_s``; returns whether it held (never raises)."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(interval_s)


@dataclass(slots=True)
class IngestResult:
    cid: str
    outcome: str  # ok | fail | info
    status: int | None
    body: Any
    headers: httpx.Headers | None = None
    user_ids: list[str] = field(default_factory=list)

    @property
    def id(self) -> str | None:
        return self.body.get("id") if self.outcome == "ok" and isinstance(self.body, dict) else None


def _json(resp: httpx.Response) -> Any:
    try:
        return resp.json()
    except ValueError:
        return None


class Api:
    """HTTP calls of one client process against one gateway node. One operation at a time per process."""

    def __init__(self, http: httpx.AsyncClient, base_url: str, history: History, process: str) -> None:
        self.http, self.base_url, self.history, self.process = http, base_url.rstrip("/"), history, process

    def as_process(self, process: str, base_url: str | None = None) -> Api:
        return Api(self.http, base_url or self.base_url, self.history, process)

    @property
    def node(self) -> str:
        return self.base_url.rsplit(":", 1)[-1]

    async def ingest(
        self,
        user_ids: list[str],
        *,
        event: str = "conformance.test",
        payload: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
        ttl_seconds: int | None = None,
        webhook_url: str | None = None,
        status_url: str | None = None,
        cid: str | None = None,
        collapse_key: str | None = None,
        topic: str | None = None,
    ) -> IngestResult:
        """POST /notifications to ``user_ids``; with ``topic``, to that topic instead, ``user_ids`` being its
        subscribers at acceptance (what the history expects it to reach)."""
        cid = cid or uuid.uuid4().hex
        body: dict[str, Any] = {
            "user_ids": user_ids,
            "event": event,
            "payload": {**(payload or {}), "cid": cid},
        }
        if topic is not None:
            del body["user_ids"]
            body["topic"] = topic
        if ttl_seconds is not None:
            body["ttl_seconds"] = ttl_seconds
        if webhook_url is not None:
            body["webhook_url"] = webhook_url
        if status_url is not None:
            body["status_url"] = status_url
        extra: dict[str, Any] = {}
        if collapse_key is not None:
            body["collapse_key"] = extra["collapse_key"] = collapse_key
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        inv = self.history.invoke(
            self.process, "ingest", cid=cid, user_ids=user_ids, node=self.node, ttl=ttl_seconds is not None,
            receipts=status_url is not None, **extra,
        )
        try:
            resp = await self.http.post(f"{self.base_url}/notifications", json=body, headers=headers)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            inv.fail(status=None, error=f"{type(exc).__name__}: not sent")
            return IngestResult(cid, "fail", None, None, None, user_ids)
        except httpx.HTTPError as exc:  # a timeout or a cut connection after sending: unknown
            inv.info(status=None, error=f"{type(exc).__name__}: {exc}")
            return IngestResult(cid, "info", None, None, None, user_ids)
        data = _json(resp)
        if resp.status_code == 202 and isinstance(data, dict) and "id" in data:
            inv.ok(id=str(data["id"]), recipients=data.get("recipients"), status=202)
            return IngestResult(cid, "ok", 202, data, resp.headers, user_ids)
        error = data.get("error", {}).get("code") if isinstance(data, dict) and data.get("error") else resp.text[:200]
        # 503 outcome_unknown: the store failed mid-commit, so the notification may exist (an info, not a fail).
        if resp.status_code in _DEFINITE_FAILURES or (resp.status_code == 503 and error != "outcome_unknown"):
            inv.fail(status=resp.status_code, error=error)
            return IngestResult(cid, "fail", resp.status_code, data, resp.headers, user_ids)
        inv.info(status=resp.status_code, error=error)
        return IngestResult(cid, "info", resp.status_code, data, resp.headers, user_ids)

    async def subscribe(self, topic: str, user: str) -> None:
        """PUT /topics/{topic}/subscribers/{user}; raises unless 204."""
        resp = await self.http.put(f"{self.base_url}/topics/{topic}/subscribers/{user}")
        if resp.status_code != 204:
            raise AssertionError(f"subscribe {user} to {topic}: {resp.status_code} {resp.text[:200]}")

    async def fetch(self, user: str, *, after_seq: int = 0, limit: int = 100) -> tuple[list[dict[str, Any]], Any]:
        """One page of the offline queue, recorded; raises on a non-200 answer."""
        inv = self.history.invoke(self.process, "fetch", user_id=user, after_seq=after_seq, limit=limit)
        try:
            resp = await self.http.get(
                f"{self.base_url}/notifications/offline/{user}",
                params={"after_seq": after_seq, "limit": limit},
            )
        except httpx.HTTPError as exc:
            inv.info(error=f"{type(exc).__name__}: {exc}")
            raise
        if resp.status_code != 200:
            inv.fail(status=resp.status_code, error=resp.text[:200])
            raise AssertionError(f"GET offline/{user} answered {resp.status_code}: {resp.text[:300]}")
        data = resp.json()
        items = [
            {**n, "cid": (n.get("payload") or {}).get("cid") if isinstance(n.get("payload"), dict) else None}
            for n in data["notifications"]
        ]
        inv.ok(
            items=[{"id": i["id"], "seq": i["seq"], "cid": i["cid"]} for i in items],
            next=data["next_after_seq"],
        )
        return items, data["next_after_seq"]

    async def presence(self, user: str) -> dict[str, Any]:
        """GET /presence/{user}, recorded; raises on a non-200 answer."""
        inv = self.history.invoke(self.process, "presence", user_id=user)
        try:
            resp = await self.http.get(f"{self.base_url}/presence/{user}")
        except httpx.HTTPError as exc:
            inv.info(error=f"{type(exc).__name__}: {exc}")
            raise
        if resp.status_code != 200:
            inv.fail(status=resp.status_code, error=resp.text[:200])
            raise AssertionError(f"GET presence/{user} answered {resp.status_code}: {resp.text[:300]}")
        data: dict[str, Any] = resp.json()
        inv.ok(**data)
        return data

    async def sweep(self, user: str, *, limit: int = 500, max_pages: int = 1000) -> list[dict[str, Any]]:
        """The whole offline queue of ``user``, page by page, recorded as one ``sweep`` (bounded in pages)."""
        started = self.history.now_ns()
        items: list[dict[str, Any]] = []
        after, complete = 0, False
        for _ in range(max_pages):
            page, nxt = await self.fetch(user, after_seq=after, limit=limit)
            items.extend(page)
            if nxt is None:
                complete = True
                break
            after = int(nxt)
        self.history.observe(
            self.process,
            "sweep",
            user_id=user,
            started_ns=started,
            complete=complete,
            items=[{"id": i["id"], "seq": i["seq"], "cid": i["cid"]} for i in items],
        )
        return items

    async def ack(self, user: str, *, ids: list[str] | None = None, up_to_seq: int | None = None) -> httpx.Response:
        body: dict[str, Any] = {"up_to_seq": up_to_seq} if up_to_seq is not None else {"ids": ids or []}
        inv = self.history.invoke(self.process, "ack", user_id=user, **body)
        try:
            resp = await self.http.post(f"{self.base_url}/notifications/offline/{user}/ack", json=body)
        except httpx.HTTPError as exc:
            inv.info(error=f"{type(exc).__name__}: {exc}")
            raise
        data = _json(resp)
        if resp.status_code == 200 and isinstance(data, dict):
            inv.ok(acknowledged=data.get("acknowledged"))
        else:
            inv.fail(status=resp.status_code, error=resp.text[:200])
        return resp

    async def status(self, nid: str, user: str | None = None, limit: int = 100) -> dict[str, Any] | None:
        """GET /notifications/{id}; each delivery's state is recorded. None on 404."""
        params: dict[str, Any] = {"limit": limit}
        if user is not None:
            params["user_id"] = user
        resp = await self.http.get(f"{self.base_url}/notifications/{nid}", params=params)
        if resp.status_code == 404:
            return None
        assert resp.status_code == 200, f"GET /notifications/{nid} answered {resp.status_code}: {resp.text[:300]}"
        data: dict[str, Any] = resp.json()
        for d in data.get("deliveries", []):
            self.history.observe(
                self.process, "status", id=nid, user_id=d["user_id"], status=d.get("status"), seq=d.get("seq"),
                webhook_status=d.get("webhook_status"),
            )
        return data

    async def dlq(self, user: str, *, max_pages: int = 50) -> list[dict[str, Any]]:
        """Every DLQ entry of ``user`` (recorded)."""
        entries: list[dict[str, Any]] = []
        after: Any = None
        for _ in range(max_pages):
            params: dict[str, Any] = {"user_id": user, "limit": 100}
            if after is not None:
                params["after"] = after
            resp = await self.http.get(f"{self.base_url}/dlq", params=params)
            assert resp.status_code == 200, f"GET /dlq answered {resp.status_code}: {resp.text[:300]}"
            data = resp.json()
            entries.extend(data["entries"])
            after = data.get("next_after")
            if after is None:
                break
        self.history.observe(self.process, "dlq", entries=entries)
        return entries


class Socket:
    """One WebSocket of one user: collects notification frames, records them, optionally acks them."""

    def __init__(
        self,
        base_url: str,
        user: str,
        history: History,
        conn: str,
        *,
        live: bool = True,
        auto_ack: bool = False,
    ) -> None:
        self.url = base_url.replace("http://", "ws://", 1).rstrip("/") + f"/ws/{user}"
        self.node = base_url.rsplit(":", 1)[-1]
        self.user, self.history, self.conn, self.live, self.auto_ack = user, history, conn, live, auto_ack
        self.received: dict[str, dict[str, Any]] = {}
        self.confirmed: set[str] = set()  # ids of this socket's acks the gateway answered with ``acked``
        # Each ack frame carries a ref (this socket's counter); the gateway answers with the ref alone, so the
        # ids of each ref awaiting an answer are kept here.
        self._refs: dict[int, list[str]] = {}
        self._next_ref = 0
        self.cids: set[str] = set()
        self.frames = 0
        self.close_code: int | None = None
        self.closed_by: str | None = None
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pong = asyncio.Event()
        self._changed = asyncio.Event()

    async def open(self, timeout_s: float = 10.0) -> Socket:
        self._ws = await connect(
            self.url, open_timeout=timeout_s, max_size=2**22, close_timeout=2,
            additional_headers=socket_headers(self.user),
        )
        self._reader = asyncio.create_task(self._read(), name=f"ws-{self.conn}")
        # One ping/pong round trip: the gateway has registered the socket before it answers.
        await self.send({"type": "ping"})
        async with asyncio.timeout(timeout_s):
            await self._pong.wait()
        self.history.observe(self.conn, "ws_open", conn=self.conn, user_id=self.user, node=self.node, live=self.live)
        return self

    async def send(self, frame: dict[str, Any]) -> None:
        if self._ws is None:
            raise RuntimeError("socket is not open")
        await self._ws.send(json.dumps(frame))

    async def ack(self, ids: list[str]) -> None:
        if ids:
            ref = self._next_ref
            self._next_ref += 1
            self._refs[ref] = ids  # before sending: the answer may come before send() returns
            await self.send({"type": "ack", "ids": ids, "ref": ref})
            self.history.observe(self.conn, "ws_ack", conn=self.conn, user_id=self.user, ids=ids)

    async def _read(self) -> None:
        assert self._ws is not None
        try:
            async for raw in self._ws:
                frame = json.loads(raw)
                kind = frame.get("type")
                if kind == "pong":
                    self._pong.set()
                elif kind == "notification":
                    self._on_notification(frame)
                    if self.auto_ack:
                        await self.ack([str(frame["id"])])
                elif kind == "acked":
                    ids = self._answered(frame)
                    self.confirmed.update(ids)
                    self.history.observe(self.conn, "ws_acked", conn=self.conn, user_id=self.user, ids=ids)
                elif kind == "error" and frame.get("code") == "ack_failed":
                    ids = self._answered(frame)
                    self.history.observe(self.conn, "ws_ack_failed", conn=self.conn, user_id=self.user, ids=ids)
                self._changed.set()
        except ConnectionClosed:
            pass
        finally:
            rcvd = self._ws.close_code
            if self.closed_by is None:
                self.closed_by, self.close_code = "server", rcvd
                self.history.observe(self.conn, "ws_close", conn=self.conn, user_id=self.user, code=rcvd, by="server")
            self._changed.set()

    def _answered(self, frame: dict[str, Any]) -> list[str]:
        """The ids of the ack frame an ``acked``/``ack_failed`` answers (by its ref); none for a ref not sent."""
        ref = frame.get("ref")
        return self._refs.pop(ref, []) if isinstance(ref, int) else []

    def _on_notification(self, frame: dict[str, Any]) -> None:
        self.frames += 1
        nid = str(frame["id"])
        payload = frame.get("payload")
        cid = payload.get("cid") if isinstance(payload, dict) else None
        self.received.setdefault(nid, frame)
        if cid is not None:
            self.cids.add(str(cid))
        self.history.observe(
            self.conn, "ws_recv", conn=self.conn, user_id=self.user, id=nid, seq=frame.get("seq"), cid=cid,
            event=frame.get("event"), collapse_key=frame.get("collapse_key"),
        )  # fmt: skip

    async def wait_for_cids(self, cids: set[str], timeout_s: float) -> bool:
        """Wait until every ``cid`` arrived; False if the socket closed or ``timeout_s`` passed first."""
        return await self._wait(lambda: cids <= self.cids, timeout_s)

    async def wait_for_ids(self, ids: set[str], timeout_s: float) -> bool:
        """Wait until every notification id arrived; False if the socket closed or ``timeout_s`` passed."""
        return await self._wait(lambda: ids <= self.received.keys(), timeout_s)

    async def wait_for_confirmed(self, ids: set[str], timeout_s: float) -> bool:
        """Wait until the gateway confirmed (``acked``) an ack of every id; False if the socket closed or
        ``timeout_s`` passed first."""
        return await self._wait(lambda: ids <= self.confirmed, timeout_s)

    async def _wait(self, done: Callable[[], bool], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not done():
            if self.closed_by is not None or time.monotonic() >= deadline:
                return False
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    await self._changed.wait()
        return True

    async def close(self) -> None:
        if self._ws is None:
            return
        if self.closed_by is None:
            self.closed_by = "client"
            self.history.observe(self.conn, "ws_close", conn=self.conn, user_id=self.user, code=1000, by="client")
        with contextlib.suppress(Exception):
            await self._ws.close()
        if self._reader is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await self._reader
