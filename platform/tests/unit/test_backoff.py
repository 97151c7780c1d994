"""Full-jitter backoff: bounds, growth, cap, jitter spread, Retry-After; and how a failed attempt maps onto
it (the delay after the k-th failed attempt is uniform(0, min(cap, base * 2**(k-1))))."""

from __future__ import annotations

import random
import statistics
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from notiflow.backoff import backoff_ceiling_ms, compute_backoff_ms
from notiflow.config import Settings
from notiflow.models import Channel, DeliveryWork
from notiflow.service.delivery import DeliveryService

attempts = st.integers(min_value=0, max_value=200)
bases = st.integers(min_value=1, max_value=10**6)
caps = st.integers(min_value=1, max_value=10**9)
seeds = st.integers(min_value=0, max_value=2**32 - 1)


# --- the ceiling -----------------------------------------------------------------------------


def test_ceiling_doubles_from_the_base_until_the_cap() -> None:
    got = [backoff_ceiling_ms(a, base_ms=1000, cap_ms=300_000) for a in range(12)]
    assert got == [1000, 2000, 4000, 8000, 16000, 32000, 64000, 128000, 256000, 300000, 300000, 300000]


def test_a_cap_below_the_base_wins_from_the_start() -> None:
    assert backoff_ceiling_ms(0, base_ms=500, cap_ms=200) == 200


def test_huge_attempt_numbers_stay_at_the_cap_without_building_huge_integers() -> None:
    assert backoff_ceiling_ms(10**9, base_ms=1000, cap_ms=300_000) == 300_000
    assert compute_backoff_ms(10**9, base_ms=1000, cap_ms=300_000, rng=random.Random(1)) <= 300_000


def test_a_negative_attempt_is_refused() -> None:
    with pytest.raises(ValueError):
        backoff_ceiling_ms(-1, base_ms=1000, cap_ms=300_000)
    with pytest.raises(ValueError):
        compute_backoff_ms(-1, base_ms=1000, cap_ms=300_000)


@given(attempt=attempts, base=bases, cap=caps)
def test_ceiling_is_min_of_cap_and_base_times_two_to_the_attempt(attempt: int, base: int, cap: int) -> None:
    assert backoff_ceiling_ms(attempt, base_ms=base, cap_ms=cap) == min(cap, base * 2**attempt)


@given(attempt=attempts, base=bases, cap=caps)
def test_ceiling_grows_by_doubling_and_never_shrinks(attempt: int, base: int, cap: int) -> None:
    now = backoff_ceiling_ms(attempt, base_ms=base, cap_ms=cap)
    nxt = backoff_ceiling_ms(attempt + 1, base_ms=base, cap_ms=cap)
    assert nxt == min(cap, 2 * now) and nxt >= now


# --- the delay -------------------------------------------------------------------------------


@given(attempt=attempts, base=bases, cap=caps, seed=seeds)
def test_delay_is_an_integer_within_zero_and_the_ceiling(attempt: int, base: int, cap: int, seed: int) -> None:
    delay = compute_backoff_ms(attempt, base_ms=base, cap_ms=cap, rng=random.Random(seed))
    assert isinstance(delay, int)
    assert 0 <= delay <= min(cap, base * 2**attempt)


def test_the_same_seed_gives_the_same_delay() -> None:
    one = [compute_backoff_ms(a, base_ms=100, cap_ms=10_000, rng=random.Random(7)) for a in range(10)]
    two = [compute_backoff_ms(a, base_ms=100, cap_ms=10_000, rng=random.Random(7)) for a in range(10)]
    assert one == two


