"""Copies of one command (``--processes N``) each get their own node id and metrics port (the parent keeps
NOTIFLOW_METRICS_PORT for all of them), and the flags the parent passes on cannot hand them all one port."""

from __future__ import annotations

from notiflow.cli_run import _without
from notiflow.processes import copy_env


def test_each_copy_gets_its_own_metrics_port() -> None:
    envs = [copy_env("node", i, 9464) for i in range(3)]
    assert [e["NOTIFLOW_METRICS_PORT"] for e in envs] == ["9465", "9466", "9467"]
    assert [e["NOTIFLOW_NODE_ID"] for e in envs] == ["node-p0", "node-p1", "node-p2"]


def test_metrics_off_stays_off_for_every_copy() -> None:
    assert {copy_env("node", i, 0)["NOTIFLOW_METRICS_PORT"] for i in range(3)} == {"0"}


def test_a_metrics_port_flag_is_not_passed_on_to_the_copies() -> None:
    argv = ["stream-worker", "--metrics-port", "9000", "--processes", "2", "--log-level", "INFO"]
    assert _without(_without(argv, "--processes"), "--metrics-port") == ["stream-worker", "--log-level", "INFO"]
    assert _without(["gateway", "--metrics-port=9000", "--port", "8000"], "--metrics-port") == [
        "gateway", "--port", "8000"]
