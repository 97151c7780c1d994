"""The checker judged on hand-written histories, valid and invalid ones."""

from __future__ import annotations

import pytest

from conformance.checker import check, merge_stats
from conformance.history import History, pairs
from conformance.scripted import Script


def test_a_clean_run_is_valid() -> None:
    s = Script()
    s.open("c1", "alice")
    a = s.ingest("1", ["alice", "bob"])
    s.recv("c1", "alice", a, seq=1)
    s.ws_ack("c1", "alice", [a])
    s.sweep("bob", [(a, 1)])
    s.sweep("alice", [])
    v = check(s.history)
    assert v.valid and v.ok, v.report()
    assert v.stats["accepted"] == 1 and v.stats["deliveries"] == 2
    assert v.stats["delivered_live"] == 1 and v.stats["delivered_offline"] == 1
    assert v.stats["lost"] == 0 and v.latencies_ms and v.latencies_ms[0] > 0


def test_an_accepted_notification_missing_from_the_final_sweep_is_lost_and_named() -> None:
    s = Script()
    a = s.ingest("1", ["bob"])
    b = s.ingest("2", ["bob"])
    s.sweep("bob", [(a, 1)])
    v = check(s.history)
    assert not v.valid
    assert set(v.lost) == {(b, "bob")}
    report = v.report()
    assert "LOST (1)" in report and b in report and "bob" in report
    assert "absent from the final sweep" in report


def test_a_user_never_swept_loses_what_was_never_acknowledged() -> None:
    s = Script()
    s.open("c1", "carol")
    a = s.ingest("1", ["carol"])
    s.recv("c1", "carol", a, seq=1)  # received but never acknowledged nor swept: not proven
    assert set(check(s.history).lost) == {(a, "carol")}


def test_only_the_last_complete_sweep_counts_as_the_final_state() -> None:
    s = Script()
    a = s.ingest("1", ["bob"])
    s.sweep("bob", [(a, 1)])
    s.sweep("bob", [], complete=False)
    assert check(s.history).valid
    s.sweep("bob", [])
    v = check(s.history)
    assert set(v.lost) == {(a, "bob")}
    assert (a, "bob") in v.gaps


def test_unknown_outcomes_are_recovered_when_seen_and_never_lost() -> None:
    s = Script()
    s.open("c1", "alice")
    seen = s.ingest("1", ["alice"], outcome="info")
    s.ingest("2", ["alice"], outcome="info")
    s.recv("c1", "alice", "server-id-1", seq=1, cid="1")
    s.ws_ack("c1", "alice", ["server-id-1"])
    s.sweep("alice", [])
    v = check(s.history)
    assert v.valid and v.ok, v.report()
    assert v.recovered == {("server-id-1", "alice")}
    assert v.stats["unknown"] == 2 and seen == "n-1"


def test_unexpected_deliveries_are_judged_invalid() -> None:
    s = Script()
    s.open("c1", "alice")
    s.open("c2", "mallory")
    a = s.ingest("1", ["alice"])
    failed = s.ingest("2", ["alice"], outcome="fail")
    s.recv("c1", "alice", a, seq=1)
    s.recv("c2", "mallory", a, seq=1)  # not a recipient
    s.recv("c1", "alice", "ghost", seq=2, cid="never-sent")
    s.recv("c1", "alice", failed, seq=3, cid="2")  # its ingest answered 422
    s.ws_ack("c1", "alice", [a])
    s.sweep("alice", [])
    v = check(s.history)
    assert not v.valid
    assert set(v.unexpected) == {(a, "mallory"), ("ghost", "alice"), (failed, "alice")}
    assert "not a recipient" in v.unexpected[(a, "mallory")]
    assert "failed" in v.unexpected[(failed, "alice")]


def test_duplicates_are_reported_but_allowed() -> None:
    s = Script()
    s.open("c1", "alice")
    a = s.ingest("1", ["alice"])
    s.recv("c1", "alice", a, seq=1)
    s.recv("c1", "alice", a, seq=1)
    s.ws_ack("c1", "alice", [a])
    s.sweep("alice", [])
    v = check(s.history)
    assert v.valid and v.ok
    assert v.duplicated == {(a, "alice"): 1} and v.stats["duplicates"] == 1


