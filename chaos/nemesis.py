"""Nemeses (Jepsen's word): a fault that is injected, then healed. ``async with nemesis.fault():`` heals in
``finally``, so a fault never outlives its scenario, also when the scenario fails.

Network faults go through ``toxiproxy-python`` only (``chaos.toxi``), against ``python -m chaos.toxiproxy`` or a
real Toxiproxy. Process faults need the dev stack; client faults are sockets of this process that misbehave;
downstream faults switch the webhook sink; poison entries are XADDed into the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

from redis.exceptions import ResponseError
from websockets.exceptions import ConnectionClosed

from chaos.cluster import ChaosTarget
from conformance.client import Api, Socket
from conformance.history import History
from notiflow.models import USER_SEP
from notiflow.streams import bundle
from notiflow.streams.keys import GROUP


class Nemesis:
    """Base: ``inject()`` and ``heal()``; ``details`` says what the fault actually did (for the report)."""

    name = "nemesis"

    def __init__(self) -> None:
        self.details: dict[str, Any] = {}

    async def inject(self) -> None:
        raise NotImplementedError

    async def heal(self) -> None:
        raise NotImplementedError

    @contextlib.asynccontextmanager
    async def fault(self) -> AsyncIterator[Nemesis]:
        try:
            await self.inject()
            yield self
        finally:
            await self.heal()


class Toxic(Nemesis):
    """A toxic (latency, bandwidth, reset_peer, timeout, ...) on every proxy of ``paths``."""

    def __init__(
        self, target: ChaosTarget, paths: tuple[str, ...], kind: str, attributes: dict[str, Any],
        stream: str = "downstream",
    ) -> None:  # fmt: skip
        super().__init__()
        self.name = f"{kind} {attributes} on {', '.join(paths)} ({stream})"
        self.toxi, self.proxies = target.toxi, target.proxies(paths)
        self.kind, self.attributes, self.stream = kind, attributes, stream
        self.toxic_name = f"chaos_{kind}_{stream}"

    async def inject(self) -> None:
        for proxy in self.proxies:
            await self.toxi.add_toxic(proxy, self.toxic_name, self.kind, self.attributes, stream=self.stream)

    async def heal(self) -> None:
        for proxy in self.proxies:
            await self.toxi.remove_toxic(proxy, self.toxic_name)


class Outage(Nemesis):
    """The proxies of ``paths`` disabled: connections refused and the open ones dropped."""

    def __init__(self, target: ChaosTarget, paths: tuple[str, ...]) -> None:
        super().__init__()
        self.name = f"outage of {', '.join(paths)}"
        self.toxi, self.proxies = target.toxi, target.proxies(paths)

    async def inject(self) -> None:
        for proxy in self.proxies:
            await self.toxi.set_enabled(proxy, False)

    async def heal(self) -> None:
        for proxy in self.proxies:
            await self.toxi.set_enabled(proxy, True)


class Kill(Nemesis):
    """SIGKILL of one dev-stack process at inject, a fresh process of the same name at heal."""

    def __init__(self, target: ChaosTarget, process: str) -> None:
        super().__init__()
        self.name = f"SIGKILL {process}, restarted at heal"
        self.target, self.process = target, process
        self.stack = target.require_stack(f"it SIGKILLs {process}")

    async def moment(self) -> None:
        """Wait for the moment to kill (subclasses: between read and ack, mid-move); bounded."""

    async def inject(self) -> None:
        await self.moment()
        self.details["killed_node"] = self.stack.node_ids.get(self.process)
        self.stack.kill(self.process)

    async def heal(self) -> None:
        if not self.stack.alive(self.process):
            await asyncio.to_thread(self.stack.start_process, self.process)


def _named_work(fields: dict[str, str]) -> list[tuple[str, str, str]]:
    """(notification id, user ids joined by USER_SEP, channel) of each notification a stream entry names: a
    bundle names many (notiflow.streams.bundle). An entry the worker could not parse names what its fields say."""
    try:
        return [(str(e.notification_id), USER_SEP.join(e.user_ids), e.channel.value) for e in bundle.parse(fields)]
    except (KeyError, ValueError):
        return [(fields.get("n", ""), fields.get("u") or "", fields.get("c", "socket"))]


def _redis(target: ChaosTarget, why: str) -> Any:
    import redis.asyncio as aioredis

    return aioredis.from_url(target.require_redis(why), decode_responses=True)


class KillStreamWorkerHoldingEntries(Kill):
    """SIGKILL a stream worker between read and ack: frozen (SIGSTOP) while it holds entries it has read and not
    acknowledged, checked still pending, then killed; its entries must be reclaimed by the others."""

    async def moment(self) -> None:
        rds = _redis(self.target, "it checks the victim's pending entries")
        victim = self.stack.node_ids[self.process]
        deadline = time.monotonic() + 15
        try:
            while time.monotonic() < deadline:
                summary = await rds.xpending(self.target.stream_key, GROUP)
                held = sum(int(c["pending"]) for c in summary.get("consumers") or [] if c["name"] == victim)
                if held:
                    self.stack.kill(self.process, signal.SIGSTOP)
                    await asyncio.sleep(0.05)  # an XACK already on the wire lands meanwhile
                    summary = await rds.xpending(self.target.stream_key, GROUP)
                    held = sum(int(c["pending"]) for c in summary.get("consumers") or [] if c["name"] == victim)
                    if held:
                        self.details["held_unacked"] = held
                        return  # killed frozen, holding them
                    self.stack.kill(self.process, signal.SIGCONT)
                await asyncio.sleep(0.002)
            self.details["held_unacked"] = 0  # never caught holding: killed anyway, and the report says so
        finally:
            await rds.aclose()


class KillRetryWorkerMidMove(Kill):
    """SIGKILL the retry worker while the retry schedule holds due work (it is moving retries back)."""

    async def moment(self) -> None:
        rds = _redis(self.target, "it watches the retry schedule")
        key = f"{self.target.key_prefix}:retry"
        deadline = time.monotonic() + 15
        try:
            while time.monotonic() < deadline:
                due = await rds.zcount(key, "-inf", time.time() * 1000)
                if due:
                    self.details["due_retries"] = int(due)
                    return
                await asyncio.sleep(0.005)
            self.details["due_retries"] = 0
        finally:
            await rds.aclose()


class RedisRestart(Nemesis):
    """Redis restarts and loses every key: the stream, the group, the retry schedule, presence.

    With the dev stack, the stream workers are frozen (SIGSTOP) for ``backlog_s`` first, so that the stream surely
    holds work nobody has read when Redis loses it (else a quick worker leaves the restart nothing to lose, and
    the scenario proves nothing); ``lost_work`` is what the stream held then: (notification id, user, channel).
    A suite-owned embedded Redis is really restarted; a shared one (NOTIFLOW_TEST_REDIS_URL) loses this
    cluster's keys and every connection through the proxies is cut, which is what the platform sees of a restart.
    """

    name = "Redis restart losing its data"

    def __init__(self, target: ChaosTarget, backlog_s: float = 1.0) -> None:
        super().__init__()
        self.target, self.backlog_s = target, backlog_s
        target.require_redis("it makes Redis lose its data")
        self.lost_work: set[tuple[str, str, str]] = set()

    def _workers(self) -> list[str]:
        stack = self.target.stack
        return [n for n in stack.process_names if n.startswith("stream-worker")] if stack is not None else []

    async def inject(self) -> None:
        frozen = self._workers()
        for name in frozen:
            self.target.stack.kill(name, signal.SIGSTOP)
        try:
            await asyncio.sleep(self.backlog_s if frozen else 0.0)
            await self._read_what_is_lost()
            await self._lose_everything()
        finally:
            for name in frozen:
                self.target.stack.kill(name, signal.SIGCONT)

    async def _read_what_is_lost(self) -> None:
        rds = _redis(self.target, "it reads what the restart loses")
        try:
            entries = await rds.xrange(self.target.stream_key, count=100_000)
            # Entries a worker had read before it was frozen are in its memory, not only in Redis: it finishes
            # them after SIGCONT (a webhook call in flight succeeds), so the restart does not take them.
            try:
                held = await rds.xpending_range(self.target.stream_key, GROUP, min="-", max="+", count=100_000)
            except ResponseError:  # no group yet: nobody read anything
                held = []
            in_memory = {str(p["message_id"]) for p in held}
            self.details["entries_in_flight"] = len(in_memory)
            for entry_id, fields in entries:
                if str(entry_id) in in_memory:
                    continue
                for nid, users, channel in _named_work(fields):
                    for user in users.split(USER_SEP):
                        self.lost_work.add((nid, user, channel))
            self.details["stream_entries_lost"] = len(entries)
            self.details["lost_work"] = sorted(self.lost_work)
            self.details["retries_lost"] = int(await rds.zcard(f"{self.target.key_prefix}:retry"))
        finally:
            await rds.aclose()

    async def _lose_everything(self) -> None:
        if self.target.embedded_redis is not None:
            await asyncio.to_thread(self.target.embedded_redis.restart)
            self.details["how"] = "embedded redis-server SIGKILLed and restarted empty"
            return
        from chaos.cluster import REDIS_PATHS

        proxies = self.target.proxies(REDIS_PATHS)
        for proxy in proxies:
            await self.target.toxi.set_enabled(proxy, False)
        rds = _redis(self.target, "it deletes this cluster's keys")
        try:
            keys = [k async for k in rds.scan_iter(match=f"{self.target.key_prefix}:*", count=1000)]
            self.details["how"] = f"{len(keys)} keys of this cluster deleted, connections cut"
            if keys:
                await rds.delete(*keys)
        finally:
            await rds.aclose()
            for proxy in proxies:
                await self.target.toxi.set_enabled(proxy, True)

    async def heal(self) -> None:
        return None  # Redis is back (empty) as soon as inject returns


class Poison(Nemesis):
    """Malformed entries XADDed into the stream: the worker must park them and deliver what follows."""

    def __init__(self, target: ChaosTarget, count: int = 20) -> None:
        super().__init__()
        self.name = f"{count} poison entries in the stream"
        self.target, self.count = target, count
        target.require_redis("it XADDs into the stream")

    async def inject(self) -> None:
        import uuid

        shapes: list[dict[str, str]] = [
            {"garbage": "1"},
            {"n": "not-a-uuid", "u": "someone"},
            {"n": str(uuid.uuid4()), "u": "a/b"},
            {"n": str(uuid.uuid4()), "u": "someone", "c": "carrier-pigeon"},
            {"n": str(uuid.uuid4()), "u": "nobody"},  # a notification that does not exist
        ]
        rds = _redis(self.target, "it XADDs into the stream")
        try:
            for i in range(self.count):
                await rds.xadd(self.target.stream_key, shapes[i % len(shapes)])  # type: ignore[arg-type]
        finally:
            await rds.aclose()
        self.details["entries"] = self.count

    async def heal(self) -> None:
        return None


class WebhookDownstream(Nemesis):
    """The webhook sink answers as ``mode`` (``fail``: dead, ``flaky``, ``slow``) until heal."""

    def __init__(self, target: ChaosTarget, tag: str, mode: str) -> None:
        super().__init__()
        self.name = {"fail": "dead", "flaky": "flaky", "slow": "slow"}.get(mode, mode) + " webhook downstream"
        self.sink, self.tag, self.mode = target.require_sink(), tag, mode

    async def inject(self) -> None:
        self.sink.modes[self.tag] = self.mode

    async def heal(self) -> None:
        self.sink.modes[self.tag] = "ok"


class _StalledSocket(Socket):
    """A socket whose transport this process stops reading (``stall``): the peer's writes back up."""

    def __init__(self, *args: Any, rcvbuf: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rcvbuf = rcvbuf

    async def open(self, timeout_s: float = 10.0) -> Socket:
        if self.rcvbuf is None:
            return await super().open(timeout_s)
        from urllib.parse import urlsplit

        from websockets.asyncio.client import connect

        parts = urlsplit(self.url)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (parts.hostname, parts.port))
        self._ws = await connect(self.url, sock=sock, open_timeout=timeout_s, max_size=2**22, close_timeout=2)
        self._reader = asyncio.create_task(self._read(), name=f"ws-{self.conn}")
        await self.send({"type": "ping"})
        async with asyncio.timeout(timeout_s):
            await self._pong.wait()
        self.history.observe(self.conn, "ws_open", conn=self.conn, user_id=self.user, node=self.node, live=False)
        return self

    def stall(self, stalled: bool) -> None:
        assert self._ws is not None
        transport = self._ws.transport
        transport.pause_reading() if stalled else transport.resume_reading()


