"""The live dashboard: one self-contained page (inline CSS and JS, no CDN, no build step) and the JSON
it polls every second. Operators only: both routes need the ``admin`` scope (SPEC §7); a browser passes
the key as ``?token=`` to the page only, and the page sends it as a header on its own requests. Its replay
buttons use the /dlq endpoints. Its Content-Security-Policy admits its own inline script by hash (middleware.py)."""

from __future__ import annotations

from functools import cache
from importlib import resources

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, Response

from notiflow.credentials import Scope
from notiflow.gateway.auth import require_scope
from notiflow.gateway.deps import services
from notiflow.gateway.http import JSON

router = APIRouter(tags=["operators"])


@cache
def page() -> str:
    return resources.files("notiflow.gateway").joinpath("static/dashboard.html").read_text(encoding="utf-8")


# The page is opened by its address, so its key may come as ?token= (and nowhere else, SPEC §7); the page
# takes it out of the address bar and sends it as a header from then on.
@router.get("/dashboard", response_class=HTMLResponse, summary="Live dashboard (HTML)",
            dependencies=[Depends(require_scope(Scope.ADMIN, query_token=True))])
async def dashboard() -> Response:
    return HTMLResponse(page(), headers={"cache-control": "no-store"})


@router.get(
    "/dashboard/stats",
    dependencies=[Depends(require_scope(Scope.ADMIN))],
    summary="Figures of the live dashboard",
    description="Totals since each process started (accepted, frames sent, acks, ...), summed over every node "
    "that published within the stats TTL; cumulative delivery-latency buckets; the store gauges; the gateways' "
    "sockets and users; the first DLQ entries and the last errors. Rates come from two consecutive answers.",
)
async def dashboard_stats(request: Request) -> Response:
    return JSON(await services(request).dashboard.stats(), headers={"cache-control": "no-store"})