def test_every_live_device_must_receive_and_a_miss_names_the_socket() -> None:
    s = Script()
    s.open("phone", "alice")
    s.open("laptop", "alice")
    a = s.ingest("1", ["alice"])
    s.recv("phone", "alice", a, seq=1)
    s.sweep("alice", [(a, 1)])
    v = check(s.history)
    assert v.valid and not v.ok
    assert v.missed_live == {(a, "alice"): ["laptop"]}
    assert "laptop" in v.report()


def test_sockets_opened_later_closed_by_the_server_or_not_live_are_not_required() -> None:
    s = Script()
    s.open("early", "alice")
    s.open("churn", "alice", live=False)
    a = s.ingest("1", ["alice"])
    s.open("late", "alice")
    s.close("early", "alice", by="server", code=4008)
    s.sweep("alice", [(a, 1)])
    v = check(s.history)
    assert v.ok, v.report()


def test_an_acknowledged_notification_listed_again_is_resurrected() -> None:
    s = Script()
    a = s.ingest("1", ["bob"])
    s.fetch("bob", [(a, 1)])
    s.ack("bob", ids=[a], acknowledged=1)
    s.fetch("bob", [(a, 1)])
    s.sweep("bob", [])
    v = check(s.history)
    assert v.valid and not v.ok
    assert set(v.resurrected) == {(a, "bob")}


def test_a_confirmed_socket_ack_holds_like_an_http_ack() -> None:
    """SPEC §3: once the gateway answered an ack frame with ``acked``, the notification never comes back."""
    s = Script()
    s.open("c1", "bob")
    a = s.ingest("1", ["bob"])
    s.recv("c1", "bob", a, seq=1)
    s.ws_ack("c1", "bob", [a])
    s.ws_acked("c1", "bob", [a])
    s.close("c1", "bob")
    s.fetch("bob", [(a, 1)])
    s.sweep("bob", [])
    v = check(s.history)
    assert v.valid and not v.ok
    assert set(v.resurrected) == {(a, "bob")}
    assert "ack confirmed on c1" in v.stories[(a, "bob")]


def test_an_unconfirmed_socket_ack_may_come_back_or_not() -> None:
    """An ack frame without ``acked`` (the socket closed first, or ``ack_failed``) may or may not have been
    applied: the notification listed again is no resurrection, and its absence from the final sweep no loss."""
    s = Script()
    s.open("c1", "bob")
    a = s.ingest("1", ["bob"])
    b = s.ingest("2", ["bob"])
    c = s.ingest("3", ["bob"])
    for nid, seq in ((a, 1), (b, 2), (c, 3)):
        s.recv("c1", "bob", nid, seq=seq)
    s.ws_ack("c1", "bob", [a, b, c])
    s.ws_ack_failed("c1", "bob", [b])
    s.close("c1", "bob", by="server", code=1011)
    s.fetch("bob", [(a, 1), (b, 2)])
    s.sweep("bob", [(a, 1), (b, 2)])  # c was applied after all: unconfirmed acks explain its absence
    v = check(s.history)
    assert v.valid and v.ok, v.report()
    assert not v.resurrected


def test_a_confirmed_socket_ack_does_not_condemn_a_read_begun_before_it() -> None:
    s = Script()
    s.open("c1", "bob")
    a = s.ingest("1", ["bob"])
    s.recv("c1", "bob", a, seq=1)
    s.ws_ack("c1", "bob", [a])
    read = s.history.invoke("fetcher-bob", "fetch", user_id="bob", after_seq=0, limit=100)
    s.ws_acked("c1", "bob", [a])
    read.ok(items=[{"id": a, "seq": 1, "cid": "1"}], next=None)
    s.sweep("bob", [])
    v = check(s.history)
    assert v.valid and v.ok, v.report()


def test_another_users_confirmed_socket_ack_does_not_explain_a_missing_notification() -> None:
    s = Script()
    a = s.ingest("1", ["alice"])
    s.ws_ack("m1", "mallory", [a])
    s.ws_acked("m1", "mallory", [a])
    s.sweep("alice", [])
    v = check(s.history)
    assert set(v.lost) == {(a, "alice")}


