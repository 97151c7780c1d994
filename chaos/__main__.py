"""``python -m chaos run --scenario NAME [--scenario NAME ...] --duration 300`` or ``--all``; ``python -m chaos list``.

Starts its own cluster (dev stack, Redis and PostgreSQL behind ``python -m chaos.toxiproxy``), or, with
``--base-url URL ... --toxiproxy-url URL --redis-proxy NAME --postgres-proxy NAME``, runs against a deployment
(scenarios that kill processes or touch the stores directly are skipped there, with the reason). Writes
``chaos-report/index.html`` and ``summary.json``, prints the table, exits 1 if a scenario failed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import httpx

from chaos import profile as profiles
from chaos import report
from chaos.cluster import ChaosCluster, ChaosTarget, deployment
from chaos.runner import run_scenario
from chaos.scenarios import BY_NAME, SCENARIOS


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m chaos", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the scenarios")
    run = sub.add_parser("run", help="run scenarios and write chaos-report/")
    run.add_argument("--scenario", action="append", default=[], choices=sorted(BY_NAME), help="repeatable")
    run.add_argument("--all", action="store_true", help="every scenario")
    run.add_argument("--duration", type=float, default=None, help="seconds per scenario (default: the quick profile)")
    run.add_argument("--report-dir", type=Path, default=Path("chaos-report"))
    run.add_argument("--base-url", action="append", default=[], help="a running gateway (repeatable)")
    run.add_argument("--toxiproxy-url", default="http://127.0.0.1:8474")
    run.add_argument("--redis-proxy", default="redis")
    run.add_argument("--postgres-proxy", default="postgres")
    run.add_argument("--seed", type=int, default=0)
    return parser


async def _run(args: argparse.Namespace) -> int:
    chosen = SCENARIOS if args.all else [BY_NAME[n] for n in args.scenario]
    if not chosen:
        print("name a --scenario or give --all", file=sys.stderr)
        return 2
    prof = profiles.QUICK if args.duration is None else profiles.long(args.duration)
    cluster: ChaosCluster | None = None
    if args.base_url:
        target: ChaosTarget = deployment(args.base_url, args.toxiproxy_url, args.redis_proxy, args.postgres_proxy)
    else:
        cluster = ChaosCluster()
        print(f"starting a cluster in {cluster.workdir} ...", flush=True)
        target = await asyncio.to_thread(cluster.start)
    results: list[report.Result] = []
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=32)
    try:
        async with httpx.AsyncClient(timeout=httpx.Timeout(10.0, connect=3.0), limits=limits) as http:
            for sc in chosen:
                print(f"[{sc.name}] {sc.row} ({prof.name}) ...", flush=True)
                await asyncio.to_thread(target.toxi.reset_sync)
                result = await run_scenario(sc, target, http, prof, seed=args.seed)
                results.append(result)
                print(f"[{sc.name}] {result.status} {result.reason}".rstrip(), flush=True)
                if result.status == "failed":
                    print(result.checker, flush=True)
                report.write(results, args.report_dir, f"notiflow chaos report ({prof.name})")
    finally:
        if cluster is not None:
            await asyncio.to_thread(cluster.stop)
    print(report.table(results))
    print(f"report: {args.report_dir / 'index.html'}")
    return 1 if any(r.status == "failed" for r in results) else 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "list":
        for sc in SCENARIOS:
            print(f"{sc.name:24} {sc.row}")
        return 0
    return asyncio.run(_run(args))


if __name__ == "__main__":
    sys.exit(main())
