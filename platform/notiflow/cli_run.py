"""The commands that run until they are stopped: gateway, stream-worker, retry-worker, dev, and the client's
(tail; send and stats share its entry). Signal handling lives only here: SIGINT and SIGTERM set the one event a
command's main loop waits on.

Also here: the collector's tuning for servers, and several copies of one command (processes.py, fanin.py).
cli.py parses the command line and calls these.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import threading
from collections.abc import Awaitable, Callable, Iterator

from notiflow import metrics
from notiflow.config import Settings
from notiflow.health import Health

log = logging.getLogger("notiflow")

# `notiflow dev` defaults, measured on a 2-core machine with the load generator on it too (README, Performance).
DEV_GATEWAY_PROCESSES = 2
DEV_STREAM_WORKER_PROCESSES = 1


@contextlib.contextmanager
def _stop_on_signals(loop: asyncio.AbstractEventLoop, on_stop: Callable[[], None]) -> Iterator[None]:
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_stop)
    try:
        yield
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


# CPython's default collector thresholds (700, 10, 10) suit short scripts, not a server that allocates a
# frame, a future and a few tuples per delivery. Measured in the peers' harness (paced 20,000 deliveries/s),
# each gateway process spent about 2.2 s of a 5.5 s run in 700 generation-0, 64 generation-1 and 6 full
# collections (about 250 ms each over 230,000 tracked objects, a stall every time), p99 1.7 s. With the
# start-up objects frozen and a generation 0 of 20,000 allocations: 0.1-0.17 s, p99 0.5-1.0 s. Most of what a
# delivery allocates is freed by reference counting; cycles are still collected, only less often.
GC_THRESHOLDS = (20_000, 10, 10)


def _tune_gc() -> None:
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _run_async(main: Callable[[asyncio.Event], Awaitable[None]]) -> int:
    async def runner() -> None:
        _tune_gc()
        stop = asyncio.Event()
        with _stop_on_signals(asyncio.get_running_loop(), stop.set):
            await main(stop)

    try:
        import uvloop

        uvloop.run(runner())
    except ImportError:
        asyncio.run(runner())
    return 0


def _without(argv: list[str], flag: str) -> list[str]:
    """``argv`` less ``flag`` and its value (``--flag V`` or ``--flag=V``)."""
    return [a for i, a in enumerate(argv)
            if a != flag and not a.startswith(f"{flag}=") and (i == 0 or argv[i - 1] != flag)]


def _copies(command: str, argv: list[str], count: int, settings: Settings, *extra: str) -> int:
    """Run ``count`` single-process copies of this command (see processes.py), and serve their metrics (and a
    worker's /healthz) together on NOTIFLOW_METRICS_PORT, each copy's labelled (fanin.py)."""
    from notiflow.fanin import Copies, CopiesHealth, copies_registry
    from notiflow.processes import run_copies

    flags = _without(_without(argv, "--processes"), "--metrics-port")
    rest = flags[flags.index(command) + 1 :]
    log.info("starting process copies", extra={"command": command, "copies": count})
    copies = Copies(settings.host, settings.metrics_port, count)
    health = None if command == "gateway" else CopiesHealth(copies)
    with metrics.serve(settings.host, settings.metrics_port, health, copies_registry(copies)):
        return run_copies([command, *rest, "--processes", "1", *extra], count, settings.node_id,
                          settings.metrics_port)


def _reuse_port_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(4096)
    sock.set_inheritable(True)
    return sock


def cmd_gateway(settings: Settings, argv: list[str], reuse_port: bool) -> int:
    if settings.gateway_processes > 1:
        return _copies("gateway", argv, settings.gateway_processes, settings, "--reuse-port")

    import uvicorn

    from notiflow.gateway.app import create_app, server_options, stop_serving

    app = create_app(settings)
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, loop="uvloop",
        **server_options(settings),
        log_config=None, timeout_graceful_shutdown=int(settings.shutdown_grace_s), backlog=4096,
    )
    sockets = [_reuse_port_socket(settings.host, settings.port)] if reuse_port else None

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:  # signals are ours (set below), not uvicorn's
            yield

    server = Server(config)

    async def main(stop: asyncio.Event) -> None:
        serving = asyncio.create_task(server.serve(sockets=sockets))
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait([serving, stopping], return_when=asyncio.FIRST_COMPLETED)
        stop_serving(app, server)  # the grace period starts: requests in flight, then the drains
        await serving
        stopping.cancel()

    # A copy behind SO_REUSEPORT also serves its own registry on its own port, for its parent (fanin.py).
    with metrics.serve(settings.host, settings.metrics_port if reuse_port else 0):
        _run_async(main)
    # uvicorn returns quietly when the lifespan failed (e.g. auth not configured, already logged).
    return 0 if server.started else 1


def cmd_stream_worker(settings: Settings, argv: list[str]) -> int:
    if settings.stream_worker_processes > 1:
        return _copies("stream-worker", argv, settings.stream_worker_processes, settings)

    from notiflow.worker.factory import stream_worker

    health = Health()

    async def main(stop: asyncio.Event) -> None:
        async with stream_worker(settings, health=health) as worker:
            log.info("stream worker started", extra={"consumer": settings.node_id})
            await worker.run(stop)

    with metrics.serve(settings.host, settings.metrics_port, health):
        return _run_async(main)


def cmd_retry_worker(settings: Settings) -> int:
    from notiflow.worker.factory import retry_worker

    health = Health()

    async def main(stop: asyncio.Event) -> None:
        async with retry_worker(settings, health=health) as worker:
            log.info("retry worker started")
            await worker.run(stop)

    with metrics.serve(settings.host, settings.metrics_port, health):
        return _run_async(main)


def cmd_dev(settings: Settings, args: argparse.Namespace) -> int:
    from notiflow.devstack import run_dev

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    # A flag, else the environment, else the defaults measured for one machine.
    chosen = {
        "gateway_processes": (args.gateway_processes, "NOTIFLOW_GATEWAY_PROCESSES", DEV_GATEWAY_PROCESSES),
        "stream_worker_processes": (
            args.stream_worker_processes, "NOTIFLOW_STREAM_WORKER_PROCESSES", DEV_STREAM_WORKER_PROCESSES
        ),
    }
    settings = settings.model_copy(update={
        name: flag if flag is not None else (getattr(settings, name) if env in os.environ else default)
        for name, (flag, env, default) in chosen.items()
    })
    return run_dev(settings, gateways=args.gateways, stream_workers=args.stream_workers,
                   retry_workers=args.retry_workers, stop=stop, auth=args.auth, redis_cluster=args.redis_cluster)


def cmd_client(settings: Settings, args: argparse.Namespace) -> int:
    from notiflow.client import commands

    urls = args.urls or [f"http://{settings.host}:{settings.port}"]
    if args.command == "send":
        return asyncio.run(commands.send(urls[0], args.user_id, args.event, args.payload, args.token))
    if args.command == "stats":
        return asyncio.run(commands.stats(urls, args.token, args.json))
    code = 0

    async def tail(stop: asyncio.Event) -> None:
        nonlocal code
        code = await commands.tail(urls, args.user_id, args.token, args.state_file, stop)

    _run_async(tail)
    return code
