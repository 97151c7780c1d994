"""Settings: every field documented (in code and in docs/contract.md), env parsing, and clear errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from notiflow.config import Settings

CONTRACT = Path(__file__).resolve().parents[3] / "docs" / "contract.md"


@pytest.mark.parametrize("name", sorted(Settings.model_fields))
def test_every_setting_is_documented(name: str) -> None:
    field = Settings.model_fields[name]
    assert field.description, f"{name} has no description"
    documented = CONTRACT.read_text(encoding="utf-8")
    assert f"NOTIFLOW_{name.upper()}" in documented, f"docs/contract.md lacks NOTIFLOW_{name.upper()}"


def test_csv_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFLOW_WEBHOOK_ALLOWED_HOSTS", " hooks.example , 127.0.0.1:9000,,")
    monkeypatch.setenv("NOTIFLOW_WEBHOOK_SECRET", "whsec_" + "A" * 32)
    monkeypatch.setenv("NOTIFLOW_ALLOWED_ORIGINS", "https://app.example, http://localhost:3000")
    monkeypatch.setenv("NOTIFLOW_MAX_RETRIES", "2")
    s = Settings()
    assert s.webhook_allowed_hosts == ["hooks.example", "127.0.0.1:9000"]
    assert s.allowed_origins == ["https://app.example", "http://localhost:3000"]
    assert s.max_retries == 2


def test_spec_defaults() -> None:
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert (s.host, s.port, s.max_retries, s.retry_base_ms, s.retry_cap_ms) == ("127.0.0.1", 8000, 5, 1000, 300_000)
    assert (s.presence_ttl_s, s.stream_max_backlog, s.webhook_allowed_hosts) == (15, 100_000, [])
    # Limits against abuse (issue 10): on by default.
    assert (s.ws_max_frame_bytes, s.ws_max_sockets_per_user, s.ws_permessage_deflate) == (64 * 1024, 10, False)
    assert (s.webhook_secret, s.webhook_allow_private, s.allowed_origins) == (None, False, [])


def test_bad_values_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFLOW_PORT", "not-a-port")
    with pytest.raises(ValidationError, match="port"):
        Settings()


def test_node_ids_are_unique_per_process_settings() -> None:
    assert Settings().node_id != Settings().node_id


def test_missing_store_urls_say_which() -> None:
    s = Settings(redis_url=None, database_url=None)
    with pytest.raises(RuntimeError, match="NOTIFLOW_REDIS_URL"):
        _ = s.redis_url_required
    with pytest.raises(RuntimeError, match="NOTIFLOW_DATABASE_URL"):
        _ = s.database_url_required


def test_a_gateway_with_webhooks_and_no_secret_refuses_to_start_and_prints_no_secret() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFLOW_")}
    for extra, expect in (
        ({"NOTIFLOW_WEBHOOK_ALLOWED_HOSTS": "hooks.example"}, "NOTIFLOW_WEBHOOK_SECRET is not"),
        ({"NOTIFLOW_WEBHOOK_ALLOWED_HOSTS": "hooks.example", "NOTIFLOW_WEBHOOK_SECRET": "hunter2-secret"}, "whsec_"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "notiflow", "gateway"], env={**env, **extra}, capture_output=True, text=True,
            timeout=60, stdin=subprocess.DEVNULL, check=False,
        )
        assert done.returncode == 2 and expect in done.stderr, done.stderr
        assert "hunter2" not in done.stderr + done.stdout
