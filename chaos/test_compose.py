"""docker-compose.chaos.yml stays what the suite's --base-url mode expects: proxies named as in the README,
every notiflow process behind them, and the suite's quick-recovery settings (so its bounds mean the same)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from chaos.cluster import QUICK_RECOVERY_ENV

COMPOSE = Path(__file__).resolve().parent.parent / "docker-compose.chaos.yml"
#: Settings the compose file leaves to docker-compose.yml (log level, drain time) or cannot use (webhook sink).
_NOT_IN_COMPOSE = {"NOTIFLOW_LOG_LEVEL", "NOTIFLOW_SHUTDOWN_GRACE_S", "NOTIFLOW_WEBHOOK_TIMEOUT_S",
                   "NOTIFLOW_WEBHOOK_RETRY_RATE_PER_HOST"}  # fmt: skip


def test_the_chaos_compose_file_matches_the_suite() -> None:
    doc = yaml.safe_load(COMPOSE.read_text())
    proxies = json.loads(doc["configs"]["toxiproxy-proxies"]["content"])
    assert {p["name"] for p in proxies} == {"redis", "postgres"}  # the README's --redis-proxy / --postgres-proxy
    for name in ("migrate", "gateway-1", "gateway-2", "stream-worker", "retry-worker"):
        env = doc["services"][name]["environment"]
        assert "toxiproxy:" in env["NOTIFLOW_REDIS_URL"] and "toxiproxy:" in env["NOTIFLOW_DATABASE_URL"], name
        expected = {k: v for k, v in QUICK_RECOVERY_ENV.items() if k not in _NOT_IN_COMPOSE}
        assert {k: env.get(k) for k in expected} == expected, name
