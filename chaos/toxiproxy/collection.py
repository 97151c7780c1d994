"""Every proxy of the server, and the operations of the HTTP API on them, with Toxiproxy's checks and errors."""

from __future__ import annotations

import asyncio
from typing import Any

from .proxy import PROXY_EXISTS, PROXY_NOT_FOUND, ApiError, Proxy, resolve
from .toxics import STREAMS, TOXIC_TYPES, BadAttributes, ToxicSpec, parse_attributes

DEFAULT_LISTEN = "127.0.0.1:0"  # Toxiproxy's default is every interface; loopback is the safe one for a test tool


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ApiError(400, "bad request body: expected a JSON object")
    return body


def _string(body: dict[str, Any], key: str, default: str = "") -> str:
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise ApiError(400, f"bad request body: {key} must be a string")
    return value


def _bool(body: dict[str, Any], key: str, default: bool) -> bool:
    value = body.get(key, default)
    if not isinstance(value, bool):
        raise ApiError(400, f"bad request body: {key} must be true or false")
    return value


def _toxicity(body: dict[str, Any], default: float) -> float:
    value = body.get("toxicity", default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ApiError(400, "bad request body: toxicity must be a number from 0 to 1")
    return float(value)


def _required(body: dict[str, Any], key: str, where: str = "") -> str:
    value = _string(body, key)
    if not value:
        raise ApiError(400, f"missing required field: {key}{where}")
    return value


class ProxyCollection:
    def __init__(self) -> None:
        self.proxies: dict[str, Proxy] = {}
        self._lock = asyncio.Lock()  # proxies are created, replaced and deleted one request at a time

    def get(self, name: str) -> Proxy:
        try:
            return self.proxies[name]
        except KeyError:
            raise ApiError(*PROXY_NOT_FOUND) from None

    async def create(self, body: Any) -> Proxy:
        body = _object(body)
        name, upstream = _required(body, "name"), _required(body, "upstream")
        listen = _string(body, "listen") or DEFAULT_LISTEN
        enabled = _bool(body, "enabled", True)
        async with self._lock:
            if name in self.proxies:
                raise ApiError(*PROXY_EXISTS)
            proxy = Proxy(name, listen, upstream)
            if enabled:
                await proxy.start()
            self.proxies[name] = proxy
            return proxy

    async def populate(self, body: Any) -> tuple[list[Proxy], ApiError | None]:
        """Create or replace each proxy; one that already exists with the same listen and upstream is kept as is."""
        if not isinstance(body, list):
            raise ApiError(400, "bad request body: expected a JSON array of proxies")
        wanted = []
        for i, item in enumerate(body, start=1):
            item = _object(item)
            where = f" at proxy {i}"
            wanted.append(
                (
                    _required(item, "name", where),
                    _string(item, "listen") or DEFAULT_LISTEN,
                    _required(item, "upstream", where),
                    _bool(item, "enabled", True),
                )
            )
        done: list[Proxy] = []
        async with self._lock:
            for name, listen, upstream, enabled in wanted:
                try:
                    done.append(await self._add_or_replace(name, listen, upstream, enabled))
                except ApiError as exc:
                    return done, exc
        return done, None

    async def _add_or_replace(self, name: str, listen: str, upstream: str, enabled: bool) -> Proxy:
        existing = self.proxies.get(name)
        if existing is not None:
            if existing.listen == resolve(listen) and existing.upstream == upstream:
                return existing
            async with existing.lock:
                await existing.stop()
            del self.proxies[name]
        proxy = Proxy(name, listen, upstream)
        if enabled:
            await proxy.start()
        self.proxies[name] = proxy
        return proxy

    async def update(self, name: str, body: Any) -> Proxy:
        proxy = self.get(name)
        body = _object(body)
        async with proxy.lock:
            await proxy.update(
                _string(body, "listen", proxy.listen) or proxy.listen,
                _string(body, "upstream", proxy.upstream) or proxy.upstream,
                _bool(body, "enabled", proxy.enabled),
            )
        return proxy

    async def delete(self, name: str) -> None:
        async with self._lock:
            proxy = self.get(name)
            del self.proxies[name]
            async with proxy.lock:
                await proxy.stop()

    async def reset(self) -> None:
        for proxy in list(self.proxies.values()):
            async with proxy.lock:
                await proxy.reset()

    async def close(self) -> None:
        for proxy in list(self.proxies.values()):
            await proxy.stop()

    # Toxics ------------------------------------------------------------------------------------------------------

    async def add_toxic(self, name: str, body: Any) -> ToxicSpec:
        proxy = self.get(name)
        body = _object(body)
        toxic_type = _string(body, "type")
        stream = _string(body, "stream", "downstream") or "downstream"
        if stream not in STREAMS:
            raise ApiError(400, "stream was invalid, can be either upstream or downstream")
        if toxic_type not in TOXIC_TYPES:
            raise ApiError(400, "invalid toxic type")
        toxic_name = _string(body, "name") or f"{toxic_type}_{stream}"
        try:
            attributes = parse_attributes(toxic_type, body.get("attributes"))
        except BadAttributes as exc:
            raise ApiError(400, f"bad request body: {exc}") from exc
        spec = ToxicSpec(toxic_name, toxic_type, stream, _toxicity(body, 1.0), attributes)
        async with proxy.lock:
            await proxy.add_toxic(spec)
        return spec

    async def update_toxic(self, name: str, toxic_name: str, body: Any) -> ToxicSpec:
        proxy = self.get(name)
        spec = proxy.find_toxic(toxic_name)
        body = _object(body)
        try:
            attributes = parse_attributes(spec.type, body.get("attributes"), spec.attributes)
        except BadAttributes as exc:
            raise ApiError(400, f"bad request body: {exc}") from exc
        spec.toxicity = _toxicity(body, spec.toxicity)
        spec.attributes = attributes
        async with proxy.lock:
            await proxy.update_toxic(spec)
        return spec

    async def remove_toxic(self, name: str, toxic_name: str) -> None:
        proxy = self.get(name)
        async with proxy.lock:
            await proxy.remove_toxic(toxic_name)
