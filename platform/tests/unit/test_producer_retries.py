"""The Producer's retry rules against scripted answers (httpx.MockTransport): which answers are retried, with
what key, after how long, on which gateway; which raise which typed error; how send_many chunks. The live
gateway, killed mid-send, is in integration/test_producer.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest

from notiflow.client import (
    IdempotencyKeyReused,
    InvalidNotification,
    NotAllowed,
    OutcomeUnknown,
    Producer,
    RequestRejected,
    RetryPolicy,
    SyncProducer,
    Unavailable,
    notification,
    topic_notification,
)

pytestmark = pytest.mark.timeout(10)

Answer = httpx.Response | Exception
_OK = {"id": "00000000-0000-0000-0000-000000000001", "status": "accepted", "recipients": 1}


def error(status: int, code: str, retry_after: str | None = None, details: Any = None) -> httpx.Response:
    headers = {"retry-after": retry_after} if retry_after else {}
    return httpx.Response(status, json={"error": {"code": code, "message": code, "details": details}}, headers=headers)


class Script:
    """Answers requests in order from ``answers`` (an exception is raised as the transport's), recording each."""

    def __init__(self, *answers: Answer | Callable[[httpx.Request], Answer]) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []
        self.slept: list[float] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if self.answers else httpx.Response(202, json=_OK)
        if callable(answer) and not isinstance(answer, httpx.Response):
            answer = answer(request)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)

    def producer(self, urls: list[str] | None = None, **options: Any) -> Producer:
        return Producer(urls or ["http://a"], transport=httpx.MockTransport(self), sleep=self.sleep, **options)

    def keys(self) -> list[str | None]:
        return [r.headers.get("idempotency-key") for r in self.requests]


async def test_429_waits_at_least_retry_after_and_keeps_the_key() -> None:
    script = Script(error(429, "rate_limited", "3"), httpx.Response(202, json=_OK))
    async with script.producer() as p:
        assert await p.send("alice", "e", {"n": 1}) == _OK
    assert len(script.requests) == 2 and script.slept[0] >= 3.0
    key = script.keys()[0]
    assert key and key.startswith("auto-") and script.keys() == [key, key]
    assert orjson.loads(script.requests[0].content) == {"user_id": "alice", "event": "e", "payload": {"n": 1}}


async def test_outcome_unknown_and_dead_gateways_are_retried_elsewhere_with_the_same_key() -> None:
    script = Script(httpx.ConnectError("refused"), error(503, "outcome_unknown", "1"), httpx.ReadTimeout("lost"))
    async with script.producer(["http://a", "http://b"]) as p:
        assert (await p.send(["alice", "bob"], "e", idempotency_key="mine"))["id"] == _OK["id"]
    assert [r.url.host for r in script.requests] == ["a", "b", "a", "b"]
    assert script.keys() == ["mine"] * 4
    assert len(script.slept) == 3 and script.slept[1] >= 1.0


@pytest.mark.parametrize(("answer", "kind"), [
    (error(422, "invalid_request"), InvalidNotification),
    (error(413, "payload_too_large"), InvalidNotification),
    (error(422, "idempotency_key_reused"), IdempotencyKeyReused),
    (error(403, "forbidden"), NotAllowed),
    (error(401, "unauthorized"), NotAllowed),
    (error(404, "not_found"), RequestRejected),
])
async def test_other_4xx_raise_typed_errors_at_once(answer: httpx.Response, kind: type[RequestRejected]) -> None:
    script = Script(answer)
    async with script.producer(token="nf_key") as p:
        with pytest.raises(kind) as raised:
            await p.send("alice", "e")
    assert len(script.requests) == 1 and raised.value.status == answer.status_code
    assert script.requests[0].headers["authorization"] == "Bearer nf_key"


async def test_giving_up_says_whether_it_may_have_been_stored() -> None:
    policy = RetryPolicy(max_attempts=3, base_ms=1, cap_ms=5)
    script = Script(*[error(503, "unavailable", "1")] * 3)
    async with script.producer(retry=policy) as p:
        with pytest.raises(Unavailable) as raised:
            await p.send("alice", "e")
    assert not isinstance(raised.value, OutcomeUnknown) and len(script.requests) == 3
    script = Script(httpx.ConnectError("x"), error(503, "outcome_unknown"), error(503, "unavailable"))
    async with script.producer(retry=policy) as p:
        with pytest.raises(OutcomeUnknown) as unknown:
            await p.send("alice", "e", idempotency_key="k1")
    assert unknown.value.idempotency_key == "k1"


