"""Hostile input never gets a 5xx, and every answer matches the OpenAPI schema (issue 10).

schemathesis generates requests from the gateway's own ``/openapi.json`` (valid ones and invalid ones:
wrong types, out-of-range numbers, odd strings, NUL bytes, missing and extra fields; then sequences of
calls that reuse returned ids) against a real gateway on the session's Redis and PostgreSQL, and checks
each answer: no 5xx, a documented status and content type, a body and headers that match the schema,
and invalid input refused. The number of examples is bounded so that this stays a few seconds of
`make test`; SCHEMATHESIS_MAX_EXAMPLES and SCHEMATHESIS_SEED explore further.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from notiflow.devstack import DevStack

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
    "negative_data_rejection",
)
MAX_EXAMPLES = int(os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "25"))
#: An accepted GET /sse never ends (it is a stream): its answers are checked by test_sse.py instead.
STREAMS = ("/sse/{user_id}",)
SEED = os.environ.get("SCHEMATHESIS_SEED", "20261201")  # fixed: make test is reproducible; change it to explore


@pytest.mark.timeout(300)
def test_generated_requests_get_no_5xx_and_every_answer_matches_the_schema(
    stack: Callable[..., DevStack], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dev = stack(gateways=1, stream_workers=1, retry_workers=0)
    report_dir = tmp_path / "schemathesis"
    argv = [
        str(SCHEMATHESIS), "run", f"{dev.gateway_urls[0]}/openapi.json", "--checks", ",".join(CHECKS),
        "--max-examples", str(MAX_EXAMPLES), "--seed", SEED, "--workers", "1", "--request-timeout", "15",
        "--no-color", "--report", "json", "--report-dir", str(report_dir),
        *(arg for path in STREAMS for arg in ("--exclude-path", path)),
    ]  # fmt: skip
    # cwd: schemathesis keeps a cache directory where it runs.
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=280, stdin=subprocess.DEVNULL, check=False, cwd=tmp_path
    )
    reports = sorted(report_dir.glob("*.json"))
    assert reports, f"no schemathesis report (exit {done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-2000:]}"
    report = json.loads(reports[-1].read_text())
    ops, cases = report["operations"], report["test_cases"]
    summary = (
        f"schemathesis (seed {SEED}): {ops['tested']}/{ops['total']} operations, {cases['generated']} examples, "
        f"{cases['unique_failures']} failures, {len(report['errors'])} errors"
    )
    with capsys.disabled():
        print(f"\n{summary}")
    assert done.returncode == 0 and not report["failures"] and not report["errors"], (
        f"{summary}\n{done.stdout[-6000:]}"
    )
    assert ops["tested"] == ops["total"] - len(STREAMS) >= 10, summary
