"""HTTP routes (SPEC §2). Each route validates, calls one service use case, and shapes the answer."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import Response
from pydantic import ValidationError

from notiflow.credentials import Principal, Scope
from notiflow.errors import ApiError
from notiflow.gateway import responses as docs
from notiflow.gateway.auth import acting_for_user, require_scope
from notiflow.gateway.deps import Services, services
from notiflow.gateway.schemas import MAX_BATCH, MAX_BIGINT, MAX_PAYLOAD_BYTES, AckIn, NotificationIn, parse_uuid
from notiflow.models import EVENT_RE, NewNotification, user_id_problem
from notiflow.service.ingest import request_hash

router = APIRouter()

_JSON_OPTS = orjson.OPT_NON_STR_KEYS


class JSON(Response):
    """orjson rendering: UUIDs, datetimes and pre-encoded payload fragments pass through."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=_JSON_OPTS, default=_fallback)


def _fallback(value: Any) -> str:
    # asyncpg's own UUID type is not a uuid.UUID subclass orjson knows; its str() is the canonical form.
    if type(value).__name__ == "UUID":
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def error_response(
    status: int, code: str, message: str, details: object = None, headers: dict[str, str] | None = None
) -> Response:
    """The SPEC §2 error body."""
    return JSON({"error": {"code": code, "message": message, "details": details}}, status_code=status, headers=headers)


def validation_details(exc: ValidationError) -> list[dict[str, Any]]:
    return [
        {"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]}
        for e in exc.errors(include_url=False, include_input=False)
    ]


async def read_json(request: Request) -> Any:
    """The body as JSON, within the size bound; 415, 413 and 400 otherwise."""
    ctype = request.headers.get("content-type", "")
    if ctype.split(";")[0].strip().lower() != "application/json":
        raise ApiError(415, "unsupported_media_type", "Content-Type must be application/json")
    limit = services(request).settings.max_body_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "body_too_large", f"request body is larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "body_too_large", f"request body is larger than {limit} bytes")
        chunks.append(chunk)
    try:
        return orjson.loads(b"".join(chunks))
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "malformed_json", f"request body is not valid JSON: {exc}") from None


def client_identity(request: Request) -> str:
    """Whose ingest rate a request counts against: its bearer token (hashed; the token itself is never
    kept), or "anonymous" for every unauthenticated client together."""
    token = request.headers.get("authorization", "")
    if not token.startswith("Bearer "):
        return "anonymous"
    return "bearer:" + hashlib.sha256(token.removeprefix("Bearer ").encode()).hexdigest()


def check_user_id(user_id: str) -> str:
    if problem := user_id_problem(user_id):
        raise ApiError(422, "invalid_user_id", f"user id {problem}")
    return user_id


_SEND = Depends(require_scope(Scope.SEND))
_READ = Depends(require_scope(Scope.READ))
_ADMIN = Depends(require_scope(Scope.ADMIN))
_FOR_USER = Depends(acting_for_user)


def _check_key(key: object) -> str | None:
    if key is not None and not (isinstance(key, str) and 1 <= len(key) <= 255 and key.isprintable()):
        raise ApiError(400, "invalid_idempotency_key", "Idempotency-Key must be 1-255 printable characters")
    return key


def _rate_identity(request: Request, who: Principal) -> str:
    # With auth on, the rate is the API key's (a stable id, whichever way the key is sent).
    return who.identity if who.kind != "anonymous" else client_identity(request)


def _notification(svc: Services, raw: Any, key: str | None, who: Principal) -> NewNotification:
    """A validated, checked notification of one request body (or batch item); ApiError otherwise."""
    try:
        body = NotificationIn.model_validate(raw)
    except ValidationError as exc:
        raise ApiError(422, "invalid_request", "request body is invalid", validation_details(exc)) from None
    payload_json = orjson.dumps(body.payload)
    if len(payload_json) > MAX_PAYLOAD_BYTES:
        raise ApiError(413, "payload_too_large", f"payload is larger than {MAX_PAYLOAD_BYTES} bytes serialised")
    item = NewNotification(
        id=svc.new_id(),
        user_ids=body.recipients(),
        topic=body.topic,
        event=body.event,
        payload_json=payload_json.decode(),
        ttl_seconds=body.ttl_seconds,
        webhook_url=body.webhook_url,
        status_url=body.status_url,
        idempotency_key=key,
        idempotency_scope=who.idempotency_scope,
        request_hash=request_hash(body.hashed()) if key else None,
        collapse_key=body.collapse_key,
    )
    svc.ingest.check(item)
    return item


@router.post("/notifications", status_code=202, responses=docs.INGEST)
async def create_notification(request: Request, who: Principal = _SEND) -> Response:
    raw = await read_json(request)
    key = _check_key(request.headers.get("idempotency-key"))
    svc = services(request)
    item = _notification(svc, raw, key, who)
    await svc.limiter.admit_items(_rate_identity(request, who), [item])
    status, answer = await svc.ingest.accept(item)
    return JSON(answer, status_code=status)