class HalfOpenClient(Nemesis):
    """A client that stops reading and never closes: the gateway must find it dead (pings) and close it; what
    was sent to it stays in its offline queue."""

    def __init__(self, url: str, user: str, history: History) -> None:
        super().__init__()
        self.name = "half-open client (stops reading, never closes)"
        self.sock = _StalledSocket(url, user, history, f"halfopen-{user}", live=False)
        self.user = user

    async def inject(self) -> None:
        await self.sock.open()
        self.sock.stall(True)
        self.details["stalled_at"] = time.monotonic()

    async def heal(self) -> None:
        # Reading again lets this side see what the server did meanwhile (its close frame, if it closed).
        if self.sock._ws is not None:
            self.sock.stall(False)
            await asyncio.sleep(0.5)
        self.details["closed_by_server"] = self.sock.closed_by == "server"
        self.details["close_code"] = self.sock.close_code
        await self.sock.close()


class _SlowSocket(_StalledSocket):
    """Takes ``per_frame_s`` over each notification frame. The websockets client stops reading the connection
    when its queue of unread messages is full, so the gateway's writes back up behind it, as behind a slow reader
    on a slow network (pausing the transport instead would not hold: the library resumes it as it drains)."""

    per_frame_s = 0.1

    async def _read(self) -> None:
        assert self._ws is not None
        try:
            async for raw in self._ws:
                frame = json.loads(raw)
                if frame.get("type") == "pong":
                    self._pong.set()
                elif frame.get("type") == "notification":
                    self._on_notification(frame)
                    await asyncio.sleep(self.per_frame_s)
                self._changed.set()
        except ConnectionClosed:
            pass
        finally:
            if self.closed_by is None:
                self.closed_by, self.close_code = "server", self._ws.close_code
                self.history.observe(self.conn, "ws_close", conn=self.conn, user_id=self.user,
                                     code=self.close_code, by="server")  # fmt: skip
            self._changed.set()


