"""The gateway logs its open-files limit at start and warns when it cannot hold NOTIFLOW_WS_MAX_SOCKETS
sockets plus the descriptors it needs besides (the limit is passed in: no process limit is changed)."""

from __future__ import annotations

import logging
import resource

import pytest

from notiflow.gateway.openfiles import FD_RESERVE, check_open_files, open_files_limit


def test_a_limit_below_the_sockets_allowed_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="notiflow.gateway.openfiles"):
        assert check_open_files(1024, 20_000) is False
    [record] = caplog.records
    assert record.levelno == logging.WARNING and "NOTIFLOW_WS_MAX_SOCKETS" in record.getMessage()
    assert (record.nofile, record.ws_max_sockets, record.needed) == (1024, 20_000, 20_000 + FD_RESERVE)  # type: ignore[attr-defined]


def test_a_limit_at_the_sockets_allowed_without_room_for_the_rest_is_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="notiflow.gateway.openfiles"):
        assert check_open_files(20_000, 20_000) is False
    assert [r.levelno for r in caplog.records] == [logging.WARNING]


def test_a_sufficient_limit_is_logged_as_information(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="notiflow.gateway.openfiles"):
        assert check_open_files(65_536, 20_000) is True
    [record] = caplog.records
    assert record.levelno == logging.INFO and record.nofile == 65_536  # type: ignore[attr-defined]


def test_the_limit_read_is_the_process_soft_limit() -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert open_files_limit() == (soft if soft != resource.RLIM_INFINITY else 2**63 - 1)
