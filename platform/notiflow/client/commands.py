"""The commands for people: ``notiflow send``, ``notiflow tail``, ``notiflow stats`` (parsed in cli.py,
which owns the signals and hands ``tail`` its stop event).

``tail`` prints each notification as one JSON line, acknowledges it once printed, and keeps the seq up
to which everything was printed in a small state file, so that a restarted ``tail`` goes on where the
last one stopped: ``$XDG_STATE_HOME/notiflow/tail-<user>-<hash of the URLs>.json`` (XDG_STATE_HOME
defaults to ``~/.local/state``), or ``--state-file PATH``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import orjson
from prometheus_client.parser import text_string_to_metric_families

from notiflow.client.core import NotiflowClient
from notiflow.client.tracker import SeenTracker
from notiflow.client.types import ClientError, Notification


def _headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


async def send(url: str, user_id: str, event: str, payload: str | None, token: str | None) -> int:
    """POST one notification; prints the answer. 0 on 202, 1 on an error answer, 2 on bad input."""
    try:
        body = {"user_id": user_id, "event": event, "payload": orjson.loads(payload) if payload else {}}
    except orjson.JSONDecodeError as exc:
        print(f"notiflow send: the payload is not JSON: {exc}", file=sys.stderr)
        return 2
    async with httpx.AsyncClient(timeout=30.0) as http:
        try:
            resp = await http.post(f"{url.rstrip('/')}/notifications", json=body, headers=_headers(token))
        except httpx.HTTPError as exc:
            print(f"notiflow send: {url}: {exc!r}", file=sys.stderr)
            return 1
    print(resp.text, file=sys.stdout if resp.status_code == 202 else sys.stderr)
    return 0 if resp.status_code == 202 else 1


def state_path(user_id: str, urls: Sequence[str]) -> Path:
    """Where ``tail`` keeps its resume point by default."""
    root = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "notiflow"
    tag = hashlib.sha256(",".join(sorted(urls)).encode()).hexdigest()[:8]
    return root / f"tail-{quote(user_id, safe='')}-{tag}.json"


def _read_state(path: Path) -> int:
    try:
        return int(orjson.loads(path.read_bytes())["after_seq"])
    except FileNotFoundError:
        return 0
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        print(f"notiflow tail: ignoring the unreadable state file {path}", file=sys.stderr)
        return 0


def _write_state(path: Path, user_id: str, after_seq: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(orjson.dumps({"user_id": user_id, "after_seq": after_seq}))
    os.replace(tmp, path)  # atomic: a kill mid-write leaves the old point, never half a file


async def tail(urls: Sequence[str], user_id: str, token: str | None, state: Path | None, stop: asyncio.Event) -> int:
    """Print ``user_id``'s notifications as JSON lines until ``stop``; resume from the state file."""
    path = state or state_path(user_id, urls)
    printed = SeenTracker(_read_state(path))

    def taken(n: Notification) -> None:
        before = printed.watermark
        printed.add(n["id"], n["seq"])
        if printed.watermark != before:
            _write_state(path, user_id, printed.watermark)

    try:
        async with NotiflowClient(urls, user_id, token, after_seq=printed.watermark, on_taken=taken) as client:
            stopping = asyncio.ensure_future(stop.wait())
            try:
                while True:
                    nxt = asyncio.ensure_future(anext(client))
                    await asyncio.wait([nxt, stopping], return_when=asyncio.FIRST_COMPLETED)
                    if not nxt.done():
                        nxt.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await nxt
                        return 0
                    sys.stdout.write(orjson.dumps(nxt.result()).decode() + "\n")
                    sys.stdout.flush()
            finally:
                stopping.cancel()
    except ClientError as exc:
        print(f"notiflow tail: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `notiflow tail alice | head`: the reader left
        return 0


# Shown first, in this order, when present; every other notiflow_* family follows.
_FIRST = (
    "notiflow_notifications_accepted", "notiflow_notifications_rejected", "notiflow_notifications_refused",
    "notiflow_ingest_seconds", "notiflow_delivery_latency_seconds", "notiflow_websockets", "notiflow_users",
    "notiflow_ws_frames_sent", "notiflow_acks", "notiflow_stream_length", "notiflow_stream_pending",
    "notiflow_consumer_lag", "notiflow_retry_depth", "notiflow_dlq_size",
)


def _quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus' histogram_quantile over cumulative (upper bound, count) buckets."""
    buckets.sort()
    total = buckets[-1][1] if buckets else 0
    if not total:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * ((rank - below) / (count - below) if count > below else 0)
        lower, below = bound, count
    return lower


def summarise(text: str) -> dict[str, Any]:
    """The key figures of a /metrics page: a counter or gauge is summed over its labels, a histogram is
    its count with p50 and p99. Unknown families are kept (names change as metrics are added)."""
    out: dict[str, Any] = {}
    for family in text_string_to_metric_families(text):
        # The text format exposes a counter's creation time as a gauge of its own: not a figure.
        if not family.name.startswith("notiflow_") or family.name.endswith("_created"):
            continue
        if family.type == "histogram":
            buckets: dict[float, float] = {}
            count = 0.0
            for s in family.samples:
                if s.name.endswith("_bucket"):
                    bound = float(s.labels["le"])
                    buckets[bound] = buckets.get(bound, 0.0) + s.value
                elif s.name.endswith("_count"):
                    count += s.value
            pairs = list(buckets.items())
            out[family.name] = {"count": count, "p50": _quantile(0.5, pairs), "p99": _quantile(0.99, pairs)}
        elif family.type in ("counter", "gauge", "untyped"):
            values = [s.value for s in family.samples if not s.name.endswith("_created")]
            out[family.name] = sum(values)
    first = [k for k in _FIRST if k in out]
    return {k: out[k] for k in [*first, *sorted(set(out) - set(first))]}


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def _fmt(value: Any) -> str:
    if isinstance(value, dict):
        return f"count {value['count']:.0f}  p50 {_ms(value['p50'])}  p99 {_ms(value['p99'])}"
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.3f}"


def render(figures: dict[str, Any]) -> Iterable[str]:
    width = max((len(k) for k in figures), default=0) - len("notiflow_")
    for name, value in figures.items():
        yield f"{name.removeprefix('notiflow_'):<{width}}  {_fmt(value)}"


async def stats(urls: Sequence[str], token: str | None, as_json: bool) -> int:
    """Print the key figures of each gateway's /metrics."""
    code = 0
    async with httpx.AsyncClient(timeout=10.0) as http:
        for url in urls:
            try:
                resp = await http.get(f"{url.rstrip('/')}/metrics", headers=_headers(token))
                resp.raise_for_status()
            except httpx.HTTPError as exc:
                print(f"notiflow stats: {url}: {exc!r}", file=sys.stderr)
                code = 1
                continue
            figures = summarise(resp.text)
            if as_json:
                print(orjson.dumps({"url": url, "metrics": figures}).decode())
            else:
                print(f"{url}\n" + "\n".join(f"  {line}" for line in render(figures)))
    return code
