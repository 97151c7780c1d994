"""Bundles: fresh socket entries packed into one stream entry must come back exactly as written, in order;
entries that are not fresh socket work stay single; a malformed bundle is refused whole."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from notiflow.models import Carried, Channel, StreamEntry, user_id_problem
from notiflow.streams import bundle

CREATED = datetime(2026, 12, 2, 12, 0, 0, 123456, tzinfo=UTC)

user_ids = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=20
).filter(lambda u: user_id_problem(u) is None)
payloads = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


def fresh(users: tuple[str, ...], payload: Any = None, expires: int | None = None) -> StreamEntry:
    carried = Carried(tuple(range(1, len(users) + 1)), "e.v", orjson.dumps(payload).decode(), CREATED, expires)
    return StreamEntry(uuid.uuid4(), users, Channel.SOCKET, carried)


@given(st.lists(st.tuples(st.lists(user_ids, min_size=1, max_size=3, unique=True), payloads,
                          st.none() | st.integers(0, 2**53)), min_size=1, max_size=40))
def test_packed_entries_parse_back_exactly_in_order(specs: list[tuple[list[str], Any, int | None]]) -> None:
    entries = [fresh(tuple(users), payload, expires) for users, payload, expires in specs]
    packed = bundle.pack(entries)
    assert [e for fields in packed for e in bundle.parse(fields)] == entries
    # As Redis hands them back without decoding.
    raw = [{k.encode(): v.encode() for k, v in fields.items()} for fields in packed]
    assert [e for fields in raw for e in bundle.parse(fields)] == entries


def test_payload_text_with_tabs_and_escapes_survives() -> None:
    entry = fresh(("a",), {"t": "tab\there", "n": "new\nline", "q": '"quoted"\\'})
    other = fresh(("b",))
    (fields,) = bundle.pack([entry, other])
    assert bundle.is_bundle(fields)
    assert bundle.parse(fields) == [entry, other]


def test_bundles_hold_at_most_the_bound_and_only_fresh_socket_work() -> None:
    unicast = [fresh((f"u{i}",)) for i in range(250)]
    big = fresh(tuple(f"b{i}" for i in range(bundle.BUNDLE_MAX_DELIVERIES)))
    loaded = StreamEntry(uuid.uuid4(), ("l",), Channel.SOCKET)
    hook = StreamEntry(uuid.uuid4(), ("h",), Channel.WEBHOOK)
    entries = [*unicast[:150], loaded, hook, big, *unicast[150:], fresh(("last",))]

    packed = bundle.pack(entries)

    sizes = [sum(len(e.user_ids) for e in bundle.parse(f)) if bundle.is_bundle(f) else -1 for f in packed]
    assert sizes == [100, 50, -1, -1, -1, 100, -1], sizes
    assert packed[2] == loaded.fields() and packed[3] == hook.fields() and packed[4] == big.fields()
    # The last bundle of one entry is written as that entry.
    assert packed[-1] == entries[-1].fields()
    assert [e for f in packed for e in bundle.parse(f)] == entries


def test_one_fresh_entry_is_not_a_bundle() -> None:
    entry = fresh(("solo",))
    assert bundle.pack([entry]) == [entry.fields()]
    assert not bundle.is_bundle(entry.fields())


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not-a-line",
        f"not-a-uuid\tu\t1\te.v\t{CREATED.isoformat()}\t\t{{}}",
        f"{uuid.uuid4()}\t\t1\te.v\t{CREATED.isoformat()}\t\t{{}}",  # no recipients
        f"{uuid.uuid4()}\ta/b\t1\te.v\t{CREATED.isoformat()}\t\t{{}}",  # a bad user id
        f"{uuid.uuid4()}\tu\t1,2\te.v\t{CREATED.isoformat()}\t\t{{}}",  # seqs do not match
        f"{uuid.uuid4()}\tu\tx\te.v\t{CREATED.isoformat()}\t\t{{}}",
        f"{uuid.uuid4()}\tu\t1\tbad event\t{CREATED.isoformat()}\t\t{{}}",
        f"{uuid.uuid4()}\tu\t1\te.v\tyesterday\t\t{{}}",
        f"{uuid.uuid4()}\tu\t1\te.v\t{CREATED.isoformat()}\tsoon\t{{}}",
        f"{uuid.uuid4()}\tu\t1\te.v\t{CREATED.isoformat()}\t\t{{}}\n",  # an empty line after a good one
    ],
)
def test_a_malformed_bundle_is_refused_whole(text: str) -> None:
    with pytest.raises((KeyError, ValueError)):
        bundle.parse({"c": "socket", "b": text})


def test_units_count_a_bundles_lines_even_when_it_does_not_parse() -> None:
    entries = [fresh((f"u{i}",)) for i in range(7)]
    (fields,) = bundle.pack(entries)
    assert bundle.units(fields) == 7
    assert bundle.units({k.encode(): v.encode() for k, v in fields.items()}) == 7
    assert bundle.units({"c": "socket", "b": "garbage\nmore garbage"}) == 2
    assert bundle.units(entries[0].fields()) == 1