class SlowClient(Nemesis):
    """A client that reads one frame per 100 ms through a 4 KiB receive buffer, sent a burst of 8 KiB frames:
    the gateway's bounded send queue overflows, it closes the socket (as too slow, or as dead when its pings
    wait behind the backlog), and what the client did not read stays in its offline queue."""

    def __init__(self, url: str, user: str, history: History, api: Api, burst: int = 100) -> None:
        super().__init__()
        self.name = f"slow client (one frame per {_SlowSocket.per_frame_s * 1000:.0f} ms), sent {burst} frames of 8 KiB"
        self.sock = _SlowSocket(url, user, history, f"slow-{user}", live=False, rcvbuf=4096)
        self.user, self.api, self.burst = user, api, burst

    async def inject(self) -> None:
        await self.sock.open()
        blob = "x" * 8192

        async def lane(i: int) -> None:  # 8 client processes at once: faster than the client reads
            api = self.api.as_process(f"slow-burst-{i}")
            for k in range(i, self.burst, 8):
                await api.ingest([self.user], event="chaos.slow", payload={"k": k, "blob": blob})

        await asyncio.gather(*(lane(i) for i in range(8)))

    async def heal(self) -> None:
        self.details["closed_by_server"] = self.sock.closed_by == "server"
        self.details["close_code"] = self.sock.close_code
        self.details["frames_read"] = self.sock.frames
        await self.sock.close()
