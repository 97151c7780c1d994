"""The compose files: docker-compose.chaos.yml stays what the suite's --base-url mode expects (proxies named as
in the README, every notiflow process behind them, the suite's quick-recovery settings), and
docker-compose.yml keeps what operators need (generated passwords, nginx in front of the gateways, raised
`nofile`, worker healthchecks on /healthz, Prometheus and Grafana in a profile). Where the docker compose CLI is
installed, `docker compose config` must accept both, with and without the profile."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from chaos.cluster import QUICK_RECOVERY_ENV
from notiflow.config import Settings
from notiflow.gateway.openfiles import FD_RESERVE

ROOT = Path(__file__).resolve().parent.parent
BASE = ROOT / "docker-compose.yml"
COMPOSE = ROOT / "docker-compose.chaos.yml"
CLUSTER = ROOT / "docker-compose.cluster.yml"
#: Settings the compose file leaves to docker-compose.yml (log level, drain time) or cannot use (webhook sink).
_NOT_IN_COMPOSE = {"NOTIFLOW_LOG_LEVEL", "NOTIFLOW_SHUTDOWN_GRACE_S", "NOTIFLOW_WEBHOOK_TIMEOUT_S",
                   "NOTIFLOW_WEBHOOK_RETRY_RATE_PER_HOST"}  # fmt: skip
GATEWAYS = ("gateway-1", "gateway-2")
WORKERS = ("stream-worker", "retry-worker")
NOTIFLOW = ("migrate", "secrets", *GATEWAYS, *WORKERS)
PROFILE = "observability"


def _base() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(BASE.read_text())
    return doc


def _default(name: str) -> Any:
    return Settings.model_fields[name].default


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """target -> source of a service's volumes (short syntax)."""
    return {v.split(":")[1]: v.split(":")[0] for v in service.get("volumes", [])}


def test_the_chaos_compose_file_matches_the_suite() -> None:
    doc = yaml.safe_load(COMPOSE.read_text())
    proxies = json.loads(doc["configs"]["toxiproxy-proxies"]["content"])
    assert {p["name"] for p in proxies} == {"redis", "postgres"}  # the README's --redis-proxy / --postgres-proxy
    for name in ("migrate", "gateway-1", "gateway-2", "stream-worker", "retry-worker"):
        env = doc["services"][name]["environment"]
        assert "toxiproxy:" in env["NOTIFLOW_REDIS_URL"] and "toxiproxy:" in env["NOTIFLOW_DATABASE_URL"], name
        expected = {k: v for k, v in QUICK_RECOVERY_ENV.items() if k not in _NOT_IN_COMPOSE}
        assert {k: env.get(k) for k in expected} == expected, name


