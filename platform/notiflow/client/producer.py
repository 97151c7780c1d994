"""Producer: sends notifications so that each is accepted exactly once, whatever the gateways do meanwhile.

``async with Producer(urls, token=key) as p: await p.send("alice", "order.shipped", {"order": 42})``

- Every notification carries an idempotency key (the caller's, or one generated per notification), so a retry
  after any failure creates nothing new (SPEC §2, I5); the topic calls are idempotent by themselves.
- 429 and 5xx answers (``outcome_unknown`` included) and connection errors are retried with full-jitter
  backoff (notiflow.backoff), never sooner than ``Retry-After``, within ``RetryPolicy``'s attempts and
  deadline; connection errors and 5xx move on to the next gateway URL. Other 4xx raise a ``RequestRejected``
  subclass at once.
- ``send_many`` sends ``POST /notifications/batch`` chunks of at most ``batch_size`` notifications; a chunk
  refused as ``over_ingest_burst`` is split in halves.
- Topics: ``send_topic`` (or ``topic_notification()`` items for ``send_many``) sends to a topic's subscribers;
  ``subscribe``, ``unsubscribe`` (idempotent PUT/DELETE) and ``subscribers`` (GET, page by page) change and read
  them, under the same retry policy.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import orjson

from notiflow.backoff import compute_backoff_ms
from notiflow.client.auth import Auth
from notiflow.client.bodies import (
    Accepted,
    SubscribersPage,
    accepted_answer,
    new_key,
    notification,
    topic_notification,
)
from notiflow.client.types import (
    AuthFailed,
    IdempotencyKeyReused,
    InvalidNotification,
    NotAllowed,
    OutcomeUnknown,
    RequestRejected,
    Token,
    Unavailable,
)

#: The gateway's limit of notifications per POST /notifications/batch (SPEC §2).
MAX_BATCH = 1000
#: Connection errors before the request was sent: it cannot have been accepted.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How long one send keeps trying: ``max_attempts`` requests, waiting full-jitter backoff between them
    (``uniform(0, min(cap_ms, base_ms * 2**k))``, at least ``Retry-After``), and never past ``deadline_s``
    from its start."""

    max_attempts: int = 8
    base_ms: int = 100
    cap_ms: int = 10_000
    deadline_s: float = 60.0


def rejected(status: int, error: Mapping[str, Any]) -> RequestRejected:
    """The typed error of a 4xx answer's SPEC §2 error body."""
    code, message, details = str(error.get("code")), str(error.get("message")), error.get("details")
    kind: type[RequestRejected] = RequestRejected
    if code == "idempotency_key_reused":
        kind = IdempotencyKeyReused
    elif status in (401, 403):
        kind = NotAllowed
    elif status in (400, 413, 415, 422):
        kind = InvalidNotification
    return kind(status, code, message, details)


def _error_body(resp: httpx.Response) -> dict[str, Any]:
    try:
        body = resp.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return dict(body["error"])
    return {"code": f"http_{resp.status_code}", "message": resp.text[:200], "details": None}


def _retry_after_s(resp: httpx.Response) -> float:
    raw = resp.headers.get("retry-after", "")
    try:
        return max(0.0, float(raw))
    except ValueError:
        return 0.0  # an HTTP date or garbage: the backoff alone decides


def _segment(name: str) -> str:
    """A topic or user id as one path segment (every reserved character escaped; the gateway refuses ``/``)."""
    return quote(name, safe="")