async def test_the_deadline_bounds_a_send_with_long_retry_afters() -> None:
    script = Script(*[error(429, "backlog_full", "30")] * 5)
    async with script.producer(retry=RetryPolicy(deadline_s=20)) as p:
        with pytest.raises(Unavailable):
            await p.send("alice", "e")
    assert len(script.requests) == 1 and script.slept == []  # waiting 30 s would pass the 20 s deadline


def _batch_answer(request: httpx.Request) -> httpx.Response:
    items = orjson.loads(request.content)["notifications"]
    return httpx.Response(202, json={"results": [{**_OK, "recipients": len(items)} for _ in items]})


async def test_send_many_chunks_to_the_batch_limit_and_keys_every_item() -> None:
    items = [notification(f"u{i}", "e", {"i": i}) for i in range(2500)]
    items[7]["idempotency_key"] = "caller-7"
    script = Script(*[_batch_answer] * 3)
    async with script.producer() as p:
        results = await p.send_many(items)
    sizes = [len(orjson.loads(r.content)["notifications"]) for r in script.requests]
    assert sizes == [1000, 1000, 500] and len(results) == 2500
    sent = [n for r in script.requests for n in orjson.loads(r.content)["notifications"]]
    assert sent[7]["idempotency_key"] == "caller-7" and len({n["idempotency_key"] for n in sent}) == 2500
    assert "idempotency_key" not in items[0], "the caller's dicts are left as they were"


async def test_send_many_splits_over_ingest_burst_and_answers_per_item() -> None:
    reused = {"error": {"code": "idempotency_key_reused", "message": "m", "details": None}}
    script = Script(
        error(413, "over_ingest_burst"),
        lambda r: httpx.Response(202, json={"results": [_OK, reused]}),
        _batch_answer,
    )
    async with script.producer() as p:
        results = await p.send_many([notification("u", "e") for _ in range(4)])
    assert [len(orjson.loads(r.content)["notifications"]) for r in script.requests] == [4, 2, 2]
    assert isinstance(results[1], IdempotencyKeyReused) and results[0] == _OK and len(results) == 4


async def test_a_chunk_refused_whole_names_items_by_their_index_in_the_call() -> None:
    script = Script(_batch_answer, error(422, "invalid_request", details=[{"index": 3, "code": "invalid_request"}]))
    async with script.producer(batch_size=10) as p:
        with pytest.raises(InvalidNotification) as raised:
            await p.send_many([notification("u", "e") for _ in range(20)])
    assert raised.value.details == [{"index": 13, "code": "invalid_request"}]
    assert len(raised.value.accepted) == 10


def test_sync_producer_blocks_and_retries_the_same() -> None:
    script = Script(error(503, "store_busy", "0"), httpx.Response(202, json=_OK))
    with SyncProducer("http://a", transport=httpx.MockTransport(script),
                      retry=RetryPolicy(base_ms=1, cap_ms=2)) as p:
        assert p.send("alice", "e") == _OK
        assert p.attempts == 2
    assert script.keys()[0] == script.keys()[1]


# --- topics and receipts ---------------------------------------------------------------------------------

_TOPIC_OK = {"id": _OK["id"], "status": "accepted", "recipients": None, "topic": "news"}


async def test_send_topic_and_status_url_reach_the_body_and_the_answer_keeps_the_topic() -> None:
    script = Script(error(429, "rate_limited", "2"), httpx.Response(202, json=_TOPIC_OK),
                    httpx.Response(202, json=_OK))
    async with script.producer() as p:
        answer = await p.send_topic("news", "e", {"n": 1}, status_url="https://r.example/s", collapse_key="k")
        assert answer == _TOPIC_OK and answer["recipients"] is None
        assert (await p.send("alice", "e", status_url="https://r.example/s"))["recipients"] == 1
    bodies = [orjson.loads(r.content) for r in script.requests]
    assert bodies[0] == {"topic": "news", "event": "e", "payload": {"n": 1}, "status_url": "https://r.example/s",
                         "collapse_key": "k"}
    assert bodies[0] == bodies[1] and script.keys()[0] == script.keys()[1] and script.slept[0] >= 2.0
    assert bodies[2] == {"user_id": "alice", "event": "e", "payload": {}, "status_url": "https://r.example/s"}


