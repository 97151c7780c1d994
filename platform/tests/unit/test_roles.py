"""Settings per role (roles.py): each view copies Settings fields of the same name and type, and is frozen."""

from __future__ import annotations

import base64
import dataclasses
import typing

import pytest
from pydantic import SecretStr

from notiflow import roles
from notiflow.config import Settings

VIEWS = [roles.GatewaySettings, roles.WorkerSettings, roles.WebhookSettings, roles.AuthSettings,
         roles.RetentionSettings]


def _settings_type(name: str) -> object:
    fields = Settings.model_fields
    if name in fields:
        return fields[name].annotation
    prop = getattr(Settings, name)  # a derived setting (a property of Settings)
    return typing.get_type_hints(prop.fget)["return"]


@pytest.mark.parametrize("cls", VIEWS, ids=lambda c: c.__name__)
def test_each_view_field_is_a_settings_field_of_the_same_type(cls: type) -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        assert hints[f.name] == _settings_type(f.name), f"{cls.__name__}.{f.name} differs from Settings'"


def test_a_view_carries_the_flat_settings_and_cannot_be_changed() -> None:
    secret = SecretStr("whsec_" + base64.b64encode(bytes(32)).decode())
    settings = Settings(ingest_burst=7, webhook_allowed_hosts=["a.example"], webhook_secret=secret, retention_days=3)
    gateway = roles.gateway(settings)
    assert (gateway.ingest_burst, gateway.webhook_allowed_hosts) == (7, ["a.example"])
    assert roles.retention(settings).retention_days == 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        gateway.ingest_burst = 8  # type: ignore[misc]
    gateway.webhook_allowed_hosts.append("b.example")
    assert settings.webhook_allowed_hosts == ["a.example"], "the view shares a list with the settings"


def test_a_view_holds_only_its_own_part() -> None:
    worker = roles.worker(Settings())
    assert not hasattr(worker, "jwt_secret") and not hasattr(worker, "database_url")
