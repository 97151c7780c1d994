"""The hot path's encodings: the frame a fresh stream entry carries, a notification's frame encoded once for all
its recipients, the Pub/Sub batch format, and group commit of whole submissions."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from notiflow import metrics
from notiflow.batching import Batcher
from notiflow.frames import (
    FrameTemplate,
    encode_batch,
    frame_created_at,
    frame_template,
    notification_frame,
    route_frames,
)
from notiflow.gateway.hub import sent
from notiflow.gateway.ws import notification_id
from notiflow.metrics import CountedHistogram
from notiflow.models import Carried, Channel, StreamEntry, user_id_problem

users = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="/"), min_size=1,
                max_size=20).filter(lambda u: user_id_problem(u) is None)
small_ints = st.integers(min_value=-(2**53), max_value=2**53)
payloads = st.dictionaries(st.text(max_size=8), st.one_of(small_ints, st.text(max_size=20), st.booleans()), max_size=4)
events = st.from_regex(r"[A-Za-z0-9._:\-]{1,20}", fullmatch=True)
CREATED = datetime(2026, 12, 1, 12, 0, 0, 123456, tzinfo=UTC)


@given(nid=st.uuids(), recipients=st.lists(users, min_size=1, max_size=10, unique=True), event=events,
       payload=payloads, expires=st.one_of(st.none(), st.integers(min_value=0, max_value=2**45)))
def test_a_carried_frame_round_trips_through_the_stream_fields(
    nid: uuid.UUID, recipients: list[str], event: str, payload: dict[str, object], expires: int | None
) -> None:
    carried = Carried(tuple(range(1, len(recipients) + 1)), event, orjson.dumps(payload).decode(), CREATED, expires)
    entry = StreamEntry(nid, tuple(recipients), Channel.SOCKET, carried)
    assert StreamEntry.parse(entry.fields()) == entry
    assert StreamEntry.parse({k.encode(): v.encode() for k, v in entry.fields().items()}) == entry


def test_a_carried_frame_that_does_not_match_its_recipients_is_refused() -> None:
    fields = StreamEntry(uuid.uuid4(), ("a", "b"), carried=Carried((1, 2), "e", "{}", CREATED, None)).fields()
    with pytest.raises(ValueError):
        StreamEntry.parse({**fields, "s": "1"})
    with pytest.raises(ValueError):
        StreamEntry.parse({**fields, "e": "bad event"})


@given(nid=st.uuids(), event=events, payload=payloads, seq=st.integers(min_value=1, max_value=2**62))
def test_a_template_makes_the_spec_frame(nid: uuid.UUID, event: str, payload: dict[str, object], seq: int) -> None:
    frame = orjson.loads(frame_template(nid, event, orjson.dumps(payload).decode(), CREATED).frame(seq))
    assert frame == {"type": "notification", "id": str(nid), "seq": seq, "event": event, "payload": payload,
                     "created_at": CREATED.isoformat()}


def test_a_pubsub_batch_carries_each_template_once_and_decodes_to_every_frame() -> None:
    a = frame_template(uuid.uuid4(), "a.b", '{"x": 1}', CREATED)
    b = frame_template(uuid.uuid4(), "c.d", '{"y": "z\\tq"}', CREATED)
    batch: dict[FrameTemplate, list[tuple[str, int]]] = {a: [("u1", 5), ("u2", 9)], b: [("u1", 6)]}
    message = encode_batch(batch)
    assert message.count('"x": 1') == 1
    frames = [(user, frame) for user, frame, _ in route_frames(message, {"u1": "u1", "u2": "u2"})]
    assert frames == [("u1", a.frame(5)), ("u2", a.frame(9)), ("u1", b.frame(6))]
    # Only the users a node holds get a frame built.
    assert [(user, frame) for user, frame, _ in route_frames(message, {"u2": "u2"})] == [("u2", a.frame(9))]
    # A whole frame on a line passes through as it is.
    assert [(user, frame) for user, frame, _ in route_frames('u3\t{"type":"notification"}', {"u3": "u3"})] == [
        ("u3", '{"type":"notification"}')
    ]


@pytest.mark.timeout(10)
async def test_a_submission_is_never_split_between_flushes() -> None:
    flushed: list[list[int]] = []

    async def flush(items: list[int]) -> list[int | BaseException]:
        flushed.append(items)
        await asyncio.sleep(0)
        return [i * 10 for i in items]

    batcher: Batcher[int, int] = Batcher(flush, max_batch=3, name="test")
    batcher.start()
    results = await asyncio.gather(batcher.submit_many([1, 2]), batcher.submit_many([3, 4, 5, 6]), batcher.submit(7))
    await batcher.close(1)
    assert results == [[10, 20], [30, 40, 50, 60], 70]
    assert flushed == [[1, 2], [3, 4, 5, 6], [7]]  # over max_batch, the group still goes whole


def test_a_frames_accept_time_is_read_from_its_created_at_also_when_parsed_before() -> None:
    frame = notification_frame(uuid.uuid4(), 3, "e", '{"a":1}', CREATED)
    assert frame_created_at(frame) == CREATED.timestamp()
    assert frame_created_at(frame) == CREATED.timestamp()  # the second time from the parsed texts
    later = notification_frame(uuid.uuid4(), 4, "e", "{}", CREATED.replace(second=9))
    assert frame_created_at(later) == CREATED.replace(second=9).timestamp()
    assert frame_created_at('{"type":"pong"}') is None
    assert frame_created_at('{"type":"notification","created_at":"not a time"}') is None


async def _next_iteration() -> None:
    """Returns once the callbacks scheduled so far have run (the meter flushes in the next iteration)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    loop.call_soon(done.set_result, None)
    await done


