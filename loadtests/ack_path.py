"""A micro-measurement of the gateway's socket-ack path in Python alone: CPU per ack frame from the frame's text to
its settlement, with PostgreSQL left out.

What runs is the gateway's own code: ws.py's ``_Reader`` (parse, checks, the in-flight bound), QueryService's group
commit of socket acks, the hand-off log's settle, and each frame's settlement (the in-flight count, the ``acked``
answer to a frame with a ref). The store is a stand-in that answers the ack statement at once; everything before and
after the statement is real. ``--sockets`` readers each send one ack frame of ``--ids`` ids per round (the harness's
clients send the ids they received every 20 ms: at 20 notifications a second, one id per frame), for ``--rounds``
rounds; a round ends when every frame of it is settled. Prints process CPU per ack frame, best and median of
``--repeat`` runs.

    python loadtests/ack_path.py                        # 1,000 sockets, 1 id per frame, 50 rounds, 5 runs
    python loadtests/ack_path.py --ids 5 --ref          # five ids per frame, each frame asking for an answer
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

from notiflow import roles
from notiflow.config import Settings
from notiflow.gateway.hub import Connection
from notiflow.gateway.ws import _Reader
from notiflow.service.dispatch_log import DispatchLog
from notiflow.service.queries import QueryService


class _Conn:
    """Answers the socket ack statement at once: the number of pairs it was given."""

    async def fetchval(self, sql: str, *args: Any) -> int:
        return args[1].count(",") + 1  # ack_pairs: (users, ids joined by commas, separator)


class _Pool:
    def __init__(self) -> None:
        self._conn = _Conn()

    @contextlib.asynccontextmanager
    async def acquire(self, *, timeout: float | None = None) -> AsyncIterator[Any]:  # noqa: ASYNC109
        yield self._conn


async def _run(args: argparse.Namespace) -> float:
    settings = roles.gateway(Settings(ws_ack_gather_ms=args.gather_ms))
    pool: Any = _Pool()
    handoffs = DispatchLog(pool, 3600.0)  # never written here: every pushed frame is settled by its ack
    svc = QueryService(settings=settings, pool=pool, work=None, handoffs=handoffs)  # type: ignore[arg-type]
    svc.start()
    answered = 0

    async def send(frames: list[str]) -> bool:
        nonlocal answered
        answered += len(frames)
        return True

    conns = [Connection(f"u{i}", 1000, lambda code: None, send) for i in range(args.sockets)]
    readers = [_Reader(c, svc.ack_from_socket, 1000, 10_000) for c in conns]
    ref = ',"ref":1' if args.ref else ""
    ids = [[[str(uuid.uuid4()) for _ in range(args.ids)] for _ in range(args.rounds)] for _ in conns]
    for c, own in zip(conns, ids, strict=True):  # what the node pushed: each ack settles its hand-offs
        handoffs.add([(c.user_id, nid) for frame in own for nid in frame], "dispatched")
    quoted = (",".join(f'"{nid}"' for nid in frame) for own in ids for frame in own)
    texts = iter([f'{{"type":"ack","ids":[{q}]{ref}}}' for q in quoted])
    frames = [[next(texts) for _ in range(args.rounds)] for _ in conns]
    start = time.process_time()
    for r in range(args.rounds):
        for reader, own in zip(readers, frames, strict=True):
            reader(own[r])
        # Groups are flushed and settled in order: when this one is settled, every frame of the round is.
        last: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        svc.ack_from_socket("sentinel", [str(uuid.uuid4())], last.set_result)
        await last
    assert not any(c.acks_in_flight for c in conns)
    cpu = time.process_time() - start
    await svc.close(1.0)
    assert answered == (args.rounds * args.sockets if args.ref else 0), answered
    return cpu / (args.rounds * args.sockets) * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sockets", type=int, default=1000)
    p.add_argument("--ids", type=int, default=1, help="ids per ack frame (default 1)")
    p.add_argument("--rounds", type=int, default=50, help="ack frames per socket (default 50)")
    p.add_argument("--ref", action="store_true", help="every frame carries a ref (answered with 'acked')")
    p.add_argument("--gather-ms", type=int, default=0, help="NOTIFLOW_WS_ACK_GATHER_MS (default 0: CPU only)")
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    import uvloop  # the gateway's loop (cli_run.py)

    runs = [uvloop.run(_run(args)) for _ in range(args.repeat)]
    ref = " with ref" if args.ref else ""
    print(f"ack path: {args.sockets} sockets x {args.rounds} frames of {args.ids} id(s){ref}:"
          f" CPU us per ack frame best {min(runs):.2f}, median {statistics.median(runs):.2f}"
          f" (runs: {', '.join(f'{r:.2f}' for r in runs)})")


if __name__ == "__main__":
    main()
