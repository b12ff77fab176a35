"""hatchway.secrets_manager on moto's Secrets Manager (server mode, real boto3 over
HTTP): the Hatchet token is read from its secret at start, a secret that cannot be
read stops the process naming the variable, and the run-token key ring follows a
rotation through the AWSCURRENT, AWSPENDING and AWSPREVIOUS stages."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import jwt
import pytest

from hatchway import wiring
from hatchway.protocol import ProtocolError
from hatchway.secrets_manager import CachedSecretStages, SecretError, read_secret
from hatchway.settings import AuthorizerSettings, HatchetSettings, SettingsError, load
from hatchway.tokens import RunTokens, secret_key_ring
from hatchway_local.aws import CREDENTIALS, REGION, MotoServer

pytestmark = pytest.mark.functional

HATCHET_TOKEN = jwt.encode(
    {"sub": "tenant-1", "grpc_broadcast_address": "engine.example:443"}, "k" * 32
)


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    server = MotoServer()
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def secrets(moto_url: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A secretsmanager client on moto; the process's own clients reach it too."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_url)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", CREDENTIALS["aws_access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", CREDENTIALS["aws_secret_access_key"])
    for name in ("HATCHET_CLIENT_TOKEN", "HATCHET_CLIENT_TOKEN_SECRET_ARN", "TOKEN_SIGNING_KEY"):
        monkeypatch.delenv(name, raising=False)
    return boto3.client("secretsmanager", endpoint_url=moto_url, region_name=REGION, **CREDENTIALS)


def create_secret(secrets: Any, value: str) -> str:
    created = secrets.create_secret(Name=f"test/{uuid.uuid4()}", SecretString=value)
    return str(created["ARN"])


def missing_arn() -> str:
    return f"arn:aws:secretsmanager:{REGION}:123456789012:secret:nope-{uuid.uuid4().hex[:6]}"


# -- the Hatchet token ------------------------------------------------------------------


def test_the_hatchet_token_comes_from_its_secret(
    secrets: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HATCHET_CLIENT_TOKEN_SECRET_ARN", create_secret(secrets, HATCHET_TOKEN))
    settings = load(HatchetSettings)
    assert settings.token == HATCHET_TOKEN
    assert (settings.host_port, settings.tenant_id) == ("engine.example:443", "tenant-1")


def test_a_token_in_the_environment_is_used_as_it_is(
    secrets: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The local stack and workers: HATCHET_CLIENT_TOKEN, no secret read."""
    monkeypatch.setenv("HATCHET_CLIENT_TOKEN", HATCHET_TOKEN)
    monkeypatch.setenv("HATCHET_CLIENT_TOKEN_SECRET_ARN", missing_arn())
    assert load(HatchetSettings).token == HATCHET_TOKEN


