"""The one way this suite talks to Toxiproxy (ours or a real one): the ``toxiproxy-python`` client.

The client is synchronous (requests) and keeps its server address in a class attribute; every call here runs
in a thread, so the scenario's event loop keeps serving its sockets while a fault is switched.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any
from urllib.parse import urlsplit

from toxiproxy import Toxiproxy
from toxiproxy.proxy import Proxy

_lock = threading.Lock()


class Toxi:
    """A Toxiproxy server at ``url`` (``http://127.0.0.1:8474``)."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        self.url = url
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 8474

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        with _lock:  # the client's address is process-wide: one server per call
            Toxiproxy().update_api_consumer(self.host, self.port)
            return fn(*args, **kwargs)

    def _proxy(self, name: str) -> Proxy:
        proxy = Toxiproxy().get_proxy(name)
        if proxy is None:
            raise LookupError(f"Toxiproxy at {self.url} has no proxy {name!r}")
        return proxy

    # --- synchronous (set-up) -----------------------------------------------------------------
    def create_sync(self, name: str, *, listen: str, upstream: str) -> None:
        self._call(lambda: Toxiproxy().create(upstream=upstream, name=name, listen=listen, enabled=True))

    def proxies_sync(self) -> dict[str, Proxy]:
        result: dict[str, Proxy] = self._call(lambda: Toxiproxy().proxies())
        return result

    def reset_sync(self) -> None:
        self._call(lambda: Toxiproxy().reset())

    # --- from a scenario ------------------------------------------------------------------------
    async def add_toxic(
        self, proxy: str, name: str, kind: str, attributes: dict[str, Any], *, stream: str = "downstream",
        toxicity: float = 1.0,
    ) -> None:  # fmt: skip
        def add() -> None:
            self._proxy(proxy).add_toxic(
                name=name, type=kind, stream=stream, toxicity=toxicity, attributes=attributes
            )

        await asyncio.to_thread(self._call, add)

    async def remove_toxic(self, proxy: str, name: str) -> None:
        def remove() -> None:
            p = self._proxy(proxy)
            if p.get_toxic(name) is not None:
                p.destroy_toxic(name)

        await asyncio.to_thread(self._call, remove)

    async def set_enabled(self, proxy: str, enabled: bool) -> None:
        def switch() -> None:
            p = self._proxy(proxy)
            p.enable() if enabled else p.disable()

        await asyncio.to_thread(self._call, switch)

    async def toxics(self, proxy: str) -> dict[str, Any]:
        found: dict[str, Any] = await asyncio.to_thread(self._call, lambda: self._proxy(proxy).toxics())
        return found

    async def reset(self) -> None:
        await asyncio.to_thread(self.reset_sync)
