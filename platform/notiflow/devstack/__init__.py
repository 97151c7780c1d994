"""Embedded Redis and PostgreSQL, a process supervisor, and the DevStack behind `notiflow dev` and the tests."""

from notiflow.devstack._proc import DevStackError, ephemeral_ports, free_port, free_port_range
from notiflow.devstack.dev import run_dev
from notiflow.devstack.embedded import EmbeddedPostgres, EmbeddedRedis, psql
from notiflow.devstack.stack import DevStack, migrate, settings_env
from notiflow.devstack.supervisor import ProcessSpec, Supervisor

__all__ = [
    "DevStack",
    "DevStackError",
    "EmbeddedPostgres",
    "EmbeddedRedis",
    "ProcessSpec",
    "Supervisor",
    "ephemeral_ports",
    "free_port",
    "free_port_range",
    "migrate",
    "psql",
    "run_dev",
    "settings_env",
]
