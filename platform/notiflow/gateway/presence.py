"""GET /presence/{user_id}: is a user online, and with how many sockets (SSE streams included).

The answer is presence as routing reads it (service/sessions.py, streams/presence.py): a socket counts
while its gateway node's liveness key lives, so a node killed with SIGKILL stops counting within
``presence_ttl_s`` (SPEC I7), the same bound after which notifications for its users go offline.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import BaseModel

from notiflow.gateway import responses as docs
from notiflow.gateway.auth import acting_for_user
from notiflow.gateway.deps import services
from notiflow.gateway.http import JSON, check_user_id

router = APIRouter()


class PresenceOut(BaseModel):
    online: bool
    sockets: int


PRESENCE = docs.ok(200, PresenceOut, "the user's live sockets and SSE streams across gateway nodes") | docs.READS


@router.get("/presence/{user_id}", responses=PRESENCE, dependencies=[Depends(acting_for_user)],
            summary="Whether a user is online: open sockets and SSE streams on live gateway nodes")
async def presence(request: Request, user_id: str) -> Response:
    """``read`` scope or that user's own token, like the offline queue."""
    sockets = await services(request).sessions.presence(check_user_id(user_id))
    return JSON({"online": sockets > 0, "sockets": sockets})
