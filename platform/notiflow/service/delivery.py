"""Processing deliveries: presence, routing, webhook calls, and the durable record of each outcome.

Every method here records outcomes in PostgreSQL (one statement per batch) and schedules retries
before it returns; the caller acknowledges stream entries only after that. An exception means
nothing was recorded, and the entries stay pending to be processed again.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import orjson

from notiflow import metrics
from notiflow.backoff import compute_backoff_ms
from notiflow.errors import DownstreamError, NotiflowError, StoreUnavailable
from notiflow.models import WORK_STATUSES, Channel, DeliveryStatus, DeliveryWork, Outcome, StreamEntry
from notiflow.roles import WorkerSettings
from notiflow.service import routing
from notiflow.service.clock import Clock, SystemClock
from notiflow.service.dispatch_log import DispatchLog
from notiflow.service.ports import HostBudget, Presence, Record, Routes, WorkLog
from notiflow.store import deliveries as sql
from notiflow.store.pool import pg_errors, retry_conflicts
from notiflow.streams.work import retry_member
from notiflow.webhook import WebhookClient, host_of

log = logging.getLogger(__name__)

_WORK_STATES = WORK_STATUSES


class DeliveryService:
    """The deliver, schedule_retry and dead_letter use cases."""

    def __init__(
        self,
        *,
        settings: WorkerSettings,
        pool: Record,
        work: WorkLog,
        presence: Presence,
        router: Routes,
        webhooks: WebhookClient,
        budget: HostBudget,
        clock: Clock | None = None,
    ) -> None:
        self._s = settings
        # Due times and expiry are compared with PostgreSQL's clock: the worker reads time from it too
        # (service/clock.py). The system clock only where none is given (unit tests of pure parts).
        self._clock: Clock = clock or SystemClock()
        self._pool = pool
        self._work = work
        self._presence = presence
        self._router = router
        self._webhooks = webhooks
        self._node = settings.node_id
        self._hook_slots = asyncio.Semaphore(settings.webhook_concurrency)
        self._budget = budget
        self.held_back = 0  # retries deferred by the per-host budget, for logs and tests
        self.dispatch_log = DispatchLog(pool, settings.dispatch_record_delay_ms / 1000)

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock.now_ms() / 1000, UTC)

    # --- outcomes ---------------------------------------------------------------------------

    def failure(
        self, w: DeliveryWork, channel: Channel, error: str, *, permanent: bool = False,
        retry_after_s: float | None = None, started: datetime | None = None,
    ) -> Outcome:
        """A failed attempt: retrying at its backoff time, or dead once retries are used up."""
        attempt = (w.attempts if channel is Channel.SOCKET else w.webhook_attempts) + 1
        now = self._now()
        base = Outcome(w.notification_id, w.user_id, channel.value, attempt, "failed", "dead",
                       self._node, started or now, now, error=error[:2000])
        if permanent:
            base.dlq_reason = "rejected"
        elif attempt > self._s.max_retries:
            base.dlq_reason = "max_retries_exceeded"
        else:
            delay_ms = compute_backoff_ms(
                attempt - 1, base_ms=self._s.retry_base_ms, cap_ms=self._s.retry_cap_ms,
                retry_after_ms=None if retry_after_s is None else int(retry_after_s * 1000),
            )
            base.status = "retrying"
            base.next_attempt_at = now + timedelta(milliseconds=delay_ms)
        return base

    def _done(self, w: DeliveryWork, channel: Channel, outcome: str, status: str, started: datetime) -> Outcome:
        attempt = (w.attempts if channel is Channel.SOCKET else w.webhook_attempts) + 1
        return Outcome(w.notification_id, w.user_id, channel.value, attempt, outcome, status,
                       self._node, started, self._now())

    async def record(self, outcomes: list[Outcome]) -> None:
        """Make the outcomes durable, then put the retries on the schedule.

        If the ZADD fails after the commit, the reconciler's stuck-work sweep schedules the retry
        from the row's next_attempt_at; nothing depends on the ZADD succeeding here.
        """
        # One outcome per delivery and channel: a batch may name a delivery twice (a duplicate entry).
        unique = list({(o.notification_id, o.user_id, o.channel): o for o in outcomes}.values())
        if not unique:
            return
        async def write() -> None:
            async with pg_errors("record outcomes"), self._pool.acquire() as conn:
                await sql.record_outcomes(conn, unique, self._node)

        await retry_conflicts(write)
        for o in unique:
            metrics.ATTEMPTS.labels(o.channel, o.outcome).inc()
        retries = [
            (retry_member(o.notification_id, o.user_id, Channel(o.channel)), o.retry_at_ms or 0)
            for o in unique if o.status == "retrying"
        ]
        try:
            await self._work.schedule(retries)
        except StoreUnavailable as exc:
            log.warning("retry schedule write failed; the reconciler will reschedule", extra={"error": str(exc)})

    async def load(self, entries: Iterable[StreamEntry]) -> dict[tuple[uuid.UUID, str], DeliveryWork]:
        keys = [(e.notification_id, u) for e in entries for u in e.user_ids]
        async with pg_errors("load work"), self._pool.acquire() as conn:
            return await sql.load_work(conn, keys)

    # --- the socket channel -----------------------------------------------------------------

    def _carried(self, entries: list[StreamEntry]) -> list[DeliveryWork]:
        """The work a fresh entry carries: what its first processing needs, without PostgreSQL."""
        now_ms = self._clock.now_ms()
        out: list[DeliveryWork] = []
        for e in entries:
            c = e.carried
            assert c is not None
            expired = c.expires_at_ms is not None and c.expires_at_ms <= now_ms
            for user, seq in zip(e.user_ids, c.seqs, strict=True):
                out.append(DeliveryWork(
                    e.notification_id, user, seq, DeliveryStatus.PENDING.value, None, 0, 0, c.event,
                    c.payload_json, c.created_at, expired, None,
                ))
        return out

    async def deliver_socket(self, entries: list[StreamEntry]) -> list[Outcome]:
        """Route a batch to the gateway nodes of its online recipients; the rest are offline.

        Entries that carry their frame (fresh from ingest) are pushed without reading PostgreSQL, entry by
        entry (no object per recipient); the others (retries, reclaims, the reconciler's) load their rows.
        The deliveries no node heard go to the dispatch log as ``offline``, written after the entries' ack
        (the gateway nodes record the ones they got); failures and expiries are recorded before it.
        """
        started = self._now()
        now_ms = self._clock.now_ms()
        fresh: list[StreamEntry] = []
        todo: list[DeliveryWork] = []
        for e in entries:
            c = e.carried
            if c is None:
                continue
            if c.expires_at_ms is not None and c.expires_at_ms <= now_ms:
                todo += self._carried([e])  # expired: recorded per delivery
            else:
                fresh.append(e)
        loaded = [e for e in entries if e.carried is None]
        if loaded:
            works = await self.load(loaded)
            todo += [w for w in works.values() if w.status in _WORK_STATES and not w.socket_not_due]
        outcomes = [self._done(w, Channel.SOCKET, "expired", "expired", started) for w in todo if w.expired]
        live = [w for w in todo if not w.expired]
        try:
            users = {u for e in fresh for u in e.user_ids}
            users.update(w.user_id for w in live)
            nodes = await self._presence.live_nodes(sorted(users))
            receivers = await self._router.publish(routing.frames_per_node(fresh, live, nodes))
        except StoreUnavailable as exc:
            live = self._carried(fresh) + live
            outcomes += [self.failure(w, Channel.SOCKET, str(exc), started=started) for w in live]
        else:
            self.dispatch_log.add(routing.unheard(fresh, live, nodes, receivers), DeliveryStatus.OFFLINE.value)
        await self.record(outcomes)
        return outcomes

    # --- the webhook channel ----------------------------------------------------------------

    async def deliver_webhook(self, entries: list[StreamEntry]) -> list[Outcome]:
        """Call the downstream once per recipient, concurrently within the worker's bound."""
        works = await self.load(entries)
        todo = [w for w in works.values() if w.webhook_status in _WORK_STATES and not w.webhook_not_due]
        todo = await self._within_budget(todo)
        todo = await self._claim_attempts(todo)
        outcomes = await asyncio.gather(*(self._call(w) for w in todo))
        await self.record(list(outcomes))
        return list(outcomes)

    async def _within_budget(self, todo: list[DeliveryWork]) -> list[DeliveryWork]:
        """Keep retries to each downstream host within its per-second budget (SPEC I6: a failing
        downstream never sees a retry storm). Retries over it go back on the schedule a little later,
        without using an attempt; first attempts are never held back."""
        retries: dict[str, list[DeliveryWork]] = defaultdict(list)
        for w in todo:
            if w.webhook_attempts > 0 and not w.expired and w.webhook_url:
                retries[host_of(w.webhook_url)].append(w)
        if not retries:
            return todo
        wanted = {h: len(ws) for h, ws in retries.items()}
        granted = await self._budget.take(wanted, self._s.webhook_retry_rate_per_host)
        held = [w for host, ws in retries.items() for w in ws[granted.get(host, 0):]]
        if not held:
            return todo
        now_ms = self._clock.now_ms()
        # Spread over the next seconds so that held retries do not come back as one wave.
        spread_ms = max(1000, 1000 * len(held) // self._s.webhook_retry_rate_per_host)
        await self._work.schedule([
            (retry_member(w.notification_id, w.user_id, Channel.WEBHOOK), now_ms + random.randint(1000, spread_ms))
            for w in held
        ])
        self.held_back += len(held)
        held_keys = {w.key for w in held}
        return [w for w in todo if w.key not in held_keys]

    async def _claim_attempts(self, todo: list[DeliveryWork]) -> list[DeliveryWork]:
        """Only the caller that claims a delivery's next attempt calls the downstream: another entry for the
        same delivery processed meanwhile finds the attempt taken and changes nothing. Expired deliveries
        make no call and need no claim."""
        calls = [w for w in todo if not w.expired]
        if not calls:
            return todo
        async with pg_errors("claim webhook attempts"), self._pool.acquire() as conn:
            won = await sql.claim_webhook_attempts(
                conn, [(w.notification_id, w.user_id, w.webhook_attempts) for w in calls],
                # Past the call's own deadline and the outcome's write: a caller that died meanwhile frees it.
                lease_s=self._s.webhook_timeout_s * 2 + 5,
            )
        return [w for w in todo if w.expired or w.key in won]

    async def _call(self, w: DeliveryWork) -> Outcome:
        started = self._now()
        if w.expired:
            return self._done(w, Channel.WEBHOOK, "expired", "expired", started)
        async with self._hook_slots:
            clock = time.perf_counter()
            try:
                await self._webhooks.send(w)
            except DownstreamError as exc:
                metrics.WEBHOOK_SECONDS.labels("retry").observe(time.perf_counter() - clock)
                return self.failure(w, Channel.WEBHOOK, str(exc), retry_after_s=exc.retry_after_s, started=started)
            except NotiflowError as exc:
                metrics.WEBHOOK_SECONDS.labels("rejected").observe(time.perf_counter() - clock)
                return self.failure(w, Channel.WEBHOOK, str(exc), permanent=True, started=started)
            except Exception as exc:
                # Unforeseen (a bug, a library's surprise): this recipient's failed attempt alone, retried on
                # its schedule and dead-lettered after max_retries. Escaping, it would park the whole entry
                # as poison, its recipients already called included.
                metrics.WEBHOOK_SECONDS.labels("retry").observe(time.perf_counter() - clock)
                log.exception("webhook call failed unexpectedly", extra={
                    "notification_id": str(w.notification_id), "user_id": w.user_id})
                return self.failure(w, Channel.WEBHOOK, f"{type(exc).__name__}: {exc}", started=started)
            metrics.WEBHOOK_SECONDS.labels("ok").observe(time.perf_counter() - clock)
        return self._done(w, Channel.WEBHOOK, "succeeded", "succeeded", started)

    # --- poison -----------------------------------------------------------------------------

    async def park_poison(
        self, entry_id: str, fields: dict[str, str], entry: StreamEntry | None, reason: str
    ) -> None:
        """Dead-letter what an entry names (or keep the raw entry when it names nothing usable)."""
        if entry is None:
            async with pg_errors("park poison"), self._pool.acquire() as conn:
                await sql.record_poison(conn, [(entry_id, orjson.dumps(fields).decode(), reason[:2000])])
            return
        works = await self.load([entry])
        outcomes = []
        for w in works.values():
            state = w.status if entry.channel is Channel.SOCKET else w.webhook_status
            if state in _WORK_STATES:
                o = self.failure(w, entry.channel, reason, permanent=True)
                o.outcome, o.dlq_reason = "poison", "poison"
                outcomes.append(o)
        await self.record(outcomes)
