"""Python client: ``async with NotiflowClient(urls, user_id, token) as c: async for n in c: ...``

Each notification reaches the consumer once, across reconnects and gateway deaths (see core.py). Producers
send with ``Producer`` (asyncio) or ``SyncProducer``: each notification accepted once (producer.py).
"""

from notiflow.client.bodies import Accepted, SubscribersPage, notification, topic_notification
from notiflow.client.core import NotiflowClient
from notiflow.client.producer import Producer, RetryPolicy
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
    "SubscribersPage",
    "SyncProducer",
    "Token",
    "Unavailable",
    "notification",
    "topic_notification",
]
