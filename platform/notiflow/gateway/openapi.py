"""The OpenAPI document's words and examples, per route, so that ``/docs`` shows every endpoint with a
request and an answer to try. The routes read their bodies themselves (for exact 4xx answers), so their
request schemas are written here too. ``document(app)`` applies it; a test checks that every route has
examples, so that a new endpoint cannot go undocumented.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from notiflow.gateway.protocol import RECONNECT
from notiflow.gateway.schemas import AckIn, NotificationIn

_NID = "5c0e8a52-8f5e-4d6b-9a8e-3f1c2b7d9e01"
_ERROR = {"error": {"code": "invalid_request", "message": "request body is invalid",
                    "details": [{"loc": ["event"], "msg": "String should match pattern", "type": "string_pattern"}]}}
_NOTIFICATION = {
    "user_ids": ["alice", "bob"], "event": "order.shipped", "payload": {"order": 42}, "ttl_seconds": 86400,
}
# The request bodies' schemas are the models' own, so that what is documented is exactly what is validated
# (schemathesis checks both directions in make test).
_NOTIFICATION_SCHEMA: dict[str, Any] = NotificationIn.model_json_schema()
_ACK_SCHEMA: dict[str, Any] = AckIn.model_json_schema()
_OFFLINE_ROW = {"id": _NID, "seq": 3, "event": "order.shipped", "payload": {"order": 42},
                "created_at": "2026-12-01T21:40:00.123456+00:00"}
_DLQ_ENTRY = {"id": 7, "notification_id": _NID, "user_id": "alice", "channel": "webhook", "reason": "retries_exhausted",
              "last_error": "downstream answered 503", "attempts": 6, "failed_at": "2026-12-01T21:45:00+00:00"}


_KEY_SCHEMA: dict[str, Any] = {
    "type": "object", "additionalProperties": False, "required": ["name", "scopes"],
    "properties": {
        "name": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"},
        "scopes": {"type": "array", "items": {"enum": ["send", "read", "admin"]}, "minItems": 1, "maxItems": 3},
    },
}
_KEY_ROW = {"id": 3, "name": "billing", "prefix": "nf_x1Y2z3", "scopes": ["send"],
            "created_at": "2026-12-01T21:40:00+00:00"}
_UNAUTHORIZED = {"error": {"code": "unauthorized", "message": "credentials are required: Authorization: Bearer "
                           "<token or API key>", "details": None}}
_FORBIDDEN = {"error": {"code": "forbidden", "message": "this needs an API key with the 'send' scope",
                        "details": None}}


def _json(example: Any, description: str = "") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"example": example}}}


def _body(schema: dict[str, Any], examples: dict[str, Any]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": schema, "examples": {name: {"value": value} for name, value in examples.items()},
    }}}}


_BAD = {"422": _json(_ERROR, "invalid input; nothing stored")}
#: Every route that asks for credentials (its OpenAPI operation names a security scheme) may answer these.
_AUTH_ANSWERS = {"401": _json(_UNAUTHORIZED, "no valid credentials"),
                 "403": _json(_FORBIDDEN, "credentials that do not allow this")}


DOCS: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/notifications"): {
        "summary": "Send a notification to one or more users",
        "description": "202 means committed in PostgreSQL. Header `Idempotency-Key` (optional): the same key "
                       "and body within 24 h answers the first response and creates nothing.",
        "openapi_extra": _body(_NOTIFICATION_SCHEMA, {
            "several users": _NOTIFICATION,
            "one user with a webhook": {"user_id": "alice", "event": "invoice.paid", "payload": {"invoice": 7},
                                        "webhook_url": "http://hooks.example/n"},
            "one user with delivery receipts": {"user_id": "alice", "event": "invoice.paid", "payload": {},
                                                "status_url": "http://hooks.example/receipts"},
            "a topic's subscribers": {"topic": "releases", "event": "release.out", "payload": {"version": "2.1"}},
        }),
        "responses": {
            "202": _json({"id": _NID, "status": "accepted", "recipients": 2},
                         'accepted and committed. To a topic: `{"id", "status": "accepted", "recipients": null, '
                         '"topic"}` (its subscribers at acceptance are counted as it is expanded)'),
            **_BAD,
            "413": _json({"error": {"code": "payload_too_large", "message": "payload is larger than 65536 bytes "
                                    "serialised", "details": None}}, "body or payload too large, or the request "
                                    "costs more deliveries (recipients) than NOTIFLOW_INGEST_BURST "
                                    "(over_ingest_burst)"),
            "429": _json({"error": {"code": "backlog_full", "message": "backlog over its bound", "details": None}},
                         "over the backlog bound: come back after Retry-After seconds"),
        },
    },
    ("POST", "/notifications/batch"): {
        "summary": "Send up to 1,000 notifications in one request",
        "openapi_extra": _body({"type": "object", "required": ["notifications"], "properties": {
            "notifications": {"type": "array", "minItems": 1, "maxItems": 1000, "items": _NOTIFICATION_SCHEMA}}},
            {"two": {"notifications": [{**_NOTIFICATION, "idempotency_key": "order-42-shipped"},
                                       {"user_id": "carol", "event": "hello", "payload": {}}]}}),
        "responses": {"202": _json({"results": [{"id": _NID, "status": "accepted", "recipients": 2},
                                                {"id": _NID, "status": "accepted", "recipients": 1}]}),
                      "422": _json({"error": {"code": "invalid_request", "message": "items are invalid",
                                              "details": [{"index": 1, "loc": ["event"], "msg": "Field required"}]}},
                                   "names the bad items by index; nothing stored")},
    },
    ("GET", "/notifications/offline/{user_id}"): {
        "summary": "A user's unacknowledged notifications, oldest first (keyset-paginated by seq)",
        "responses": {"200": _json({"user_id": "alice", "notifications": [_OFFLINE_ROW], "next_after_seq": None}),
                      **_BAD},
    },
    ("POST", "/notifications/offline/{user_id}/ack"): {
        "summary": "Acknowledge a user's notifications (idempotent)",
        "openapi_extra": _body(_ACK_SCHEMA, {"by id": {"ids": [_NID]}, "everything up to a seq": {"up_to_seq": 3}}),
        "responses": {"200": _json({"acknowledged": 1}), **_BAD},
    },
    ("GET", "/presence/{user_id}"): {
        "summary": "Whether a user is online: sockets and SSE streams on live gateway nodes (I7's bound)",
        "responses": {"200": _json({"online": True, "sockets": 2})},
    },
    ("GET", "/sse/{user_id}"): {
        "summary": "The user's notifications as server-sent events: the offline queue after Last-Event-ID, then live",
        "description": "The user's own token (`Authorization: Bearer` or `?token=`), never an API key. Header "
                       "`Last-Event-ID` (optional): the seq of the last event received. Acknowledge through "
                       "`POST /notifications/offline/{user_id}/ack`.",
        "responses": {"200": {"description": "an event stream", "content": {"text/event-stream": {
            "example": f"retry: 1000\n\nid: 3\nevent: notification\ndata: {{\"id\": \"{_NID}\", \"seq\": 3, "
                       "\"event\": \"order.shipped\", \"payload\": {}, \"created_at\": \"2026-12-01T21:40:00Z\"}"
                       "\n\n: keep-alive\n\n"}}}},
    },
    ("GET", "/notifications/{notification_id}"): {
        "summary": "A notification and its deliveries",
        "responses": {"200": _json({
            "id": _NID, "event": "order.shipped", "payload": {"order": 42}, "created_at": _OFFLINE_ROW["created_at"],
            "recipients": 2, "status_counts": {"delivered": 1, "offline": 1},
            "deliveries": [{"user_id": "alice", "seq": 3, "status": "delivered", "webhook_status": None,
                            "attempts": [], "delivered_at": "2026-12-01T21:40:00.2+00:00"}]}),
            "404": _json({"error": {"code": "not_found", "message": "notification not found", "details": None}})},
    },
    ("PUT", "/topics/{topic}/subscribers/{user_id}"): {
        "summary": "Subscribe a user to a topic (idempotent; `send` or `admin` scope)",
        "description": "Topic names follow the user-id rule. A notification sent to the topic reaches the users "
                       "subscribed when it was accepted (its 202): a subscription made after that does not get it.",
        "responses": {"204": {"description": "subscribed (also when already)"}, **_BAD},
    },
    ("DELETE", "/topics/{topic}/subscribers/{user_id}"): {
        "summary": "Unsubscribe a user from a topic (idempotent; `send` or `admin` scope)",
        "description": "Topic notifications accepted before this still reach the user.",
        "responses": {"204": {"description": "unsubscribed (also when not subscribed)"}, **_BAD},
    },
    ("GET", "/topics/{topic}/subscribers"): {
        "summary": "A topic's subscribers by user id (keyset-paginated: `after` = the last page's `next_after`)",
        "responses": {"200": _json({"topic": "releases", "subscribers": ["alice", "bob"], "next_after": "bob"}),
                      **_BAD},
    },
    ("GET", "/dlq"): {
        "summary": "Dead-letter entries, oldest first",
        "responses": {"200": _json({"entries": [_DLQ_ENTRY], "next_after": None})},
    },
    ("POST", "/dlq/{entry_id}/replay"): {
        "summary": "Replay a dead-letter entry (a second replay creates nothing)",
        "responses": {
            "202": _json({"id": 7, "replayed": True}),
            "404": _json({"error": {"code": "not_found", "message": "dlq entry not found", "details": None}}),
        },
    },
    ("DELETE", "/dlq/{entry_id}"): {
        "summary": "Delete a dead-letter entry",
        "responses": {"204": {"description": "deleted"}},
    },
    ("GET", "/healthz"): {"summary": "Alive", "responses": {"200": _json({"status": "ok"})}},
    ("GET", "/readyz"): {
        "summary": "Ready: Redis and PostgreSQL answer",
        "responses": {"200": _json({"status": "ok", "checks": {"redis": "ok", "postgres": "ok"}}),
                      "503": _json({"status": "unavailable", "checks": {"redis": "ok", "postgres": "timeout"}})},
    },
    ("GET", "/metrics"): {
        "summary": "Prometheus metrics",
        "responses": {"200": {"description": "Prometheus text format", "content": {"text/plain": {
            "example": "# TYPE notiflow_notifications_accepted_total counter\n"
                       "notiflow_notifications_accepted_total 1234.0\n"}}}},
    },
    ("POST", "/keys"): {
        "summary": "Create an API key (admin); the key is in this answer only",
        "description": "Only its SHA-256 is stored. Scopes: `send`, `read`, `admin` (they do not imply each other).",
        "openapi_extra": _body(_KEY_SCHEMA, {"a producer": {"name": "billing", "scopes": ["send"]},
                                             "a backend reading for its users": {"name": "app", "scopes": ["read"]}}),
        "responses": {
            "201": _json({**_KEY_ROW, "key": "nf_x1Y2z3...43 characters"}),
            "409": _json({"error": {"code": "key_name_taken", "message": "a live key is already named 'billing'; "
                                    "revoke it first", "details": None}}),
        },
    },
    ("GET", "/keys"): {
        "summary": "List API keys (admin); never the keys themselves",
        "responses": {"200": _json({"keys": [{**_KEY_ROW, "revoked_at": None}]})},
    },
    ("DELETE", "/keys/{name}"): {
        "summary": "Revoke the live key of that name (admin): refused by every gateway from the next request",
        "responses": {"204": {"description": "revoked"},
                      "404": _json({"error": {"code": "not_found", "message": "live key not found", "details": None}})},
    },
    ("GET", "/dashboard"): {
        "summary": "The live dashboard page",
        "responses": {"200": {"description": "an HTML page", "content": {"text/html": {"example": "<!doctype html>"}}}},
    },
    ("GET", "/dashboard/stats"): {
        "summary": "Figures of the live dashboard",
        "responses": {"200": _json({
            "at": 1796161689.1,
            "totals": {"accepted": 6635, "refused": 0, "frames_sent": 6631, "acks": 6629, "attempts": 6702,
                       "attempts_failed": 70, "retries_moved": 45, "pg_errors": 0, "redis_errors": 0},
            "latency_buckets": [[0.05, 4102], [0.1, 6011], ["+Inf", 6631]],
            "gateways": [{"node": "gateway-0-721d2a", "sockets": 20, "users": 20, "age_s": 0.4}],
            "roles": {"gateway": 1, "stream-worker": 1, "retry-worker": 1},
            "store": {"stream_length": 2, "stream_pending": 1, "group_lag": 1, "retry_scheduled": 1,
                      "dlq_entries": 1},
            "dlq": {"entries": [_DLQ_ENTRY], "total": 1},
            "errors": [{"ts": 1796161684.6, "level": "warning", "logger": "notiflow.service.reconciler",
                        "msg": "reconcile failed", "error": "postgresql: reconcile: ...", "node": "retry-worker-0"}],
        }, "totals since each process started, summed over processes; rates come from two answers")},
    },
}


def _websocket_description() -> str:
    rows = "\n".join(f"| {code.value} | {code.name.lower()} | {'yes' if again else 'no'} |"
                     for code, again in RECONNECT.items())
    return (
        "HTTP API of a notiflow gateway (SPEC §2). Errors are JSON: "
        '`{"error": {"code", "message", "details"}}`.\n\n'
        "**WebSocket** `/ws/{user_id}` (not listed below, OpenAPI has no words for it): the server sends "
        '`{"type": "notification", "id", "seq", "event", "payload", "created_at"}` (and `"collapse_key"` when '
        "the notification has one: the client keeps the newest per key); the client sends "
        '`{"type": "ack", "ids": [...]}` and `{"type": "ping"}` (answered `{"type": "pong"}`). '
        "Whatever the close, what the client did not acknowledge stays in its offline queue.\n\n"
        f"| close code | meaning | reconnect |\n| --- | --- | --- |\n{rows}\n"
    )


def _add_answer(responses: dict[str, Any], code: str, answer: dict[str, Any]) -> None:
    """Add a documented answer's words and examples to what the route declares (its schema, from
    gateway/responses.py, stays: schemathesis checks real answers against it)."""
    existing = responses.get(code)
    if existing is None:
        responses[code] = answer
        return
    if answer.get("description"):
        existing["description"] = answer["description"]
    for media, content in answer.get("content", {}).items():
        existing.setdefault("content", {}).setdefault(media, {}).update(content)


def document(app: FastAPI, *, auth_off: bool = False) -> None:
    """Have ``app``'s OpenAPI document carry the summaries, request bodies and examples above; with
    ``auth_off`` (NOTIFLOW_AUTH=off) it names no credentials, since that gateway asks for none.

    Applied to the generated document, not to the route objects: FastAPI builds included routers'
    routes lazily, and the document is the one thing every version hands over whole.
    """
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        schema["info"]["description"] = _websocket_description()
        for (method, path), docs in DOCS.items():
            op = schema.get("paths", {}).get(path, {}).get(method.lower())
            if op is None:
                continue  # a route this gateway does not have (yet)
            op.update({k: v for k, v in docs.items() if k in ("summary", "description")})
            op.update(docs.get("openapi_extra", {}))
            for code, answer in docs.get("responses", {}).items():
                _add_answer(op.setdefault("responses", {}), code, answer)
        if auth_off:
            schema.get("components", {}).pop("securitySchemes", None)
        for ops in schema.get("paths", {}).values():
            for op in ops.values():
                if auth_off:
                    op.pop("security", None)
                if op.get("security"):
                    for code, answer in _AUTH_ANSWERS.items():
                        op.setdefault("responses", {}).setdefault(code, answer)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
