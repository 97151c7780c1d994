"""A Toxiproxy 2.x-compatible server in pure asyncio, for machines without Docker or the Go binary.

Start it with ``python -m chaos.toxiproxy --host 127.0.0.1 --port 8474`` and drive it with any Toxiproxy client
(the chaos suite uses ``toxiproxy-python``). In-process: ``async with ToxiproxyServer("127.0.0.1", 0) as server:``
(then ``server.url``; ``server.proxies`` is the ProxyCollection).
"""

from .api import VERSION, ToxiproxyServer
from .collection import ProxyCollection

__all__ = ["VERSION", "ProxyCollection", "ToxiproxyServer"]