def test_full_jitter_spreads_delays_uniformly_over_zero_to_the_ceiling() -> None:
    # Full jitter, not "equal jitter" (ceiling/2 + uniform(0, ceiling/2)) nor a fixed delay: clients that
    # failed together retry spread over the whole window. 20,000 draws, fixed seed: each decile holds
    # 2000 +- 42 (1 sigma); the bounds below are ~5 sigma.
    rng, ceiling, n = random.Random(20240601), 1000, 20_000
    delays = [compute_backoff_ms(0, base_ms=ceiling, cap_ms=10 * ceiling, rng=rng) for _ in range(n)]
    assert min(delays) < 5 and max(delays) > ceiling - 5
    assert abs(statistics.fmean(delays) - ceiling / 2) < 15
    deciles = [0] * 10
    for d in delays:
        deciles[min(9, d * 10 // ceiling)] += 1
    assert all(abs(c - n / 10) < 200 for c in deciles), deciles
    assert len(set(delays)) > 900  # not a handful of values


def test_jitter_spread_grows_with_the_attempt_until_the_cap() -> None:
    rng = random.Random(3)
    medians = [
        statistics.median(compute_backoff_ms(a, base_ms=100, cap_ms=1600, rng=rng) for _ in range(2000))
        for a in range(7)
    ]
    # Ceilings 100, 200, 400, 800, 1600, 1600, 1600: medians near half of each.
    for median, ceiling in zip(medians, [100, 200, 400, 800, 1600, 1600, 1600], strict=True):
        assert abs(median - ceiling / 2) < ceiling * 0.08, (median, ceiling)


# --- Retry-After -----------------------------------------------------------------------------


@given(attempt=attempts, base=bases, cap=caps, seed=seeds, retry_after=st.integers(0, 10**10))
def test_retry_after_is_a_floor_and_the_cap_still_holds(
    attempt: int, base: int, cap: int, seed: int, retry_after: int
) -> None:
    delay = compute_backoff_ms(attempt, base_ms=base, cap_ms=cap, retry_after_ms=retry_after, rng=random.Random(seed))
    assert min(retry_after, cap) <= delay <= cap
    jitter = compute_backoff_ms(attempt, base_ms=base, cap_ms=cap, rng=random.Random(seed))
    assert delay == max(jitter, min(cap, retry_after))


def test_retry_after_examples() -> None:
    rng = random.Random(0)
    assert compute_backoff_ms(0, base_ms=50, cap_ms=3000, retry_after_ms=1000, rng=rng) == 1000
    assert compute_backoff_ms(0, base_ms=50, cap_ms=3000, retry_after_ms=60_000, rng=rng) == 3000  # within the cap
    assert compute_backoff_ms(0, base_ms=50, cap_ms=3000, retry_after_ms=0, rng=rng) <= 50


# --- how a failed attempt uses it (DeliveryService.failure: no I/O) --------------------------


def _service(**settings: Any) -> DeliveryService:
    s = Settings(redis_url="redis://unused", database_url="postgresql://unused", node_id="unit", **settings)
    none = cast(Any, None)
    return DeliveryService(settings=s, pool=none, work=none, presence=none, router=none, webhooks=none, budget=none)


def _work(attempts_so_far: int, webhook_attempts_so_far: int = 0) -> DeliveryWork:
    return DeliveryWork(
        notification_id=uuid.uuid4(), user_id="alice", seq=1, status="pending", webhook_status="pending",
        attempts=attempts_so_far, webhook_attempts=webhook_attempts_so_far, event="e", payload_json="{}",
        created_at=datetime.now(UTC), expired=False, webhook_url="http://hooks.example/x",
    )


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_the_delay_after_the_kth_failed_attempt_uses_exponent_k_minus_1(k: int) -> None:
    random.seed(k)  # failure() draws from the module's generator
    svc = _service(retry_base_ms=1000, retry_cap_ms=300_000, max_retries=5)
    ceiling = timedelta(milliseconds=1000 * 2 ** (k - 1))
    delays = []
    for _ in range(300):
        o = svc.failure(_work(k - 1), Channel.SOCKET, "boom")
        assert (o.attempt, o.status, o.outcome, o.dlq_reason) == (k, "retrying", "failed", None)
        assert o.next_attempt_at is not None
        delays.append(o.next_attempt_at - o.finished_at)
    assert all(timedelta(0) <= d <= ceiling for d in delays)
    assert max(delays) > ceiling * 0.9  # and not a smaller exponent (0.9**300 ~ 2e-14 by chance)


def test_after_max_retries_the_delivery_is_dead_with_its_reason() -> None:
    svc = _service(max_retries=3)
    last = svc.failure(_work(3), Channel.SOCKET, "HTTP 500")
    assert (last.attempt, last.status, last.dlq_reason) == (4, "dead", "max_retries_exceeded")
    assert last.next_attempt_at is None
    assert svc.failure(_work(2), Channel.SOCKET, "x").status == "retrying"


def test_a_permanent_failure_is_dead_at_once() -> None:
    o = _service(max_retries=5).failure(_work(0), Channel.WEBHOOK, "HTTP 400", permanent=True)
    assert (o.attempt, o.status, o.dlq_reason, o.next_attempt_at) == (1, "dead", "rejected", None)


def test_each_channel_counts_its_own_attempts() -> None:
    svc = _service(max_retries=2)
    w = _work(attempts_so_far=0, webhook_attempts_so_far=2)
    assert svc.failure(w, Channel.SOCKET, "x").status == "retrying"
    assert svc.failure(w, Channel.WEBHOOK, "x").status == "dead"


def test_max_retries_zero_dead_letters_the_first_failure() -> None:
    assert _service(max_retries=0).failure(_work(0), Channel.SOCKET, "x").dlq_reason == "max_retries_exceeded"


def test_retry_after_from_the_downstream_sets_the_floor_within_the_cap() -> None:
    svc = _service(retry_base_ms=10, retry_cap_ms=5000)
    o = svc.failure(_work(0), Channel.WEBHOOK, "HTTP 429", retry_after_s=2.0)
    assert o.next_attempt_at is not None
    assert o.next_attempt_at - o.finished_at == timedelta(milliseconds=2000)
    o = svc.failure(_work(0), Channel.WEBHOOK, "HTTP 429", retry_after_s=3600.0)
    assert o.next_attempt_at is not None
    assert o.next_attempt_at - o.finished_at == timedelta(milliseconds=5000)


def test_a_long_error_is_cut_to_two_thousand_characters() -> None:
    o = _service().failure(_work(0), Channel.WEBHOOK, "x" * 10_000)
    assert o.error is not None and len(o.error) == 2000
