"""The ingest rate limit use case: each client identity (an API key; every unauthenticated client shares
one) may submit ``INGEST_RATE_PER_S`` deliveries per second, in bursts of up to ``INGEST_BURST``. The unit is
the delivery, one per recipient of a notification: a request costs the recipients summed over its
notifications, so the limit follows the work whether it comes as many notifications or as many recipients.
A request that costs more than the whole burst could never be admitted: it is refused at once with 413
``over_ingest_burst``, which names the limit (a 429 would invite retrying it forever).

Concurrent checks are batched into one Redis script call (group commit, like ingest itself). The limit
protects the platform; it must not become a way for Redis to stop ingestion, which PostgreSQL alone can
serve: when Redis does not answer within ``CHECK_DEADLINE_S`` the request is admitted, and the next
``OPEN_AFTER_FAILURE_S`` skip the check altogether (logged).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from notiflow.batching import Batcher
from notiflow.errors import ApiError, RateLimited, StoreUnavailable
from notiflow.models import NewNotification
from notiflow.roles import GatewaySettings
from notiflow.service.ports import Buckets

log = logging.getLogger(__name__)

CHECK_DEADLINE_S = 0.25
OPEN_AFTER_FAILURE_S = 1.0


class IngestLimiter:
    def __init__(self, settings: GatewaySettings, buckets: Buckets) -> None:
        self._s = settings
        self._buckets = buckets
        self._batcher: Batcher[tuple[str, int], int] = Batcher(self._flush, max_batch=500, name="rate-limit")
        self._open_until = 0.0
        self.failed_open = 0  # checks admitted without Redis, for logs and tests

    def start(self) -> None:
        self._batcher.start()

    async def close(self, grace_s: float) -> None:
        # No request waits longer than CHECK_DEADLINE_S for a check: a check still out after that has
        # nobody to answer, and waiting the whole grace for a black-holed Redis would only hold up shutdown.
        await self._batcher.close(min(grace_s, CHECK_DEADLINE_S))

    async def admit_items(self, identity: str, items: Sequence[NewNotification]) -> None:
        """Charge ``identity`` for the deliveries that ``items`` ask for (see ``admit``); a topic notification
        counts one (its subscribers are known only as it is expanded, after the 202)."""
        await self.admit(identity, sum(len(item.user_ids) or 1 for item in items))

    async def admit(self, identity: str, cost: int) -> None:
        """Take ``cost`` tokens (deliveries) of ``identity``'s bucket; raises ApiError (413) when ``cost`` is
        over the whole burst, RateLimited (429) when the tokens are not there yet."""
        burst = self._s.ingest_burst
        if cost > burst:
            raise ApiError(
                413, "over_ingest_burst",
                f"this request asks for {cost} deliveries (recipients summed over its notifications); one client "
                f"may submit at most {burst} at once (NOTIFLOW_INGEST_BURST) and "
                f"{self._s.ingest_rate_per_s:g} per second (NOTIFLOW_INGEST_RATE_PER_S): split it",
                {"deliveries": cost, "ingest_burst": burst, "ingest_rate_per_s": self._s.ingest_rate_per_s},
            )
        loop = asyncio.get_running_loop()
        if loop.time() < self._open_until:
            self.failed_open += 1
            return
        try:
            # The batcher's future itself, not a coroutine: waiting on it makes no task per request. A
            # timeout cancels this request's future; the batch it is in is flushed all the same.
            (wait_ms,) = await asyncio.wait_for(self._batcher.enqueue([(identity, cost)]), CHECK_DEADLINE_S)
        except (StoreUnavailable, TimeoutError) as exc:
            self._open_until = loop.time() + OPEN_AFTER_FAILURE_S
            self.failed_open += 1
            log.warning("rate limit unavailable; admitting without it", extra={"error": str(exc) or "timeout"})
            return
        if isinstance(wait_ms, BaseException):
            raise wait_ms
        if wait_ms > 0:
            raise RateLimited(
                f"over {self._s.ingest_rate_per_s:g} deliveries/s (recipients summed over notifications) for this "
                "client (NOTIFLOW_INGEST_RATE_PER_S)", retry_after_s=wait_ms / 1000,
            )

    async def _flush(self, items: list[tuple[str, int]]) -> list[int | BaseException]:
        return list(await self._buckets.take(items, self._s.ingest_rate_per_s, self._s.ingest_burst))