def test_a_foreign_ack_does_not_explain_a_missing_notification() -> None:
    s = Script()
    a = s.ingest("1", ["alice"])
    s.ack("mallory", ids=[a], acknowledged=1)
    s.sweep("alice", [])
    v = check(s.history)
    assert set(v.lost) == {(a, "alice")} and set(v.gaps) == {(a, "alice")}
    assert "mallory acknowledged" not in v.stories[(a, "alice")]


def test_gaps_exclude_acks_in_flight_and_work_committed_after_the_sweep_began() -> None:
    s = Script()
    a = s.ingest("1", ["bob"])
    b = s.ingest("2", ["bob"])
    s.ws_ack("c9", "bob", [a])
    s.sweep("bob", [(b, 2)])
    c = s.ingest("3", ["bob"])
    s.sweep("bob", [(b, 2), (c, 3)])
    assert check(s.history).ok
    s.sweep("bob", [(c, 3)])
    v = check(s.history)
    assert set(v.gaps) == {(b, "bob")} and set(v.lost) == {(b, "bob")}


def test_sequential_acceptance_must_raise_the_seq() -> None:
    s = Script()
    a = s.ingest("1", ["bob"])
    b = s.ingest("2", ["bob"])
    s.sweep("bob", [(a, 2), (b, 1)])
    v = check(s.history)
    assert v.valid and not v.ok
    assert any(b in line and a in line and "higher seq" in line for line in v.order), v.order
    assert any("not ascending" in line for line in v.order)


def test_concurrent_acceptance_may_take_either_order() -> None:
    s = Script()
    inv1 = s.history.invoke("p1", "ingest", cid="1", user_ids=["bob"], node="gw0")
    inv2 = s.history.invoke("p2", "ingest", cid="2", user_ids=["bob"], node="gw1")
    inv2.ok(id="n-2", recipients=1)
    inv1.ok(id="n-1", recipients=1)
    s.cids.update({"n-1": "1", "n-2": "2"})
    s.sweep("bob", [("n-2", 1), ("n-1", 2)])
    assert check(s.history).ok


def test_seq_reuse_and_change_are_order_violations() -> None:
    s = Script()
    s.open("c1", "bob")
    a = s.ingest("1", ["bob"])
    b = s.ingest("2", ["bob"])
    s.recv("c1", "bob", a, seq=5)
    s.recv("c1", "bob", b, seq=5)
    s.fetch("bob", [(a, 6)])
    s.sweep("bob", [(a, 5), (b, 5)])
    v = check(s.history)
    assert any("different seqs" in line for line in v.order)
    assert any("carried by both" in line for line in v.order)


def test_expired_and_acknowledged_up_to_a_seq_are_not_lost_and_dead_stays_in_the_queue() -> None:
    s = Script()
    a = s.ingest("1", ["bob"])
    b = s.ingest("2", ["bob"], ttl=True)
    c = s.ingest("3", ["bob"])
    d = s.ingest("4", ["bob"])
    e = s.ingest("5", ["bob"])
    s.fetch("bob", [(c, 3)])
    s.ack("bob", up_to_seq=3, acknowledged=1)
    s.dlq([(a, "bob", "socket"), (d, "bob", "webhook"), (e, "bob", "socket")])
    s.status(b, "bob", "expired")
    s.sweep("bob", [(e, 5)])
    v = check(s.history)
    # a: dead on the socket channel and gone from bob's queue: lost (SPEC §4); e: dead and still listed: fine.
    assert set(v.lost) == {(a, "bob"), (d, "bob")}, v.report()
    assert v.stats["dead"] == 3 and v.stats["expired"] == 1  # dead: in the DLQ on any channel


def test_merged_stats_add_counters_and_pool_latencies() -> None:
    runs = []
    for user in ("a", "b"):
        s = Script()
        s.open("c", user)
        n = s.ingest("1", [user])
        s.recv("c", user, n, seq=1)
        s.ws_ack("c", user, [n])
        s.sweep(user, [])
        runs.append(check(s.history))
    total = merge_stats(runs)
    assert total["accepted"] == 2 and total["delivered_live"] == 2 and total["lost"] == 0
    assert total["p50_ms"] > 0 and total["p99_ms"] >= total["p50_ms"]