def test_builders_have_exactly_one_recipient_form() -> None:
    assert topic_notification("news", "e", status_url="https://r", idempotency_key="k") == {
        "topic": "news", "event": "e", "payload": {}, "status_url": "https://r", "idempotency_key": "k"}
    assert notification(["a", "b"], "e", {"x": 1}, status_url="https://r") == {
        "user_ids": ["a", "b"], "event": "e", "payload": {"x": 1}, "status_url": "https://r"}


async def test_subscribe_and_unsubscribe_are_retried_like_sends() -> None:
    script = Script(httpx.ConnectError("refused"), error(503, "unavailable", "1"), httpx.Response(204),
                    error(429, "rate_limited", "3"), httpx.Response(204))
    async with script.producer(["http://a", "http://b"]) as p:
        assert await p.subscribe("sports news#1?", "al ice") is None
        assert await p.unsubscribe("sports news#1?", "al ice") is None
    assert [r.method for r in script.requests] == ["PUT", "PUT", "PUT", "DELETE", "DELETE"]
    assert [r.url.host for r in script.requests] == ["a", "b", "a", "a", "a"]
    assert script.requests[0].url.raw_path == b"/topics/sports%20news%231%3F/subscribers/al%20ice"
    assert all(r.content == b"" and "idempotency-key" not in r.headers for r in script.requests)
    assert script.slept[1] >= 1.0 and script.slept[2] >= 3.0


async def test_subscribers_pages_through_next_after() -> None:
    def page(request: httpx.Request) -> httpx.Response:
        after = request.url.params["after"]
        assert request.method == "GET" and request.url.params["limit"] == "2"
        rest = [u for u in ["a", "b", "c", "d", "e"] if u > after][:2]
        more = rest[-1] if rest and rest[-1] != "e" else None
        return httpx.Response(200, json={"topic": "t", "subscribers": rest, "next_after": more})

    script = Script(page, error(503, "store_busy", "0"), page, page)
    async with script.producer() as p:
        assert [u async for u in p.subscribers("t", page_size=2)] == ["a", "b", "c", "d", "e"]
    assert [r.url.params["after"] for r in script.requests] == ["", "b", "b", "d"]


async def test_subscribers_stops_when_a_page_makes_no_progress() -> None:
    """A server answering the same next_after as the after it was given (a bug, or a proxy replaying a cached
    page) ends the iteration instead of asking for that page for ever."""
    stuck = httpx.Response(200, json={"topic": "t", "subscribers": ["a"], "next_after": "a"})
    script = Script(lambda _: stuck, lambda _: stuck, lambda _: stuck)
    async with script.producer() as p:
        assert [u async for u in p.subscribers("t")] == ["a", "a"]
    assert len(script.requests) == 2


async def test_topic_calls_that_give_up_are_unavailable_never_outcome_unknown() -> None:
    script = Script(*[httpx.ReadTimeout("lost")] * 4)
    async with script.producer(retry=RetryPolicy(max_attempts=2)) as p:
        with pytest.raises(Unavailable) as raised:
            await p.subscribe("t", "a")
        assert not isinstance(raised.value, OutcomeUnknown)
        with pytest.raises(OutcomeUnknown):  # a send that may exist still says so
            await p.send_topic("t", "e")


@pytest.mark.parametrize("call", ["subscribe", "unsubscribe", "subscribers_page", "send_topic"])
async def test_a_bad_topic_raises_typed_at_once(call: str) -> None:
    script = Script(error(422, "invalid_topic", None))
    async with script.producer() as p:
        with pytest.raises(InvalidNotification) as raised:
            await getattr(p, call)("bad\x01", *(["e"] if call != "subscribers_page" else []))
    assert raised.value.code == "invalid_topic" and len(script.requests) == 1


def test_sync_producer_has_the_topic_calls() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            done = request.url.params["after"] == "a"
            return httpx.Response(200, json={"topic": "t", "subscribers": ["b"] if done else ["a"],
                                             "next_after": None if done else "a"})
        return httpx.Response(204) if request.method != "POST" else httpx.Response(202, json=_TOPIC_OK)

    script = Script(*[answer] * 5)
    with SyncProducer("http://a", transport=httpx.MockTransport(script)) as p:
        p.subscribe("t", "a")
        assert list(p.subscribers("t", page_size=1)) == ["a", "b"]
        assert p.send_topic("t", "e")["topic"] == "news"
        p.unsubscribe("t", "a")
    assert [r.method for r in script.requests] == ["PUT", "GET", "GET", "POST", "DELETE"]
