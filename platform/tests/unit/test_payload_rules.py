"""payload_problem's fast path (the JSON text: no escaped NUL, fewer brackets than the depth bound) and its
walk must agree: what the text cannot decide is walked."""

from __future__ import annotations

from typing import Any

import pytest

from notiflow.gateway.schemas import MAX_PAYLOAD_DEPTH, payload_problem


def _nested(depth: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    cur = out
    for _ in range(depth - 1):
        cur["k"] = {}
        cur = cur["k"]
    return out


@pytest.mark.parametrize("payload", [
    {}, {"a": 1}, {"text": "\\u0000 is six characters here"}, {"brackets": "{[" * 100},
    _nested(MAX_PAYLOAD_DEPTH), {"l": [[1], [2], [3]] * 30},
])
def test_storable_payloads(payload: dict[str, Any]) -> None:
    assert payload_problem(payload) is None


@pytest.mark.parametrize(("payload", "words"), [
    ({"a": "x\x00"}, "NUL"), ({"k\x00": 1}, "NUL"), ({"l": ["ok", ["\x00"]]}, "NUL"),
    (_nested(MAX_PAYLOAD_DEPTH + 1), "deep"), ({"x": [[[[[]]]]] * 20, "y": _nested(300)}, "deep"),
])
def test_unstorable_payloads(payload: dict[str, Any], words: str) -> None:
    problem = payload_problem(payload)
    assert problem is not None and words in problem
