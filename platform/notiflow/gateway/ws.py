"""The WebSocket endpoint (SPEC §3): one reader loop per socket; frames are written by its Connection (hub.py)."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Callable, Coroutine
from contextlib import suppress
from functools import partial
from typing import Any

import orjson
from fastapi import WebSocket, WebSocketDisconnect
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocketState

from notiflow.errors import StoreUnavailable
from notiflow.gateway.auth import authorize_socket
from notiflow.gateway.deps import services
from notiflow.gateway.hub import Connection
from notiflow.gateway.protocol import (
    MAX_ACK_IDS,
    MAX_REF,
    PONG,
    ClientFrame,
    CloseCode,
    FrameError,
    origin_allowed,
)
from notiflow.models import user_id_problem

log = logging.getLogger(__name__)

# Fire-and-forget tasks (closes) are kept referenced until done, so they are not collected midway.
_background: set[asyncio.Task[None]] = set()


def _spawn(coro: Coroutine[Any, Any, None]) -> None:
    task = asyncio.create_task(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)


_NO_REF = object()


def parse_client_frame(text: str, max_ack_ids: int = MAX_ACK_IDS) -> ClientFrame:
    try:
        msg = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise FrameError("frame is not valid JSON") from None
    if not isinstance(msg, dict):
        raise FrameError("frame must be a JSON object")
    kind = msg.get("type")
    if kind == "ping":
        return ClientFrame("ping")
    if kind == "ack":
        ids = msg.get("ids")
        if not isinstance(ids, list) or len(ids) > max_ack_ids or not _all_text(ids):
            raise FrameError(f"ack needs 'ids': a list of at most {max_ack_ids} strings")
        ref = msg.get("ref", _NO_REF)
        if ref is _NO_REF:
            return ClientFrame("ack", tuple(ids))  # the common shape: applied, never answered
        # type(): a bool is an int to isinstance, and true is no ref.
        if type(ref) is not int or not 0 <= ref < MAX_REF:
            raise FrameError(f"ack 'ref' must be an integer from 0 to {MAX_REF - 1}")
        return ClientFrame("ack", tuple(ids), ref)
    raise FrameError("type must be 'ack' or 'ping'")


def _all_text(items: list[Any]) -> bool:
    """Every item is a str. A loop: ``all()`` over a generator cost 4 times as much, about 1 µs per ack frame
    (a fan-out's clients send about one ack frame per delivery)."""
    for item in items:  # noqa: SIM110 - the loop is the point (see above)
        if not isinstance(item, str):
            return False
    return True


_CANONICAL_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def notification_id(raw: str) -> str | None:
    """An acked id as PostgreSQL takes it, or None when it is no UUID. The canonical form (every id the
    gateway sends) is checked by a regex, a fifth of what parsing it costs; other spellings that
    ``uuid.UUID`` accepts (no hyphens, braces, ``urn:uuid:``) are parsed and written canonically."""
    if _CANONICAL_UUID.fullmatch(raw):
        return raw
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        return None


def _error_frame(message: str) -> str:
    return orjson.dumps({"type": "error", "code": "bad_frame", "message": message}).decode()


#: The socket's path (SPEC §3): ``/ws/{user_id}``, one segment, as Starlette's ``str`` parameter matches it.
PATH = re.compile(r"/ws/(?P<user_id>[^/]+)")


def socket_user(path: str) -> str | None:
    """The user id of a socket's path, or None when the path is not the socket's."""
    match = PATH.fullmatch(path)
    return match.group("user_id") if match else None


async def websocket_endpoint(scope: Scope, receive: Receive, send: Send, user_id: str) -> None:
    """The socket's life (SPEC §3). The handshake, the checks and the closes go through Starlette's ``WebSocket``;
    the frames both ways go through the ASGI ``receive`` and ``send`` themselves, without its state checks
    (one frame each way per delivery of a fan-out)."""
    ws = WebSocket(scope, receive, send)
    svc = services(ws)
    limits = svc.settings
    if not origin_allowed(ws.headers.get("origin"), limits.allowed_origins):
        await ws.close(CloseCode.POLICY_VIOLATION)  # before accept: the handshake is answered 403
        return
    # Accepted first, so that a refusal can carry its close code (a refused handshake cannot); nothing is
    # sent and nothing is registered before the checks below pass.
    await ws.accept()
    if user_id_problem(user_id):
        await ws.close(CloseCode.BAD_USER_ID, "invalid user id")
        return
    try:
        who = await authorize_socket(ws, user_id)
    except StoreUnavailable:
        await ws.close(CloseCode.INTERNAL_ERROR, "credentials could not be checked, retry")
        return
    if isinstance(who, CloseCode):
        await ws.close(who, who.name.lower())
        return
    if svc.hub.size >= limits.ws_max_sockets:
        await ws.close(CloseCode.TRY_AGAIN_LATER, "gateway node is full")
        return

    def close_soon(code: CloseCode) -> None:
        _spawn(_close(ws, code))

    conn = Connection(user_id, svc.settings.ws_queue_max, close_soon, partial(_send, send))
    # In the hub before presence says so: a frame routed here the moment presence is written must find
    # the socket, not an empty hub.
    svc.hub.add(conn)
    try:
        sockets = await svc.sessions.opened(user_id)
    except StoreUnavailable:
        svc.hub.remove(conn)
        await ws.close(CloseCode.INTERNAL_ERROR, "presence unavailable, retry")
        return
    # A token's socket ends when the token does: the client reconnects with a fresh one.
    expiry = None
    if who.expires_at is not None:
        delay = max(0.0, who.expires_at - time.time())
        expiry = asyncio.get_running_loop().call_later(delay, close_soon, CloseCode.UNAUTHORIZED)
    try:
        if sockets > limits.ws_max_sockets_per_user:
            await ws.close(CloseCode.TOO_MANY_SOCKETS, f"at most {limits.ws_max_sockets_per_user} sockets per user")
            return
        reader = _Reader(conn, svc.queries.ack_from_socket, limits.ws_max_ack_ids, limits.ws_max_acks_in_flight)
        await _receive(receive, conn, reader)
    except (WebSocketDisconnect, RuntimeError):
        pass  # RuntimeError: receive after our own close (slow consumer); either way the socket is gone
    finally:
        if expiry is not None:
            expiry.cancel()
        conn.stop()
        svc.hub.remove(conn)
        await svc.sessions.closed(user_id)


class _Reader:
    """What a socket's text frames do (SPEC §3): pings are answered, acks are submitted to the group commit,
    anything else is answered with a bad_frame error. Synchronous: the ASGI receive loop calls it with each
    text frame."""

    __slots__ = ("_conn", "_max_ack_ids", "_max_in_flight", "_submit")

    def __init__(
        self, conn: Connection, submit: Callable[[str, list[str], Callable[[object], None]], None],
        max_ack_ids: int, max_acks_in_flight: int,
    ) -> None:
        self._conn = conn
        self._submit = submit
        self._max_ack_ids = max_ack_ids
        self._max_in_flight = max_acks_in_flight

    def __call__(self, text: str) -> None:
        conn = self._conn
        if conn.closing is not None:
            return
        try:
            frame = parse_client_frame(text, self._max_ack_ids)
        except FrameError as exc:
            conn.push(_error_frame(str(exc)))
            return
        if frame.kind == "ping":
            conn.push(PONG)
            return
        ids: list[str] = []
        for raw in frame.ids:
            nid = notification_id(raw)
            if nid is None:
                conn.push(_error_frame(f"not a notification id: {raw[:64]!r}"))
            else:
                ids.append(nid)
        if not ids:
            return
        if conn.acks_in_flight + len(ids) > self._max_in_flight:
            # An ack flood: acks are held in memory until their commit. Nothing is lost: what was not
            # acknowledged stays in the offline queue.
            conn.close(CloseCode.POLICY_VIOLATION)
            return
        conn.acks_in_flight += len(ids)
        # Not awaited: a slow commit must not stop this socket from reading pings. The group commit calls
        # back once the statement is over (no future, no task, nothing scheduled per ack frame).
        ref = frame.ref
        try:
            self._submit(conn.user_id, ids, partial(self._settled, ids, ref))
        except Exception as exc:  # noqa: BLE001 - the group commit is shutting down: answered as a failed ack
            self._settled(ids, ref, exc)

    def _settled(self, ids: list[str], ref: int | None, outcome: object) -> None:
        """Settle an ack frame's commit (SPEC §3); ``outcome``: what the group commit reported, an exception
        when the commit failed. A frame that carried ``ref`` is answered: ``acked`` after the commit, so the
        client knows those notifications will never be listed or pushed as open again; ``ack_failed`` with
        the ref when the commit failed. A frame without ``ref`` is answered only when its commit failed, with
        ``ack_failed`` naming its ids (what clients before refs rely on). No answer reaches a socket that is
        closing: the ack is then unconfirmed, it may or may not have been applied, and the client sends it
        again (acks are idempotent)."""
        conn = self._conn
        conn.acks_in_flight -= len(ids)
        if not isinstance(outcome, BaseException):
            if ref is not None:
                conn.push(f'{{"type":"acked","ref":{ref}}}')
            return
        log.warning("socket ack failed", extra={"user_id": conn.user_id, "error": str(outcome)})
        # Nothing is lost (the notifications stay in the offline queue), but the client must know that its ack
        # may not have taken, or it would believe them delivered.
        which: dict[str, Any] = {"ref": ref} if ref is not None else {"ids": ids}
        conn.push(orjson.dumps({
            "type": "error", "code": "ack_failed", "message": "acknowledgement not confirmed; send it again", **which,
        }).decode())


async def _receive(receive: Receive, conn: Connection, reader: _Reader) -> None:
    """The ASGI receive loop (after the handshake), until the peer goes away or this socket is closed."""
    while conn.closing is None:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        text = message.get("text")
        if text is None:
            conn.push(_error_frame("binary frames are not part of the protocol: send JSON text frames"))
            continue
        reader(text)


async def _send(send: Send, frames: list[str]) -> bool:
    """Sends each frame as a text message through ASGI (hub.py's Connection calls it); False when the socket
    is gone."""
    try:
        for frame in frames:
            await send({"type": "websocket.send", "text": frame})
    except (WebSocketDisconnect, RuntimeError, OSError):
        return False
    return True


async def _close(ws: WebSocket, code: CloseCode) -> None:
    if ws.application_state == WebSocketState.CONNECTED:
        with suppress(RuntimeError, OSError):
            await ws.close(code, code.name.lower())
