"""What a socket's text frame parses to (gateway/ws.py ``parse_client_frame``, SPEC §3): pings, acks with or
without a ref, and the refusals (FrameError, answered bad_frame) of anything else."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from notiflow.gateway.protocol import MAX_REF, ClientFrame, FrameError
from notiflow.gateway.ws import parse_client_frame

NID = "6f1c1f0e-6a1b-4c1e-9a9e-0c1d2e3f4a5b"


def test_pings_and_acks_parse_to_their_frames() -> None:
    assert parse_client_frame('{"type":"ping"}') == ClientFrame("ping")
    ack = parse_client_frame(orjson.dumps({"type": "ack", "ids": [NID, "x"]}).decode())
    assert (ack.kind, ack.ids, ack.ref) == ("ack", (NID, "x"), None)
    assert parse_client_frame(orjson.dumps({"type": "ack", "ids": [], "ref": 7}).decode()) == ClientFrame("ack", (), 7)


@pytest.mark.parametrize("frame", [
    {"type": "ack", "ids": [NID, 5]},
    {"type": "ack", "ids": [None]},
    {"type": "ack", "ids": [[NID]]},
    {"type": "ack", "ids": [NID, {"id": NID}]},
    {"type": "ack", "ids": NID},
    {"type": "ack"},
    {"type": "ack", "ids": [NID] * 4},
    {"type": "ack", "ids": [NID], "ref": True},
    {"type": "ack", "ids": [NID], "ref": -1},
    {"type": "ack", "ids": [NID], "ref": MAX_REF},
    {"type": "ack", "ids": [NID], "ref": "1"},
    {"type": "nack", "ids": [NID]},
    [NID],
])
def test_anything_else_is_a_frame_error(frame: Any) -> None:
    with pytest.raises(FrameError):
        parse_client_frame(orjson.dumps(frame).decode(), max_ack_ids=3)


def test_text_that_is_not_json_is_a_frame_error() -> None:
    with pytest.raises(FrameError, match="not valid JSON"):
        parse_client_frame('{"type":"ack",')
