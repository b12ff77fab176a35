"""The Hatchet adapter: start runs, follow a run's events, ask for its status.

It speaks the engine's gRPC API with grpcio and the contracts in
``hatchet_contracts`` (the pinned hatchet-sdk's own definitions), not through
hatchet-sdk: importing the SDK costs seconds of cold start, and its stream
iterator swallows errors and cannot tell step events from run events. What it
sends is what the SDK sends for the same calls (notes/hatchet-engine.md):

- start: ``WorkflowService.TriggerWorkflow`` with the (namespaced) workflow name,
  the input as JSON, ``child_index`` 0 and the additional metadata as JSON, as
  ``hatchet.stubs.task(name).aio_run(..., wait_for_result=False)`` does;
- events: ``Dispatcher.SubscribeToWorkflowEvents(workflow_run_id)``;
- status: ``v1.AdminService.GetRunDetails(external_id)``.

Authentication is the SDK's header (``authorization: bearer <token>``).
Settings: :class:`hatchway.settings.HatchetSettings` (``HATCHET_CLIENT_*``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from . import hatchet_contracts as contracts
from .settings import HatchetSettings


class UpstreamUnavailableError(Exception):
    """Hatchet did not answer (or refused for a reason that is not the caller's)."""


class UnknownWorkflowError(Exception):
    """Hatchet has no workflow of that name registered."""


def _channel(settings: HatchetSettings) -> grpc.aio.Channel:
    options: list[tuple[str, Any]] = [
        ("grpc.keepalive_time_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.max_receive_message_length", settings.grpc_max_recv_message_length),
    ]
    if settings.tls_strategy == "none":
        return grpc.aio.insecure_channel(settings.host_port, options=options)
    root = Path(settings.tls_root_ca_file).read_bytes() if settings.tls_root_ca_file else None
    server_name = settings.tls_server_name or settings.host_port.rsplit(":", 1)[0]
    options.append(("grpc.ssl_target_name_override", server_name))
    return grpc.aio.secure_channel(
        settings.host_port, grpc.ssl_channel_credentials(root_certificates=root), options=options
    )


class _Rpc:
    """The engine's methods used here, bound to one channel."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        def method(kind: str, service: str, name: str) -> Any:  # noqa: ANN401 - a grpc callable
            descriptor = contracts.service(service).methods_by_name[name]
            request = contracts.message(descriptor.input_type.full_name)
            response = contracts.message(descriptor.output_type.full_name)
            return getattr(channel, kind)(
                f"/{descriptor.containing_service.full_name}/{name}",
                request_serializer=request.SerializeToString,
                response_deserializer=response.FromString,
            )

        self.trigger_workflow = method("unary_unary", "WorkflowService", "TriggerWorkflow")
        self.subscribe_to_workflow_events = method(
            "unary_stream", "Dispatcher", "SubscribeToWorkflowEvents"
        )
        self.get_run_details = method("unary_unary", "v1.AdminService", "GetRunDetails")


class _Hatchet:
    def __init__(self, settings: HatchetSettings) -> None:
        self._settings = settings
        self._metadata = (("authorization", f"bearer {settings.token}"),)
        self._channel: grpc.aio.Channel | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._methods: _Rpc | None = None

    @property
    def _rpc(self) -> _Rpc:
        """The methods on a channel of the running loop (an aio channel belongs to the
        loop it was made in; Mangum keeps one loop per execution environment)."""
        loop = asyncio.get_running_loop()
        if self._methods is None or self._loop is not loop:
            self._channel = _channel(self._settings)
            self._loop = loop
            self._methods = _Rpc(self._channel)
        return self._methods

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()


# Codes a retry may cure, for a call that did not reach the engine.
_TRANSIENT = frozenset({grpc.StatusCode.UNAVAILABLE})


class HatchetTrigger(_Hatchet):
    """Starts runs by workflow name, as a client without the workflow's code does."""

    def __init__(
        self, settings: HatchetSettings, attempts: int = 3, timeout_s: float = 5.0
    ) -> None:
        super().__init__(settings)
        self._attempts = attempts
        self._timeout_s = timeout_s
        self._request = contracts.message("v1.TriggerWorkflowRequest")

    async def start(self, workflow: str, input_: dict[str, Any], metadata: dict[str, str]) -> str:
        request = self._request(
            name=self._settings.workflow_name(workflow),
            input=json.dumps(input_),
            child_index=0,
            additional_metadata=json.dumps(metadata) if metadata else None,
        )
        for attempt in range(self._attempts):
            try:
                response = await self._rpc.trigger_workflow(
                    request, metadata=self._metadata, timeout=self._timeout_s
                )
                return str(response.workflow_run_id)
            except grpc.aio.AioRpcError as error:
                code = error.code()
                if code == grpc.StatusCode.NOT_FOUND:
                    raise UnknownWorkflowError(workflow) from error
                if code not in _TRANSIENT or attempt == self._attempts - 1:
                    raise UpstreamUnavailableError(f"{code.name}: {error.details()}") from error
                await asyncio.sleep(0.1 * 2**attempt)
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


@dataclass(frozen=True)
class HatchetEvent:
    """One run event: ``resource`` is STEP_RUN or WORKFLOW_RUN; ``kind`` is STARTED,
    STREAM, COMPLETED, FAILED, CANCELLED or TIMED_OUT."""

    resource: str
    kind: str
    resource_id: str
    payload: str
    hangup: bool
    event_index: int | None
    retry_count: int | None


@dataclass(frozen=True)
class RunStatus:
    status: str  # QUEUED RUNNING COMPLETED FAILED CANCELLED
    done: bool
    output: dict[str, Any] | None
    error: str | None


_V1_STATUS = {0: "QUEUED", 1: "RUNNING", 2: "COMPLETED", 3: "FAILED", 4: "CANCELLED", 5: "FAILED"}


class HatchetEvents(_Hatchet):
    """A run's events and status over gRPC; one channel for every run the relay follows."""

    def __init__(self, settings: HatchetSettings) -> None:
        super().__init__(settings)
        self._subscribe_request = contracts.message("SubscribeToWorkflowEventsRequest")
        self._details_request = contracts.message("v1.GetRunDetailsRequest")

    async def events(
        self, run_id: str, sent: asyncio.Event | None = None
    ) -> AsyncIterator[HatchetEvent]:
        """The run's live events until its hangup; raises grpc.aio.AioRpcError on a break.

        ``sent`` is set once the subscription request has left (Hatchet acknowledges
        nothing before the first event)."""
        call = self._rpc.subscribe_to_workflow_events(
            self._subscribe_request(workflow_run_id=run_id), metadata=self._metadata
        )
        try:
            if sent is not None:
                await call.wait_for_connection()
                sent.set()
            async for event in call:
                yield HatchetEvent(
                    resource=contracts.enum_name("ResourceType", event.resource_type).removeprefix(
                        "RESOURCE_TYPE_"
                    ),
                    kind=contracts.enum_name("ResourceEventType", event.event_type).removeprefix(
                        "RESOURCE_EVENT_TYPE_"
                    ),
                    resource_id=event.resource_id,
                    payload=event.event_payload,
                    hangup=event.hangup,
                    event_index=event.event_index if event.HasField("event_index") else None,
                    retry_count=event.retry_count if event.HasField("retry_count") else None,
                )
        finally:
            call.cancel()

    async def status(self, run_id: str) -> RunStatus:
        details = await self._rpc.get_run_details(
            self._details_request(external_id=run_id), metadata=self._metadata, timeout=10
        )
        output: dict[str, Any] = {}
        errors = []
        for name, task in details.task_runs.items():
            if task.HasField("output") and task.output:
                output[name] = json.loads(task.output)
            if task.HasField("error") and task.error:
                errors.append(task.error)
        return RunStatus(
            status=_V1_STATUS.get(details.status, "RUNNING"),
            done=details.done,
            output=output or None,
            error="\n".join(errors) or None,
        )
