"""The receipt sender: posts the delivery receipts of the outbox (migration 012) to their status_url.

A loop of the retry worker. Each round leases a page of due events, groups them per URL into batches of at most
RECEIPT_BATCH, and posts each batch signed (Standard Webhooks, the webhook secrets) as ``{"events": [...]}``. A
2xx deletes the batch's rows; a failure reschedules them with full-jitter backoff (RETRY_BASE_MS, RETRY_CAP_MS,
a Retry-After as a floor); retries to one host share the webhooks' per-host budget (WEBHOOK_RETRY_RATE_PER_HOST,
one call counted per batch); past MAX_RETRIES retries, or on a permanent refusal (a 4xx, a host no longer
allowed or at a refused address), the events are dropped: logged and counted, never parked. Nothing here
touches a delivery: a receipt's fate never changes the delivery it reports.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
from collections import defaultdict

import orjson

from notiflow import metrics
from notiflow.backoff import compute_backoff_ms
from notiflow.errors import DownstreamError, NotiflowError, StoreUnavailable
from notiflow.lifecycle import pause
from notiflow.roles import WorkerSettings
from notiflow.service.ports import HostBudget, Record
from notiflow.store import receipts as sql
from notiflow.store.pool import pg_errors
from notiflow.store.receipts import Receipt
from notiflow.webhook import WebhookClient, host_of

log = logging.getLogger(__name__)

#: Events leased per round (a full page goes again at once).
PAGE = 1000
Batch = list[Receipt]
#: What became of a batch: None (sent), or the error and whether to give up, and a Retry-After in seconds.
Failure = tuple[str, bool, float | None]


def message_id(batch: Batch) -> str:
    """The batch's ``webhook-id``: the same for the same events, whatever their order (a retry of a batch)."""
    ids = ",".join(str(i) for i in sorted(r.id for r in batch))
    return "rcpt_" + hashlib.sha256(ids.encode()).hexdigest()[:32]


def body(batch: Batch) -> bytes:
    return orjson.dumps({"events": [r.event() for r in batch]})


class ReceiptSender:
    def __init__(
        self, *, settings: WorkerSettings, pool: Record, webhooks: WebhookClient, budget: HostBudget
    ) -> None:
        self._s = settings
        self._pool = pool
        self._webhooks = webhooks
        self._budget = budget
        self._slots = asyncio.Semaphore(settings.webhook_concurrency)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            n = 0
            try:
                n = await self.run_once()
            except StoreUnavailable as exc:
                log.warning("receipt round failed", extra={"error": str(exc)})
                await pause(stop, 1.0)
                continue
            except Exception:
                log.exception("receipt round crashed")
            if n < PAGE:
                await pause(stop, self._s.receipt_poll_ms / 1000)

    async def run_once(self) -> int:
        """One round: lease, post, record; the number of events leased."""
        async with pg_errors("claim receipts"), self._pool.acquire() as conn:
            # Past a call's own deadline and the result's write: a sender that died meanwhile frees them.
            page = await sql.claim(conn, PAGE, self._s.webhook_timeout_s * 2 + 5)
        if not page:
            return 0
        dropped = [r.id for r in page if not r.status_url]  # the notification is gone (retention)
        per_url: dict[str, Batch] = defaultdict(list)
        for r in page:
            if r.status_url:
                per_url[r.status_url].append(r)
        size = self._s.receipt_batch
        batches = [rs[i : i + size] for rs in per_url.values() for i in range(0, len(rs), size)]
        later: list[tuple[int, bool, int, str | None]] = []
        batches = await self._within_budget(batches, later)
        results = await asyncio.gather(*(self._post(b) for b in batches))
        sent: list[int] = []
        for batch, failure in zip(batches, results, strict=True):
            if failure is None:
                sent += [r.id for r in batch]
            elif failure[1] or max(r.attempts for r in batch) + 1 > self._s.max_retries:
                dropped += [r.id for r in batch]
                log.warning("delivery receipts dropped", extra={
                    "status_host": host_of(batch[0].status_url or ""), "events": len(batch), "error": failure[0]})
            else:
                delay_ms = compute_backoff_ms(
                    max(r.attempts for r in batch), base_ms=self._s.retry_base_ms, cap_ms=self._s.retry_cap_ms,
                    retry_after_ms=None if failure[2] is None else int(failure[2] * 1000),
                )
                later += [(r.id, True, delay_ms, failure[0][:2000]) for r in batch]
        async with pg_errors("record receipts"), self._pool.acquire() as conn, conn.transaction():
            await sql.delete(conn, sent + dropped)
            await sql.reschedule(conn, later)
        metrics.RECEIPTS.labels("sent").inc(len(sent))
        metrics.RECEIPTS.labels("dropped").inc(len(dropped))
        metrics.RECEIPTS.labels("retried").inc(sum(1 for x in later if x[1]))
        metrics.RECEIPTS.labels("held").inc(sum(1 for x in later if not x[1]))
        return len(page)

    async def _within_budget(self, batches: list[Batch], later: list[tuple[int, bool, int, str | None]]) -> list[Batch]:
        """Retries (a batch with an event posted before) to one host within the per-host budget, a batch
        counting as one call; those over it wait 1 s or more, spread, without using an attempt."""
        retries: dict[str, list[Batch]] = defaultdict(list)
        for b in batches:
            if any(r.attempts for r in b):
                retries[host_of(b[0].status_url or "")].append(b)
        if not retries:
            return batches
        rate = self._s.webhook_retry_rate_per_host
        granted = await self._budget.take({h: len(bs) for h, bs in retries.items()}, rate)
        held = [b for host, bs in retries.items() for b in bs[granted.get(host, 0):]]
        spread_ms = max(1000, 1000 * len(held) // rate)
        for b in held:
            delay_ms = random.randint(1000, spread_ms)
            later += [(r.id, False, delay_ms, None) for r in b]
        held_ids = {id(b) for b in held}
        return [b for b in batches if id(b) not in held_ids]

    async def _post(self, batch: Batch) -> Failure | None:
        url = batch[0].status_url
        assert url is not None
        async with self._slots:
            try:
                await self._webhooks.post(url, message_id(batch), body(batch), field="status_url")
            except DownstreamError as exc:
                return (str(exc), False, exc.retry_after_s)
            except NotiflowError as exc:  # refused for good: a 4xx, a host no longer allowed, a private address
                return (str(exc), True, None)
            except Exception as exc:
                log.exception("receipt post failed unexpectedly", extra={"status_host": host_of(url)})
                return (f"{type(exc).__name__}: {exc}", False, None)
        return None