@router.post("/notifications/batch", status_code=202, responses=docs.INGEST)
async def create_notifications(request: Request, who: Principal = _SEND) -> Response:
    """SPEC §2: validated as a whole (a 422 names the bad items by index, nothing is stored), committed
    together, answered per item in order."""
    raw = await read_json(request)
    if not isinstance(raw, dict) or set(raw) != {"notifications"}:
        raise ApiError(422, "invalid_request", 'the body must be {"notifications": [...]} and nothing else')
    listed = raw["notifications"]
    if not isinstance(listed, list) or not 1 <= len(listed) <= MAX_BATCH:
        raise ApiError(422, "invalid_request", f"notifications must be a list of 1 to {MAX_BATCH} objects")
    svc = services(request)
    items: list[NewNotification] = []
    bad: list[dict[str, Any]] = []
    for index, entry in enumerate(listed):
        try:
            if not isinstance(entry, dict):
                raise ApiError(422, "invalid_request", "each notification must be a JSON object")
            body = dict(entry)
            key = _check_key(body.pop("idempotency_key", None))
            items.append(_notification(svc, body, key, who))
        except ApiError as exc:
            bad.append({"index": index, "code": exc.code, "message": exc.message, "details": exc.details})
    if bad:
        raise ApiError(422, "invalid_request", f"{len(bad)} of {len(listed)} notifications are invalid", bad)
    await svc.limiter.admit_items(_rate_identity(request, who), items)
    results = await svc.ingest.accept_many(items)
    return JSON({"results": [r.body() if isinstance(r, ApiError) else r[1] for r in results]}, status_code=202)


@router.get("/notifications/offline/{user_id}", responses=docs.OFFLINE, dependencies=[_FOR_USER])
async def offline_queue(
    request: Request, user_id: str, limit: int = Query(100, ge=1, le=1000),
    after_seq: int = Query(0, ge=0, le=MAX_BIGINT),
) -> Response:
    page = await services(request).queries.offline(check_user_id(user_id), after_seq, limit)
    return JSON(page)


@router.post("/notifications/offline/{user_id}/ack", responses=docs.ACK, dependencies=[_FOR_USER])
async def ack(request: Request, user_id: str) -> Response:
    check_user_id(user_id)
    raw = await read_json(request)
    try:
        body = AckIn.model_validate(raw)
    except ValidationError as exc:
        raise ApiError(422, "invalid_request", "request body is invalid", validation_details(exc)) from None
    n = await services(request).queries.ack(user_id, body.uuids(), body.up_to_seq)
    return JSON({"acknowledged": n})


@router.get("/notifications/{notification_id}", responses=docs.NOTIFICATION, dependencies=[_READ])
async def get_notification(
    request: Request,
    notification_id: str = Path(json_schema_extra={"format": "uuid"}),  # parsed below: a 422 names the id
    user_id: str | None = None,
    limit: int = Query(100, ge=1, le=1000),
) -> Response:
    nid = parse_uuid(notification_id, "id")
    if user_id is not None:
        check_user_id(user_id)
    return JSON(await services(request).queries.notification(nid, user_id, limit))


@router.get("/dlq", responses=docs.DLQ_LIST, dependencies=[_ADMIN])
async def dlq_list(
    request: Request,
    limit: int = Query(100, ge=1, le=1000),
    after: int = Query(0, ge=0, le=MAX_BIGINT),
    user_id: str | None = None,
    event: str | None = Query(None, pattern=EVENT_RE.pattern),
) -> Response:
    if user_id is not None:
        check_user_id(user_id)
    return JSON(await services(request).queries.dlq_list(after, user_id, event, limit))


@router.post("/dlq/{entry_id}/replay", status_code=202, responses=docs.DLQ_REPLAY, dependencies=[_ADMIN])
async def dlq_replay(request: Request, entry_id: int = Path(ge=1, le=MAX_BIGINT)) -> Response:
    return JSON(await services(request).queries.dlq_replay(entry_id), status_code=202)


@router.delete("/dlq/{entry_id}", status_code=204, responses=docs.DLQ_DELETE, dependencies=[_ADMIN])
async def dlq_delete(request: Request, entry_id: int = Path(ge=1, le=MAX_BIGINT)) -> Response:
    await services(request).queries.dlq_delete(entry_id)
    return Response(status_code=204)


@router.get("/healthz", responses=docs.HEALTH)
async def healthz() -> Response:
    return JSON({"status": "ok"})


@router.get("/readyz", responses=docs.READY)
async def readyz(request: Request) -> Response:
    checks = await services(request).readiness()
    ok = all(v == "ok" for v in checks.values())
    return JSON({"status": "ok" if ok else "unavailable", "checks": checks}, status_code=200 if ok else 503)