def test_a_process_runs_one_operation_at_a_time() -> None:
    h = History()
    inv = h.invoke("p", "ingest", cid="1", user_ids=["a"])
    h.invoke("p", "ingest", cid="2", user_ids=["a"])
    with pytest.raises(ValueError, match="while 'ingest' was pending"):
        pairs(h.ops)
    inv.ok(id="x")
    with pytest.raises(RuntimeError, match="already completed"):
        inv.fail()


def test_the_report_tells_what_happened_to_each_lost_delivery() -> None:
    s = Script()
    s.open("c1", "alice")
    a = s.ingest("1", ["alice"], process="producer-7")
    s.recv("c1", "alice", a, seq=4)
    s.ack("mallory", ids=[a], acknowledged=0)
    s.sweep("alice", [])
    text = check(s.history).report()
    story = next(line for line in text.splitlines() if line.strip().startswith("history:"))
    assert "producer-7 sent 1 via gw0" in story and "ingest ok" in story
    assert "received on c1 (seq 4)" in story
    assert story.index("sent 1") < story.index("received on c1")


def test_a_replaced_delivery_needs_nothing_more_and_the_newest_must_arrive() -> None:
    s = Script()
    s.open("c1", "dan")
    a = s.ingest("1", ["dan", "eve"], collapse_key="k")
    b = s.ingest("2", ["dan"], collapse_key="k")  # sent after a was accepted: newer, replaces a for dan only
    s.recv("c1", "dan", b, seq=2)
    s.status(a, "dan", "replaced", seq=1)
    s.sweep("dan", [(b, 2)])
    s.sweep("eve", [(a, 1)])
    v = check(s.history)
    assert v.valid and v.ok, v.report()
    assert v.stats["replaced"] == 1
    # Without the newer one in the final sweep (nor acknowledged), it is lost: the newer one must arrive.
    s.sweep("dan", [])
    assert set(check(s.history).lost) == {(b, "dan")}


def test_a_replaced_delivery_listed_after_the_newer_one_was_accepted_is_reported() -> None:
    s = Script()
    a = s.ingest("1", ["dan"], collapse_key="k")
    b = s.ingest("2", ["dan"], collapse_key="k")
    s.sweep("dan", [(a, 1), (b, 2)])
    v = check(s.history)
    assert v.valid and not v.ok
    assert set(v.relisted) == {(a, "dan")}
    assert "REPLACED BUT LISTED (1)" in v.report()


def test_the_older_one_replacing_the_newer_is_caught() -> None:
    s = Script()
    a = s.ingest("1", ["dan"], collapse_key="k")
    b = s.ingest("2", ["dan"], collapse_key="k")
    s.status(b, "dan", "replaced", seq=2)  # the wrong way round: b is newer
    s.sweep("dan", [(a, 1)])
    v = check(s.history)
    assert set(v.lost) == {(b, "dan")} and set(v.relisted) == {(a, "dan")}


def test_replacement_needs_the_same_key_and_user() -> None:
    s = Script()
    a = s.ingest("1", ["dan"], collapse_key="k")
    s.ingest("2", ["dan"], collapse_key="j")
    s.ingest("3", ["eve"], collapse_key="k")
    c = s.ingest("4", ["dan"])
    s.status(a, "dan", "replaced", seq=1)
    s.sweep("dan", [(c, 4)])
    v = check(s.history)
    assert (a, "dan") in v.lost and "no notification with its collapse key" in v.lost[(a, "dan")]


def test_overlapping_senders_are_ordered_by_the_seqs_seen() -> None:
    s = Script()
    a, b = s.overlapping(["1", "2"], "dan", "k")
    s.status(b, "dan", "replaced", seq=1)
    s.sweep("dan", [(a, 2)])
    v = check(s.history)
    assert v.valid and v.ok, v.report()
    # Both missing: at least the newest must be there.
    t = Script()
    a, b = t.overlapping(["1", "2"], "dan", "k")
    t.status(b, "dan", "replaced", seq=1)
    t.status(a, "dan", "pending", seq=2)
    t.sweep("dan", [])
    assert set(check(t.history).lost) == {(a, "dan")}
    # Seqs order overlapping senders: the one with the lower seq listed after both were accepted is caught.
    u = Script()
    a, b = u.overlapping(["1", "2"], "dan", "k")
    u.sweep("dan", [(a, 1), (b, 2)])
    assert set(check(u.history).relisted) == {(a, "dan")}