def test_a_missing_secret_stops_the_process_naming_the_variable(
    secrets: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    arn = missing_arn()
    monkeypatch.setenv("HATCHET_CLIENT_TOKEN_SECRET_ARN", arn)
    with pytest.raises(SettingsError) as raised:
        load(HatchetSettings)
    message = str(raised.value)
    assert "HATCHET_CLIENT_TOKEN_SECRET_ARN" in message
    assert arn in message
    assert "ResourceNotFoundException" in message


def test_an_unreachable_secrets_manager_stops_the_process_naming_the_variable(
    secrets: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # discard: nothing listens
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("HATCHET_CLIENT_TOKEN_SECRET_ARN", missing_arn())
    with pytest.raises(SettingsError, match="HATCHET_CLIENT_TOKEN_SECRET_ARN: cannot read"):
        load(HatchetSettings)


def test_a_secret_that_is_not_a_token_is_named(
    secrets: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HATCHET_CLIENT_TOKEN_SECRET_ARN", create_secret(secrets, "not-a-jwt"))
    with pytest.raises(SettingsError, match="HATCHET_CLIENT_TOKEN_SECRET_ARN names is not a JWT"):
        load(HatchetSettings)


def test_a_binary_secret_is_refused(secrets: Any) -> None:
    arn = secrets.create_secret(Name=f"test/{uuid.uuid4()}", SecretBinary=b"\x00\x01")["ARN"]
    with pytest.raises(SecretError, match=r"VARIABLE: the secret .* holds no SecretString"):
        read_secret(arn, "VARIABLE")


def test_neither_variable_names_both(secrets: Any) -> None:
    with pytest.raises(SettingsError) as raised:
        load(HatchetSettings)
    assert "HATCHET_CLIENT_TOKEN_SECRET_ARN" in str(raised.value)
    assert "HATCHET_CLIENT_TOKEN " in str(raised.value)


# -- the run-token key ring ---------------------------------------------------------------


def version_at(secrets: Any, arn: str, stage: str) -> str:
    return str(secrets.get_secret_value(SecretId=arn, VersionStage=stage)["VersionId"])


def promote_pending(secrets: Any, arn: str) -> None:
    """Step 2 of a rotation, as docs/security.md spells it with the AWS CLI."""
    current, pending = (
        version_at(secrets, arn, "AWSCURRENT"),
        version_at(secrets, arn, "AWSPENDING"),
    )
    secrets.update_secret_version_stage(
        SecretId=arn,
        VersionStage="AWSCURRENT",
        MoveToVersionId=pending,
        RemoveFromVersionId=current,
    )
    secrets.update_secret_version_stage(
        SecretId=arn, VersionStage="AWSPENDING", RemoveFromVersionId=pending
    )


def test_a_rotation_in_two_steps_refuses_no_token(secrets: Any) -> None:
    """docs/security.md, "Rotating the run-token key", step by step."""
    old, new = "o" * 64, "n" * 64
    arn = create_secret(secrets, old)
    tokens = RunTokens(secret_key_ring(arn, max_age_s=0), ttl_seconds=600)
    live = tokens.mint("run-1").token  # signed with the old key

    # Step 1: the new key, AWSPENDING: accepted everywhere, not yet signing.
    secrets.put_secret_value(SecretId=arn, SecretString=new, VersionStages=["AWSPENDING"])
    announced = tokens.mint("run-1").token
    assert RunTokens(old).verify(announced, "run-1")  # still the old key signs
    assert tokens.verify(RunTokens(new).mint("run-1").token, "run-1")  # new one accepted

    # Step 2: promote it; the old key becomes AWSPREVIOUS (Secrets Manager moves it).
    old_version = version_at(secrets, arn, "AWSCURRENT")
    promote_pending(secrets, arn)
    assert version_at(secrets, arn, "AWSPREVIOUS") == old_version
    rotated = tokens.mint("run-1").token
    assert RunTokens(new).verify(rotated, "run-1")  # the new key signs
    assert tokens.verify(live, "run-1").run_id == "run-1"  # the live token still holds
    assert tokens.verify(announced, "run-1").run_id == "run-1"

    # The next rotation retires the old key: tokens it signed are refused from then on.
    secrets.put_secret_value(SecretId=arn, SecretString="z" * 64, VersionStages=["AWSPENDING"])
    assert tokens.verify(live, "run-1")  # announced only: the old key is still AWSPREVIOUS
    promote_pending(secrets, arn)
    with pytest.raises(ProtocolError):
        tokens.verify(live, "run-1")
    assert tokens.verify(rotated, "run-1")  # the key before is AWSPREVIOUS now


def test_the_stages_are_re_read_only_after_their_max_age(secrets: Any) -> None:
    arn = create_secret(secrets, "a" * 64)
    now = [0.0]
    stages = CachedSecretStages(arn, "TOKEN_SECRET_ARN", max_age_s=300, clock=lambda: now[0])
    assert stages.values() == {"AWSCURRENT": "a" * 64}
    secrets.put_secret_value(SecretId=arn, SecretString="b" * 64)
    now[0] = 299.0
    assert stages.values() == {"AWSCURRENT": "a" * 64}
    now[0] = 300.0
    assert stages.values() == {"AWSCURRENT": "b" * 64, "AWSPREVIOUS": "a" * 64}


def test_a_missing_run_token_secret_names_its_variable(secrets: Any) -> None:
    with pytest.raises(SecretError, match=r"TOKEN_SECRET_ARN: cannot read .*ResourceNotFound"):
        RunTokens(secret_key_ring(missing_arn())).mint("run-1")


def test_the_processes_key_ring_follows_the_secret(
    secrets: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """wiring.run_tokens (trigger, subscribe) builds its tokens on the key ring."""
    arn = create_secret(secrets, "c" * 64)
    monkeypatch.setenv("TOKEN_SECRET_ARN", arn)
    tokens = wiring.run_tokens(load(AuthorizerSettings))
    assert RunTokens("c" * 64).verify(tokens.mint("run-1").token, "run-1")
