"""The checker's receipt verdicts on hand-written histories (receipts.py; docs/contract.md §4a)."""

from __future__ import annotations

from conformance.checker import check
from conformance.scripted import Script


def _acked_with_receipt(receipt: bool) -> tuple[Script, str]:
    s = Script()
    a = s.ingest("1", ["bob"], receipts=True)
    s.ack("bob", ids=[a], acknowledged=1)
    s.status(a, "bob", "delivered", seq=1)
    if receipt:
        s.receipt(a, "bob", "delivered")
    s.sweep("bob", [])
    return s, a


def test_a_terminal_delivery_with_its_receipt_is_ok() -> None:
    s, _ = _acked_with_receipt(True)
    v = check(s.history)
    assert v.ok and not v.receipts, v.report()


def test_a_terminal_delivery_without_its_receipt_is_reported_and_named() -> None:
    s, a = _acked_with_receipt(False)
    v = check(s.history)
    assert v.valid and not v.ok
    assert set(v.receipts) == {(a, "bob")}
    assert "RECEIPTS (1)" in v.report() and "no delivery.delivered receipt" in v.report()


def test_each_channel_needs_its_own_receipt_of_the_right_kind() -> None:
    s = Script()
    a = s.ingest("1", ["bob"], receipts=True, ttl=True)
    s.status(a, "bob", "expired", seq=1, webhook_status="dead")
    s.receipt(a, "bob", "expired", channel="socket")
    s.receipt(a, "bob", "delivered", channel="webhook")  # the wrong kind: dead was read
    v = check(s.history)
    assert "webhook channel dead" in v.receipts[(a, "bob")]
    s.receipt(a, "bob", "dead", channel="webhook")
    assert not check(s.history).receipts


def test_open_deliveries_and_notifications_that_asked_for_nothing_need_no_receipt() -> None:
    s = Script()
    a = s.ingest("1", ["bob"], receipts=True)
    b = s.ingest("2", ["bob"])
    s.status(a, "bob", "offline", seq=1, webhook_status="retrying")
    s.status(b, "bob", "delivered", seq=2)
    s.sweep("bob", [(a, 1)])
    assert not check(s.history).receipts


def test_unsigned_and_unasked_receipts_are_reported() -> None:
    s, a = _acked_with_receipt(False)
    s.receipt(a, "bob", "delivered", signed=False)
    assert "signature" in check(s.history).receipts[(a, "bob")]
    t = Script()
    b = t.ingest("1", ["bob"])
    t.receipt(b, "bob", "delivered")
    assert "asked for none" in check(t.history).receipts[(b, "bob")]
