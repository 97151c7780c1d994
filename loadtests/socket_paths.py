"""A micro-measurement of the gateway's socket side: idle memory per socket and server CPU per frame fanned out,
with nothing else in the way (no stores, no stream worker).

Each run starts a server process that serves the gateway's own socket side (hub.py's ``Connection`` and ws.py's
ASGI sends; under uvicorn the same options as the gateway, from ``server_options``), opens ``--sockets`` client
sockets, reads the server's RSS before and after, then has it fan ``--notifications`` frames out to every socket
(in rounds of ``--round``, one loop iteration each, as Pub/Sub batches arrive) while each client acks every ten
frames it receives, and reads the server's CPU time until every frame has arrived. The servers alternate,
``--runs`` times each.

    python loadtests/socket_paths.py                          # uvicorn: 1,000 sockets, 100 notifications, 2 runs
    python loadtests/socket_paths.py --servers uvicorn,granian --runs 1   # granian: pip install granian

Loopback only. A micro-measurement: client and server share the machine, figures move with its load.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from functools import partial
from pathlib import Path
from typing import Any

FRAME = (
    '{{"type":"notification","id":"{id}","event":"order.shipped","payload":{{"order":"A-{i}","eta":"2d"}},'
    '"attempt":1,"created_at":"2026-01-01T00:00:00.000000Z"}}'
)


def app() -> Any:
    """The gateway's socket side alone, as an ASGI application (a factory: granian imports it by name)."""
    from starlette.websockets import WebSocket

    from notiflow.gateway.hub import Connection, Hub
    from notiflow.gateway.ws import _send, parse_client_frame

    hub = Hub()
    tasks: set[asyncio.Task[None]] = set()

    async def fan(rounds: int, per_round: int) -> None:
        for r in range(rounds):
            for i in range(per_round):
                frame = FRAME.format(id=uuid.uuid4(), i=r * per_round + i)
                for user in hub.users():
                    hub.push(user, frame)
            await asyncio.sleep(0)

    def on_text(text: str) -> None:
        if text.startswith("fan "):
            _, rounds, per_round = text.split()
            task = asyncio.create_task(fan(int(rounds), int(per_round)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        else:
            parse_client_frame(text)

    async def serve_socket(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        ws = WebSocket(scope, receive, send)
        await ws.accept()
        user = scope["path"].rsplit("/", 1)[-1]
        conn = Connection(user, 100_000, lambda _: None, partial(_send, send))
        hub.add(conn)
        try:  # past the handshake, frames go through ASGI's receive and send themselves, as ws.py has them
            while (message := await receive())["type"] != "websocket.disconnect":
                on_text(message["text"])
        finally:
            conn.stop()
            hub.remove(conn)

    return serve_socket


def _serve(port: int, ws: str | None) -> None:
    import uvicorn

    from notiflow.config import Settings
    from notiflow.gateway.app import server_options

    settings = Settings()
    options = {"http": "httptools", **server_options(settings)}  # the gateway's own options, as cli_run.py serves it
    if ws:
        options["ws"] = ws  # another of uvicorn's WebSocket implementations, for comparison
    config = uvicorn.Config(app(), host="127.0.0.1", port=port, loop="uvloop", log_config=None, backlog=4096,
                            **options)
    uvicorn.Server(config).run()


def _server_argv(server: str, port: int) -> list[str]:
    if server == "granian":  # measured for the evaluation (ASGI, 1 worker)
        return [str(Path(sys.executable).with_name("granian")), "--interface", "asgi", "--factory", "--host",
                "127.0.0.1", "--port", str(port), "--workers", "1", "--loop", "uvloop", "--log-level", "warning",
                "--working-dir", str(Path(__file__).parent), "socket_paths:app"]
    if ":" in server:  # uvicorn:<ws implementation>
        return [sys.executable, __file__, "--serve", "--port", str(port), "--ws", server.split(":", 1)[1]]
    return [sys.executable, __file__, "--serve", "--port", str(port)]


def _tree(pid: int) -> list[int]:
    """The process and its descendants (granian's worker is a child of its main process)."""
    pids = [pid]
    for p in pids:
        with contextlib.suppress(OSError), open(f"/proc/{p}/task/{p}/children") as f:
            pids.extend(int(c) for c in f.read().split())
    return pids


def _proc(pid: int) -> tuple[float, float]:
    """The RSS (kB) and CPU time (s, user + system) of the process and its descendants."""
    rss = cpu = 0.0
    for p in _tree(pid):
        with open(f"/proc/{p}/status") as f:
            rss += next(float(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        with open(f"/proc/{p}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        cpu += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return rss, cpu


async def _measure(proc: subprocess.Popen[bytes], port: int, args: argparse.Namespace) -> dict[str, Any]:
    from websockets.asyncio.client import connect

    base = f"ws://127.0.0.1:{port}/ws/"
    for _ in range(300):  # bounded wait for the port
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        with contextlib.suppress(OSError):
            async with connect(base + "probe", proxy=None):
                break
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)
    rss0, _ = _proc(proc.pid)
    socks = [await connect(base + f"u{i}", proxy=None, max_queue=None) for i in range(args.sockets)]
    await asyncio.sleep(1.0)
    rss1, cpu0 = _proc(proc.pid)
    expected = args.notifications
    t0 = time.perf_counter()

    async def read(ws: Any) -> None:
        got, ids = 0, []
        while got < expected:
            frame = json.loads(await ws.recv())
            got += 1
            ids.append(frame["id"])
            if len(ids) == args.ack_every:
                await ws.send(json.dumps({"type": "ack", "ids": ids}))
                ids = []

    readers = [asyncio.create_task(read(ws)) for ws in socks]
    await socks[0].send(f"fan {expected // args.round} {args.round}")
    await asyncio.wait_for(asyncio.gather(*readers), timeout=300)
    wall = time.perf_counter() - t0
    _, cpu1 = _proc(proc.pid)
    for ws in socks:
        await ws.close()
    frames = expected * args.sockets
    return {"idle_kb_per_socket": round((rss1 - rss0) / args.sockets, 2),
            "frames": frames, "server_cpu_s": round(cpu1 - cpu0, 3),
            "server_cpu_us_per_frame": round((cpu1 - cpu0) / frames * 1e6, 3), "wall_s": round(wall, 3)}


def _run(server: str, args: argparse.Namespace) -> dict[str, Any]:
    from notiflow.devstack import free_port

    port = free_port()
    proc = subprocess.Popen(_server_argv(server, port))
    try:
        return {"server": server, **asyncio.run(_measure(proc, port, args))}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--servers", default="uvicorn", help="uvicorn (the gateway's options), uvicorn:<ws implementation> "
                   "(websockets, wsproto: uvicorn's others) and/or granian, comma-separated")
    p.add_argument("--ack-every", type=int, default=10, help="each client acks every N frames it receives (default 10)")
    p.add_argument("--runs", type=int, default=2, help="runs of each server, alternating (default 2)")
    p.add_argument("--sockets", type=int, default=1000)
    p.add_argument("--notifications", type=int, default=100, help="frames per socket (default 100)")
    p.add_argument("--round", type=int, default=10, help="notifications fanned out per loop iteration")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--ws", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        _serve(args.port, args.ws)
        return
    results = []
    for _ in range(args.runs):
        for server in args.servers.split(","):
            result = _run(server, args)
            print(json.dumps(result), flush=True)
            results.append(result)


if __name__ == "__main__":
    main()
