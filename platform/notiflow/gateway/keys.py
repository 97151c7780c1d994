"""Key management over HTTP (admin scope): the same use cases as `notiflow keys`.

``POST /keys`` ``{"name": "billing", "scopes": ["send"]}`` -> 201 with the key, shown this once;
``GET /keys?include_revoked=false`` -> ``{"keys": [...]}`` (never the keys themselves);
``DELETE /keys/{name}`` -> 204, and the key stops working on every gateway with the next request.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from notiflow.credentials import KEY_NAME_RE, Scope
from notiflow.errors import ApiError, NotFound
from notiflow.gateway import responses as docs
from notiflow.gateway.auth import require_scope
from notiflow.gateway.deps import services
from notiflow.gateway.http import JSON, read_json, validation_details

router = APIRouter(dependencies=[Depends(require_scope(Scope.ADMIN))])


class KeyIn(BaseModel):
    """POST /keys."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(pattern=KEY_NAME_RE.pattern)
    scopes: list[Scope] = Field(min_length=1, max_length=len(Scope))


@router.post("/keys", status_code=201, responses=docs.errors(400, 409, 413, 415, 422, 503))
async def create_key(request: Request) -> Response:
    raw = await read_json(request)
    try:
        body = KeyIn.model_validate(raw, strict=False)  # scopes arrive as strings
    except ValidationError as exc:
        raise ApiError(422, "invalid_request", "request body is invalid", validation_details(exc)) from None
    created = await services(request).keys.create(body.name, frozenset(body.scopes))
    return JSON(created, status_code=201)


@router.get("/keys", responses=docs.READS)
async def list_keys(request: Request, include_revoked: bool = False) -> Response:
    return JSON({"keys": await services(request).keys.list(include_revoked=include_revoked)})


@router.delete("/keys/{name}", status_code=204, responses=docs.errors(404, 503))
async def revoke_key(request: Request, name: str) -> Response:
    if not await services(request).keys.revoke(name):
        raise NotFound("live key")
    return Response(status_code=204)
