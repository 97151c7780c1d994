"""What an open socket keeps on its gateway (the idle memory per connection of issue 8): not FastAPI's
middleware stack and router, and no task of its own while idle. The socket is served ahead of them
(gateway/app.py: GatewayApp), so these tests also pin which paths reach it.

Memory itself is measured by the benchmark (``loadtests/bench.py``: kB per idle connection), not here."""

from __future__ import annotations

import asyncio

import pytest
from helpers import wait_for
from integration_support import Gateways, SocketFactory
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

pytestmark = pytest.mark.timeout(60)


async def test_only_the_socket_path_reaches_the_endpoint(gateways: Gateways, socket: SocketFactory) -> None:
    gateway = await gateways.start()
    base = f"ws://127.0.0.1:{gateway.settings.port}"
    for path in ("/ws/", "/ws/a/b", "/ws/footprint-2/", "/wsx/footprint-2", "/notifications"):
        with pytest.raises(InvalidStatus) as refused:
            async with connect(base + path, open_timeout=10, proxy=None):
                pass
        assert refused.value.response.status_code == 403, path
    await socket(gateway, "footprint-2")
    assert gateway.services.hub.size == 1


def _socket_tasks() -> list[str]:
    """The running tasks of the socket's own code (gateway/ws.py, gateway/hub.py), by coroutine name."""
    names = []
    for task in asyncio.all_tasks():
        code = getattr(task.get_coro(), "cr_code", None)
        if code is not None and code.co_filename.endswith(("gateway/ws.py", "gateway/hub.py")):
            names.append(code.co_qualname)
    return names


async def test_an_idle_socket_keeps_no_task_of_its_own(gateways: Gateways, socket: SocketFactory) -> None:
    """Beside the server's task that runs the socket's ASGI call (uvicorn's), an idle socket keeps none: on the
    ASGI path frames are sent from a task that lives while there are frames to send (2.5 kB per socket)."""
    gateway = await gateways.start()
    for i in range(3):
        await socket(gateway, f"footprint-idle-{i}")  # each answered a ping: frames were sent, and are done
    assert gateway.services.hub.size == 3
    await wait_for(lambda: _socket_tasks() == [], timeout_s=10, message=f"socket tasks left: {_socket_tasks()}")
