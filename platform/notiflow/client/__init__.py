"""Python client: ``async with NotiflowClient(urls, user_id, token) as c: async for n in c: ...``

Each notification reaches the consumer once, across reconnects and gateway deaths (see core.py).
"""

from notiflow.client.core import NotiflowClient
from notiflow.client.tracker import SeenTracker
from notiflow.client.types import AuthFailed, ClientError, ClientGaveUp, Notification, Token, Unavailable

__all__ = [
    "AuthFailed",
    "ClientError",
    "ClientGaveUp",
    "Notification",
    "NotiflowClient",
    "SeenTracker",
    "Token",
    "Unavailable",
]
