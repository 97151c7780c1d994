"""Topic subscriptions over HTTP (docs/contract.md "Topics"): PUT and DELETE a subscriber, list them by keyset.
Topic names follow the user-id rule. Sending to a topic is POST /notifications with ``"topic"``."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel

from notiflow.credentials import Scope
from notiflow.errors import ApiError
from notiflow.gateway import responses as docs
from notiflow.gateway.auth import require_any_scope
from notiflow.gateway.deps import services
from notiflow.gateway.http import JSON, check_user_id
from notiflow.models import USER_ID_MAX, user_id_problem

router = APIRouter()

_SEND_OR_ADMIN = [Depends(require_any_scope(Scope.SEND, Scope.ADMIN))]


class SubscribersOut(BaseModel):
    topic: str
    subscribers: list[str]
    next_after: str | None


_CHANGED = {204: {"description": "done (also when there was nothing to change)"}} | docs.errors(422, 503)
_LISTED = docs.ok(200, SubscribersOut, "the topic's subscribers, by user id") | docs.READS


def check_topic(topic: str) -> str:
    if problem := user_id_problem(topic):
        raise ApiError(422, "invalid_topic", f"topic {problem}")
    return topic


@router.put("/topics/{topic}/subscribers/{user_id}", status_code=204, responses=_CHANGED, dependencies=_SEND_OR_ADMIN)
async def subscribe(request: Request, topic: str, user_id: str) -> Response:
    await services(request).topics.subscribe(check_topic(topic), check_user_id(user_id))
    return Response(status_code=204)


@router.delete(
    "/topics/{topic}/subscribers/{user_id}", status_code=204, responses=_CHANGED, dependencies=_SEND_OR_ADMIN
)
async def unsubscribe(request: Request, topic: str, user_id: str) -> Response:
    await services(request).topics.unsubscribe(check_topic(topic), check_user_id(user_id))
    return Response(status_code=204)


@router.get("/topics/{topic}/subscribers", responses=_LISTED, dependencies=_SEND_OR_ADMIN)
async def subscribers(
    request: Request, topic: str, after: str = Query("", max_length=USER_ID_MAX), limit: int = Query(100, ge=1, le=1000)
) -> Response:
    """Keyset pagination: pass the last page's ``next_after`` as ``after``."""
    if after:
        check_user_id(after)
    return JSON(await services(request).topics.subscribers(check_topic(topic), after, limit))
