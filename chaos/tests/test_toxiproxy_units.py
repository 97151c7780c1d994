"""Pure parts of the Toxiproxy-compatible server: how the slicer cuts, how attributes are checked and merged."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chaos.toxiproxy.proxy import ApiError, join_host_port, split_host_port
from chaos.toxiproxy.toxics import BadAttributes, Slicer, parse_attributes


@settings(deadline=None)  # the machine is shared: time is not what this checks
@given(
    size=st.integers(min_value=0, max_value=40_000),
    average=st.integers(min_value=1, max_value=2_000),
    variation_share=st.floats(min_value=0, max_value=0.99),
)
def test_slices_cover_the_chunk_in_order_and_stay_near_the_average_size(
    size: int, average: int, variation_share: float
) -> None:
    variation = int(average * variation_share)
    slicer = Slicer({"average_size": average, "size_variation": variation})
    ends = slicer.bounds(0, size)
    assert ends[-1] == size
    sizes = [end - start for start, end in zip([0, *ends], ends, strict=False)]
    assert all(s > 0 for s in sizes) or size == 0
    assert all(s <= average + variation for s in sizes), sizes
    if size > average + variation:
        assert len(sizes) >= 2


def test_a_slicer_with_no_average_size_still_terminates() -> None:
    assert Slicer({}).bounds(0, 64) == list(range(1, 65))


def test_attributes_are_merged_checked_and_unknown_keys_ignored() -> None:
    assert parse_attributes("latency", {"latency": 100}) == {"latency": 100, "jitter": 0}
    assert parse_attributes("latency", {"jitter": 5.0}, {"latency": 100, "jitter": 0}) == {"latency": 100, "jitter": 5}
    assert parse_attributes("bandwidth", {"rate": 1, "colour": "red"}) == {"rate": 1}
    for bad in ({"rate": "1"}, {"rate": 1.5}, {"rate": -1}, {"rate": True}, [1]):
        with pytest.raises(BadAttributes):
            parse_attributes("bandwidth", bad)


def test_host_port_round_trips_and_bad_addresses_are_400() -> None:
    assert split_host_port("127.0.0.1:80") == ("127.0.0.1", 80)
    assert split_host_port("[::1]:80") == ("::1", 80)
    assert split_host_port(":80") == ("0.0.0.0", 80)
    assert join_host_port("::1", 80) == "[::1]:80"
    for bad in ("localhost", "host:port", "h:99999"):
        with pytest.raises(ApiError) as caught:
            split_host_port(bad)
        assert caught.value.status == 400
