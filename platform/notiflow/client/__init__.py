"""Python client: ``async with NotiflowClient(urls, user_id, token) as c: async for n in c: ...``

Each notification reaches the consumer once, across reconnects and gateway deaths (see core.py). Producers
send with ``Producer`` (asyncio) or ``SyncProducer``: each notification accepted once (producer.py).
"""

from notiflow.client.core import NotiflowClient
from notiflow.client.producer import Accepted, Producer, RetryPolicy, notification
from notiflow.client.sync import SyncProducer
from notiflow.client.tracker import SeenTracker
from notiflow.client.types import (
    AuthFailed,
    ClientError,
    ClientGaveUp,
    IdempotencyKeyReused,
    InvalidNotification,
    NotAllowed,
    Notification,
    OutcomeUnknown,
    RequestRejected,
    Token,
    Unavailable,
)

__all__ = [
    "Accepted",
    "AuthFailed",
    "ClientError",
    "ClientGaveUp",
    "IdempotencyKeyReused",
    "InvalidNotification",
    "NotAllowed",
    "Notification",
    "NotiflowClient",
    "OutcomeUnknown",
    "Producer",
    "RequestRejected",
    "RetryPolicy",
    "SeenTracker",
    "SyncProducer",
    "Token",
    "Unavailable",
    "notification",
]
