"""Settings: each process's model names what is missing; Hatchet's settings follow
the SDK's rules (claims from the token, overrides, namespace)."""

from __future__ import annotations

import jwt
import pytest

from hatchway.settings import HatchetSettings, RelaySettings, SettingsError, load

TENANT = "707d0855-80ab-4e1f-a156-f1c4546cbf52"


def token(**claims: str) -> str:
    return jwt.encode(
        {"sub": TENANT, "grpc_broadcast_address": "engine.example:443", **claims}, "k" * 32
    )


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "HATCHET_CLIENT_TOKEN",
        "HATCHET_CLIENT_HOST_PORT",
        "HATCHET_CLIENT_TENANT_ID",
        "HATCHET_CLIENT_NAMESPACE",
        "TABLE_NAME",
        "PAYLOAD_BUCKET",
        "RUN_QUEUE_URL",
        "AWS_ENDPOINT_URL_APIGATEWAYMANAGEMENTAPI",
    ):
        monkeypatch.delenv(name, raising=False)


def test_the_token_s_claims_give_the_address_and_tenant(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HATCHET_CLIENT_TOKEN", token())
    settings = load(HatchetSettings)
    assert settings.host_port == "engine.example:443"
    assert settings.tenant_id == TENANT
    assert settings.tls_strategy == "tls"


def test_host_port_and_tenant_override_the_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HATCHET_CLIENT_TOKEN", token())
    monkeypatch.setenv("HATCHET_CLIENT_HOST_PORT", "127.0.0.1:7077")
    monkeypatch.setenv("HATCHET_CLIENT_TENANT_ID", "other")
    settings = load(HatchetSettings)
    assert (settings.host_port, settings.tenant_id) == ("127.0.0.1:7077", "other")


def test_the_namespace_prefixes_workflow_names_as_the_sdk_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HATCHET_CLIENT_TOKEN", token())
    monkeypatch.setenv("HATCHET_CLIENT_NAMESPACE", "Team")
    settings = load(HatchetSettings)
    assert settings.workflow_name("demo-stream") == "team_demo-stream"
    assert settings.workflow_name("team_demo-stream") == "team_demo-stream"


def test_a_token_that_is_not_a_jwt_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HATCHET_CLIENT_TOKEN", "not-a-jwt")
    with pytest.raises(SettingsError, match="HATCHET_CLIENT_TOKEN is not a JWT"):
        load(HatchetSettings)


def test_every_missing_variable_of_a_process_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HATCHET_CLIENT_TOKEN", token())
    with pytest.raises(SettingsError) as raised:
        load(RelaySettings)
    message = str(raised.value)
    for name in (
        "TABLE_NAME",
        "PAYLOAD_BUCKET",
        "RUN_QUEUE_URL",
        "AWS_ENDPOINT_URL_APIGATEWAYMANAGEMENTAPI",
    ):
        assert f"{name} is required" in message