def _compose_cli() -> list[str] | None:
    """Docker Compose v2 (the plugin): the inline ``configs.content`` of the chaos file needs 2.23.1 or later."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True, check=False,
                                 timeout=30).returncode == 0:
        return [docker, "compose"]
    return None


@pytest.mark.parametrize("files", [[BASE], [BASE, COMPOSE], [BASE, CLUSTER]],
                         ids=["base", "with-chaos", "with-cluster"])
@pytest.mark.parametrize("profiles", [[], [PROFILE]], ids=["default", PROFILE])
def test_docker_compose_config_accepts_the_files(files: list[Path], profiles: list[str]) -> None:
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no docker compose CLI here; the structural checks in this file still ran")
    argv = [*cli, *(a for f in files for a in ("-f", str(f))), *(a for p in profiles for a in ("--profile", p)),
            "config", "--quiet"]
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr


def test_the_cluster_file_runs_every_process_on_a_formed_cluster() -> None:
    doc = yaml.safe_load(CLUSTER.read_text())
    nodes = [n for n in doc["services"] if re.fullmatch(r"redis-c\d", n)]
    assert len(nodes) == 6 and "--cluster-replicas 1" in " ".join(doc["services"]["redis-cluster-init"]["command"])
    for name in (*GATEWAYS, *WORKERS):
        service = doc["services"][name]
        env = service["environment"]
        assert env["NOTIFLOW_REDIS_CLUSTER"] == "true" and urlsplit(env["NOTIFLOW_REDIS_URL"]).hostname in nodes
        settings = Settings(redis_url=env["NOTIFLOW_REDIS_URL"], redis_cluster=True,
                            stream_partitions=int(env["NOTIFLOW_STREAM_PARTITIONS"]))
        assert settings.partitioned
        assert service["depends_on"]["redis-cluster-init"]["condition"] == "service_completed_successfully"


def test_every_reference_resolves() -> None:
    doc = _base()
    services, volumes = doc["services"], set(doc["volumes"])
    for name, service in services.items():
        for needed in service.get("depends_on", {}):
            assert needed in services, f"{name} depends on unknown {needed}"
        for source in _mounts(service).values():
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in volumes, f"{name} mounts undeclared volume {source}"


def test_no_password_is_written_down() -> None:
    for path in (BASE, COMPOSE):
        for name, service in yaml.safe_load(path.read_text())["services"].items():
            env = service.get("environment", {})
            assert "POSTGRES_PASSWORD" not in env, f"{path.name}: {name}"
            if "NOTIFLOW_DATABASE_URL" in env:
                assert urlsplit(env["NOTIFLOW_DATABASE_URL"]).password is None, f"{path.name}: {name}"
    services = _base()["services"]
    generated = _mounts(services["passwords"])
    [(folder, volume)] = generated.items()
    script = "\n".join(services["passwords"]["command"])
    for written in ("postgres_password", "pgpass", "grafana_admin_password"):
        assert written in script
    postgres = services["postgres"]
    assert postgres["environment"]["POSTGRES_PASSWORD_FILE"] == f"{folder}/postgres_password"
    assert _mounts(postgres)[folder] == volume
    assert postgres["depends_on"]["passwords"]["condition"] == "service_completed_successfully"
    for name in NOTIFLOW:
        service = services[name]
        assert service["environment"]["PGPASSFILE"] == f"{folder}/pgpass", name
        assert _mounts(service).get(folder) == volume or name == "secrets", name
    grafana = services["grafana"]
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD__FILE"] == f"{folder}/grafana_admin_password"


def test_nginx_balances_the_gateways_without_stickiness() -> None:
    services = _base()["services"]
    proxy = services["proxy"]
    conf_path = ROOT / next(s for t, s in _mounts(proxy).items() if t == "/etc/nginx/nginx.conf")
    conf = conf_path.read_text()
    upstream = re.search(r"upstream notiflow_gateways \{(.*?)\}", conf, re.S)
    assert upstream is not None
    servers = set(re.findall(r"^\s*server\s+(\S+?)[\s;]", upstream.group(1), re.M))
    port = int(services["gateway-1"]["environment"].get("NOTIFLOW_PORT", 8000))
    assert servers == {f"{g}:{port}" for g in GATEWAYS}
    assert not re.search(r"^\s*(ip_hash|hash|sticky)\b", upstream.group(1), re.M), "balancing must be sticky-free"
    assert "proxy_set_header Upgrade $http_upgrade;" in conf
    assert "proxy_set_header Connection $connection_upgrade;" in conf
    assert "proxy_http_version 1.1;" in conf
    listen = re.search(r"listen (\d+);", conf)
    assert listen is not None and any(p.endswith(f":{listen.group(1)}") for p in proxy["ports"])
    assert all(proxy["depends_on"][g]["condition"] == "service_healthy" for g in GATEWAYS)


def test_gateways_may_open_the_sockets_they_allow() -> None:
    services = _base()["services"]
    needed = _default("ws_max_sockets") + FD_RESERVE
    for name in GATEWAYS:
        nofile = services[name]["ulimits"]["nofile"]
        assert nofile["soft"] >= needed and nofile["hard"] >= nofile["soft"], name


def test_workers_are_health_checked_on_their_metrics_port() -> None:
    services = _base()["services"]
    for name in WORKERS:
        check = " ".join(services[name]["healthcheck"]["test"])
        assert f"127.0.0.1:{_default('metrics_port')}/healthz" in check, name


def test_prometheus_and_grafana_come_with_the_profile_and_load_the_dashboard() -> None:
    services = _base()["services"]
    assert {n for n, s in services.items() if s.get("profiles")} == {"prometheus", "grafana"}
    assert all(services[n]["profiles"] == [PROFILE] for n in ("prometheus", "grafana"))
    grafana = _mounts(services["grafana"])
    provisioning = ROOT / grafana["/etc/grafana/provisioning"]
    provider = yaml.safe_load((provisioning / "dashboards" / "notiflow.yml").read_text())["providers"][0]
    dashboards = {t: s for t, s in grafana.items() if t.startswith(provider["options"]["path"] + "/")}
    assert list(dashboards.values()) == ["./deploy/grafana/notiflow.json"]
    source = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"][0]
    assert urlsplit(source["url"]).hostname == "prometheus" and source["type"] == "prometheus"
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "notiflow.json").read_text())
    # Provisioning does not resolve __inputs: the dashboard's ${DS_PROMETHEUS} is a data source variable.
    assert any(v["name"] == "DS_PROMETHEUS" and v["type"] == "datasource" for v in dashboard["templating"]["list"])
    prometheus = yaml.safe_load((ROOT / _mounts(services["prometheus"])["/etc/prometheus/prometheus.yml"]).read_text())
    scraped = json.dumps(prometheus["scrape_configs"])
    for name in GATEWAYS:
        assert f"{name}:8000" in scraped
    metrics_port = _default("metrics_port")
    for name in WORKERS:
        assert f"{name}:{metrics_port}" in scraped or f'"names": ["{name}"]' in scraped, name
    assert f'"port": {metrics_port}' in scraped
