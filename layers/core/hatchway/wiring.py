"""Builds adapters from a process's settings: the one place that knows how the
parts are put together. Every adapter is passed in explicitly; nothing here
imports FastAPI, grpc or the relay, so a WebSocket function loads only what it uses
(the trigger's wiring is ``trigger_api.build_app``, the relay's ``relay.main``)."""

from __future__ import annotations

from .payloads import Payloads
from .settings import PayloadSettings, TableSettings, TokenKeySettings
from .store import Store
from .tokens import RunTokens, key_source


def run_tokens(settings: TokenKeySettings, ttl_seconds: int = 3600) -> RunTokens:
    # The key ring follows a rotation of the secret (re-read every five minutes).
    return RunTokens(key_source(settings.token_signing_key, settings.token_secret_arn), ttl_seconds)


def store(settings: TableSettings) -> Store:
    return Store(settings.table_name, settings.frame_retention_seconds)


def payloads(settings: PayloadSettings) -> Payloads:
    return Payloads.from_settings(settings)
