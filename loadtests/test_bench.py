"""The benchmark package (loadtests/bench/) keeps the house's sizes and its command line: ``python
loadtests/bench.py`` still parses the same options and prints its help. A run itself needs a stack and is
not a test (``make bench``)."""

from __future__ import annotations

import ast
import random
import subprocess
import sys
from pathlib import Path

import pytest
from bench.cli import parse_args
from bench.producers import Plan, _accepted
from bench.records import Stats, percentiles

pytestmark = pytest.mark.timeout(60)

HERE = Path(__file__).resolve().parent


def test_every_module_and_function_keeps_the_house_sizes() -> None:
    for path in sorted((HERE / "bench").glob("*.py")):
        source = path.read_text()
        assert len(source.splitlines()) <= 300, path.name
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                assert node.end_lineno is not None
                assert node.end_lineno - node.lineno + 1 <= 60, f"{path.name}: {node.name}"


def test_the_entry_point_keeps_its_command_line() -> None:
    done = subprocess.run([sys.executable, str(HERE / "bench.py"), "--help"], capture_output=True, text=True,
                          timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    for flag in ("--gateways", "--stream-workers", "--fanout", "--offline-share", "--ingest-only", "--client-procs",
                 "--rate", "--profile", "--json-out"):
        assert flag in done.stdout
    args = parse_args(["--fanout", "50", "--producers", "8", "--duration", "2"])
    assert (args.fanout, args.producers, args.duration, args.sockets) == (50, 8, 2.0, 200)
    with pytest.raises(SystemExit):
        parse_args(["--offline-share", "1.5"])


def test_percentiles_are_nearest_rank_in_milliseconds() -> None:
    assert percentiles([]) == {"p50": None, "p95": None, "p99": None, "max": None, "n": 0}
    got = percentiles([i / 1000 for i in range(1, 101)])
    assert (got["p50"], got["p95"], got["p99"], got["max"], got["n"]) == (50.0, 95.0, 99.0, 100.0, 100)


def test_a_plan_picks_online_recipients_that_are_open() -> None:
    plan = Plan([f"u{i}" for i in range(10)], [f"off{i}" for i in range(10)], recipients=4, offline_share=0.0)
    users, live = plan.pick(random.Random(1), lambda u: u != "u3")
    assert len(users) == 4 and all(u.startswith("u") for u in users)
    assert set(live) == set(users) - {"u3"}


def test_a_batch_answer_records_each_accepted_item_and_skips_the_refused() -> None:
    stats = Stats()
    stats.window = (0.0, 10.0)
    picks = [(["u1"], ("u1",)), (["u2", "u3"], ("u2",)), (["u4"], ())]
    results = [{"id": "a", "status": "accepted"}, {"error": {"code": "idempotency_conflict"}}, {"id": "c"}]
    _accepted(stats, picks, results, 1.0, 1.5)
    assert set(stats.accepted) == {"a", "c"} and stats.accepted["a"].online == ("u1",)
    assert (stats.recipients_accepted, stats.accepted_in_window, stats.post_latency) == (2, 2, [0.5])
    args = parse_args(["--batch", "100"])
    assert args.batch == 100