async def test_sent_counts_the_notification_frames_and_observes_their_latency_once_per_iteration() -> None:
    def value(name: str) -> float:
        return metrics.REGISTRY.get_sample_value(name) or 0.0

    names = ("notiflow_ws_frames_sent_total", "notiflow_delivery_latency_seconds_count",
             "notiflow_delivery_latency_seconds_sum")
    frames0, observed0, sum0 = (value(n) for n in names)
    later = CREATED.replace(second=9)
    frames = [notification_frame(uuid.uuid4(), k, "e", "{}", CREATED) for k in range(1, 4)]
    before = time.time()
    sent([*frames[:2], '{"type":"pong"}'])  # two sockets' writes in one iteration
    sent([frames[2], notification_frame(uuid.uuid4(), 9, "e", "{}", later)])
    after = time.time()
    assert value(names[0]) == frames0, "counted before the iteration ended"
    await _next_iteration()
    assert value(names[0]) - frames0 == 4
    assert value(names[1]) - observed0 == 4
    # Each frame's latency is the send time (the iteration's first write) minus its own accept time.
    observed = value(names[2]) - sum0
    accepted = 3 * CREATED.timestamp() + later.timestamp()
    assert 4 * before - accepted - 1e-3 <= observed <= 4 * after - accepted + 1e-3


def test_a_counted_histogram_puts_each_observation_count_times_in_its_inclusive_bucket() -> None:
    registry = CollectorRegistry()
    histogram = CountedHistogram("t_seconds", "test", (1, 0.1), registry)
    histogram.observe(0.1, 2)  # on a bound: that bucket (upper bounds are inclusive)
    histogram.observe(0.5)
    histogram.observe(5.0, 3)

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert sample("t_seconds_bucket", le="0.1") == 2
    assert sample("t_seconds_bucket", le="1.0") == 3
    assert sample("t_seconds_bucket", le="+Inf") == 6
    assert sample("t_seconds_count") == 6
    assert sample("t_seconds_sum") == pytest.approx(0.2 + 0.5 + 15.0)


def test_an_acked_id_is_taken_canonical_as_is_other_uuid_spellings_canonicalised_and_anything_else_refused() -> None:
    nid = uuid.uuid4()
    assert notification_id(str(nid)) == str(nid)
    assert uuid.UUID(notification_id(str(nid).upper()) or "") == nid
    assert notification_id(nid.hex) == str(nid)
    assert notification_id("{" + str(nid) + "}") == str(nid)
    assert notification_id(f"urn:uuid:{nid}") == str(nid)
    for bad in ["", "nope", str(nid)[:-1], str(nid) + "0", str(nid).replace("-", "_"), f" {nid}"]:
        assert notification_id(bad) is None, bad
