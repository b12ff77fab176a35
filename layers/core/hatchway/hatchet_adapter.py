"""The Hatchet adapter: trigger runs (through hatchet-sdk), follow a run's events
and ask for its status (through the SDK's generated gRPC stubs, so step and run
events are told apart and errors are not swallowed, as the SDK's iterator does).

Connection settings are hatchet-sdk's own (``HATCHET_CLIENT_*``)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
from hatchet_sdk import ClientConfig, Hatchet
from hatchet_sdk.contracts import dispatcher_pb2, dispatcher_pb2_grpc
from hatchet_sdk.contracts.v1 import workflows_pb2, workflows_pb2_grpc
from pydantic import BaseModel, ConfigDict


class UpstreamUnavailableError(Exception):
    """Hatchet did not answer (or refused for a reason that is not the caller's)."""


class UnknownWorkflowError(Exception):
    """Hatchet has no workflow of that name registered."""


class _AnyInput(BaseModel):
    model_config = ConfigDict(extra="allow")


class HatchetTrigger:
    """Starts runs by workflow name, as a client without the workflow's code does."""

    def __init__(self, hatchet: Hatchet | None = None) -> None:
        self._hatchet = hatchet or Hatchet()

    async def start(self, workflow: str, input_: dict[str, Any], metadata: dict[str, str]) -> str:
        stub = self._hatchet.stubs.task(
            name=workflow, input_validator=_AnyInput, output_validator=dict
        )
        try:
            ref = await stub.aio_run(
                _AnyInput(**input_), wait_for_result=False, additional_metadata=metadata
            )
        except grpc.RpcError as error:
            code = error.code() if isinstance(error, grpc.Call) else None
            if code == grpc.StatusCode.NOT_FOUND:
                raise UnknownWorkflowError(workflow) from error
            raise UpstreamUnavailableError(str(code)) from error
        except Exception as error:  # the SDK wraps transport errors in its own types
            raise UpstreamUnavailableError(str(error)) from error
        return str(ref.workflow_run_id)


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


class HatchetEvents:
    """A run's events and status over gRPC; one channel for every run the relay follows."""

    def __init__(self, config: ClientConfig | None = None) -> None:
        config = config or ClientConfig()
        self._metadata = (("authorization", f"bearer {config.token}"),)
        options = [
            ("grpc.keepalive_time_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.max_receive_message_length", 4 * 1024 * 1024),
        ]
        if config.tls_config.strategy == "none":
            self._channel = grpc.aio.insecure_channel(config.host_port, options=options)
        else:
            self._channel = grpc.aio.secure_channel(
                config.host_port, grpc.ssl_channel_credentials(), options=options
            )
        self._dispatcher = dispatcher_pb2_grpc.DispatcherStub(self._channel)
        self._admin = workflows_pb2_grpc.AdminServiceStub(self._channel)

    async def events(
        self, run_id: str, sent: asyncio.Event | None = None
    ) -> AsyncIterator[HatchetEvent]:
        """The run's live events until its hangup; raises grpc.aio.AioRpcError on a break.

        ``sent`` is set once the subscription request has left (Hatchet acknowledges
        nothing before the first event)."""
        call = self._dispatcher.SubscribeToWorkflowEvents(
            dispatcher_pb2.SubscribeToWorkflowEventsRequest(workflow_run_id=run_id),
            metadata=self._metadata,
        )
        try:
            if sent is not None:
                await call.wait_for_connection()
                sent.set()
            async for event in call:
                yield HatchetEvent(
                    resource=dispatcher_pb2.ResourceType.Name(event.resource_type).removeprefix(
                        "RESOURCE_TYPE_"
                    ),
                    kind=dispatcher_pb2.ResourceEventType.Name(event.event_type).removeprefix(
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
        details = await self._admin.GetRunDetails(
            workflows_pb2.GetRunDetailsRequest(external_id=run_id),
            metadata=self._metadata,
            timeout=10,
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

    async def close(self) -> None:
        await self._channel.close()