class Producer:
    """Sends notifications to one or more gateways (asyncio). One instance may serve many tasks at once."""

    def __init__(
        self, urls: str | Sequence[str], *, token: Token = None, retry: RetryPolicy | None = None,
        timeout_s: float = 10.0, batch_size: int = MAX_BATCH, transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._urls = [u.rstrip("/") for u in ([urls] if isinstance(urls, str) else urls)]
        if not self._urls:
            raise ValueError("Producer needs at least one gateway URL")
        if not 1 <= batch_size <= MAX_BATCH:
            raise ValueError(f"batch_size must be 1 to {MAX_BATCH}")
        self._auth = Auth(token)
        self._retry = retry or RetryPolicy()
        self._batch_size = batch_size
        self._sleep = sleep  # waits between attempts; a test passes a recorder
        self._at = 0  # index of the gateway URL in use
        self._http = httpx.AsyncClient(timeout=timeout_s, transport=transport, trust_env=False)
        self.attempts = 0  # requests sent, retries included

    async def __aenter__(self) -> Producer:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def send(
        self, user_ids: str | Sequence[str], event: str, payload: Mapping[str, Any] | None = None, *,
        ttl_seconds: int | None = None, webhook_url: str | None = None, status_url: str | None = None,
        idempotency_key: str | None = None, collapse_key: str | None = None,
    ) -> Accepted:
        """Send one notification; its 202 answer. Raises ``RequestRejected`` (a 4xx), ``OutcomeUnknown``
        (retries ran out and it may exist) or ``Unavailable`` (retries ran out and it does not)."""
        body = notification(user_ids, event, payload, ttl_seconds=ttl_seconds, webhook_url=webhook_url,
                            status_url=status_url, collapse_key=collapse_key)
        return accepted_answer(await self._call("POST", "/notifications", body, idempotency_key or new_key()))

    async def send_topic(
        self, topic: str, event: str, payload: Mapping[str, Any] | None = None, *,
        ttl_seconds: int | None = None, webhook_url: str | None = None, status_url: str | None = None,
        idempotency_key: str | None = None, collapse_key: str | None = None,
    ) -> Accepted:
        """Send one notification to the topic's subscribers at acceptance; its 202 answer (``recipients``
        None). The same errors as ``send``."""
        body = topic_notification(topic, event, payload, ttl_seconds=ttl_seconds, webhook_url=webhook_url,
                                  status_url=status_url, collapse_key=collapse_key)
        return accepted_answer(await self._call("POST", "/notifications", body, idempotency_key or new_key()))

    async def subscribe(self, topic: str, user_id: str) -> None:
        """Subscribe ``user_id`` to ``topic`` (done also when it already was)."""
        await self._call("PUT", f"/topics/{_segment(topic)}/subscribers/{_segment(user_id)}")

    async def unsubscribe(self, topic: str, user_id: str) -> None:
        """Unsubscribe ``user_id`` from ``topic`` (done also when it was not subscribed)."""
        await self._call("DELETE", f"/topics/{_segment(topic)}/subscribers/{_segment(user_id)}")

    async def subscribers_page(self, topic: str, *, after: str | None = None, limit: int = 100) -> SubscribersPage:
        """The topic's subscribers after ``after`` (by user id), at most ``limit`` (1-1,000)."""
        query = urlencode({"after": after or "", "limit": limit})
        answer = await self._call("GET", f"/topics/{_segment(topic)}/subscribers?{query}")
        return SubscribersPage(
            topic=answer["topic"], subscribers=list(answer["subscribers"]), next_after=answer["next_after"]
        )

    async def subscribers(self, topic: str, *, page_size: int = 100) -> AsyncIterator[str]:
        """Every subscriber of the topic, by user id, a page of ``page_size`` per request."""
        after: str | None = None
        while True:
            page = await self.subscribers_page(topic, after=after, limit=page_size)
            for user_id in page["subscribers"]:
                yield user_id
            if page["next_after"] is None or page["next_after"] == after:  # no progress: never loop on one page
                return
            after = page["next_after"]

    async def send_many(self, notifications: Iterable[Mapping[str, Any]]) -> list[Accepted | RequestRejected]:
        """Send many (each as ``notification()`` builds it), in batches; one result per notification, in order:
        its 202 answer, or the ``RequestRejected`` of an item refused alone (its key reused with another body).
        A chunk refused as a whole raises, with ``accepted`` holding the results of the chunks before it."""
        items = [dict(n) for n in notifications]
        for item in items:
            item.setdefault("idempotency_key", new_key())
        results: list[Accepted | RequestRejected] = []
        for start in range(0, len(items), self._batch_size):
            try:
                results += await self._send_chunk(items[start : start + self._batch_size])
            except RequestRejected as exc:
                if isinstance(exc.details, list):  # the gateway's indexes are the chunk's: make them the call's
                    for bad in exc.details:
                        if isinstance(bad, dict) and isinstance(bad.get("index"), int):
                            bad["index"] += start
                exc.accepted = results
                raise
        return results

    async def _send_chunk(self, chunk: list[dict[str, Any]]) -> list[Accepted | RequestRejected]:
        try:
            answer = await self._call("POST", "/notifications/batch", {"notifications": chunk})
        except InvalidNotification as exc:
            if exc.code != "over_ingest_burst" or len(chunk) == 1:
                raise
            half = len(chunk) // 2  # too many deliveries in one request: nothing was stored, split it
            return [*await self._send_chunk(chunk[:half]), *await self._send_chunk(chunk[half:])]
        return [rejected(422, r["error"]) if "error" in r else accepted_answer(r) for r in answer["results"]]

    async def _call(
        self, method: str, path: str, body: Mapping[str, Any] | None = None, key: str | None = None
    ) -> dict[str, Any]:
        """Request until a 2xx (its JSON body, {} for a 204), a 4xx (raised typed) or the retry policy runs out.
        Only idempotent requests come here: a POST with its idempotency key, a PUT, DELETE or GET."""
        content = None if body is None else orjson.dumps(body)
        started = time.monotonic()
        maybe_stored = False  # some attempt may have been accepted: giving up is OutcomeUnknown
        why, tried = "no attempt", 0
        for attempt in range(self._retry.max_attempts):
            tried += 1
            headers = {} if content is None else {"content-type": "application/json"}
            if key is not None:
                headers["idempotency-key"] = key
            if token := await self._auth.token():
                headers["authorization"] = f"Bearer {token}"
            url = self._urls[self._at % len(self._urls)]
            self.attempts += 1
            wait_s = 0.0
            try:
                resp = await self._http.request(method, url + path, content=content, headers=headers)
            except httpx.TransportError as exc:
                self._at += 1  # this gateway is unreachable or died: the next one
                maybe_stored = maybe_stored or not isinstance(exc, _NOT_SENT)
                why = f"{url}: {type(exc).__name__}: {exc}"
            else:
                if resp.status_code < 300:
                    self._auth.succeeded()
                    answer: dict[str, Any] = resp.json() if resp.content else {}
                    return answer
                error = _error_body(resp)
                if resp.status_code == 401 and self._auth.can_refresh(AuthFailed(401, str(error.get("message")))):
                    continue  # a fresh token, at once
                if resp.status_code < 500 and resp.status_code != 429:
                    raise rejected(resp.status_code, error)
                if resp.status_code >= 500:
                    self._at += 1
                    maybe_stored = maybe_stored or error.get("code") not in ("unavailable", "store_busy")
                wait_s = _retry_after_s(resp)
                why = f"{url}: {resp.status_code} {error.get('code')}"
            policy = self._retry
            wait_s = max(wait_s, compute_backoff_ms(attempt, base_ms=policy.base_ms, cap_ms=policy.cap_ms) / 1000)
            if attempt + 1 >= policy.max_attempts or time.monotonic() - started + wait_s > policy.deadline_s:
                break
            await self._sleep(wait_s)
        message = f"gave up after {tried} attempts: {why}"
        # Only a POST can leave something behind that a caller must resend with its key: a PUT, DELETE or GET
        # that may have been done is done again by the caller's retry without harm.
        raise OutcomeUnknown(message, key) if maybe_stored and method == "POST" else Unavailable(message)
