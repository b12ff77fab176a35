"""Idempotency keys (a workflow's ``idempotency``): a trigger whose key is already claimed
starts nothing and names the run holding the key.

What the real engine does, and this module with it:

- a workflow's key is a CEL expression over the trigger's ``input`` and
  ``additional_metadata`` that must give a string not starting with
  ``hatchet_internal_`` (``evalIdempotencyKey`` in pkg/repository/trigger.go);
- keys are the tenant's, not the workflow's: two workflows whose expressions give the
  same key share it;
- every trigger of a workflow with a key claims it for the new run until ``ttl_ms``
  from now. A key held by a claim that has not expired is a collision: the trigger
  creates nothing and learns the holder. Within one batch (a bulk trigger, the runs one
  event starts) the claim with the latest expiry wins a key; the engine leaves a tie
  unordered, the emulator gives it to the earlier one in the batch
  (``ClaimIdempotencyKeys`` in pkg/repository/sqlcv1/idempotency-keys.sql);
- with the ``STATUS`` method the key is also released as soon as a task of its run
  reaches a final state (retries exhausted, completed, cancelled), so the TTL is only a
  fallback (``ReleaseIdempotencyKeys``, same file);
- a trigger the emulator refuses after its key was claimed (a concurrency key that
  cannot be evaluated) gives the claim back: no key is held by a run that never was.

Where the engine drops a trigger whose key cannot be evaluated and still answers with a
run id that never appears, the emulator refuses it (INVALID_ARGUMENT, naming the error):
the run would otherwise look lost.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from .errors import EngineError
from .expressions import evaluate

_RESERVED_PREFIX = "hatchet_internal_"


@dataclass(frozen=True, slots=True)
class IdempotencyConfig:
    expression: str
    ttl_ms: int
    method: str  # TTL | STATUS


class IdempotencyCollisionError(EngineError):
    """The trigger's key is held by ``existing_run_id``: nothing was created."""

    def __init__(self, existing_run_id: str, colliding_run_id: str) -> None:
        super().__init__("ALREADY_EXISTS", "idempotency key collision")
        self.existing_run_id = existing_run_id
        self.colliding_run_id = colliding_run_id


class BulkIdempotencyCollisionError(EngineError):
    """Some runs of a bulk trigger collided; the others were created."""

    def __init__(
        self, successful_run_ids: list[str], collisions: list[IdempotencyCollisionError]
    ) -> None:
        super().__init__("ALREADY_EXISTS", "idempotency key collision")
        self.successful_run_ids = successful_run_ids
        self.collisions = collisions


@dataclass(frozen=True, slots=True)
class ClaimRequest:
    key: str
    config: IdempotencyConfig
    run_id: str  # the run the trigger would create


@dataclass(slots=True)
class _Claim:
    holder_run_id: str
    expires_at: float  # on IdempotencyKeys.clock


def key_of(config: IdempotencyConfig, input_: dict[str, Any], metadata: dict[str, Any]) -> str:
    # an expression that fails refuses the trigger (INVALID_ARGUMENT, from evaluate)
    key = evaluate(config.expression, {"input": input_, "additional_metadata": metadata})
    if not isinstance(key, str):
        raise EngineError(
            "INVALID_ARGUMENT",
            f"idempotency key expression {config.expression!r} gave {key!r}, not a string",
        )
    if key.startswith(_RESERVED_PREFIX):
        raise EngineError(
            "INVALID_ARGUMENT",
            f"idempotency key {key!r} uses reserved prefix {_RESERVED_PREFIX!r}",
        )
    return key


def request_for(
    config: IdempotencyConfig, input_: dict[str, Any], metadata: dict[str, Any], run_id: str
) -> ClaimRequest:
    return ClaimRequest(key_of(config, input_, metadata), config, run_id)


class IdempotencyKeys:
    def __init__(self) -> None:
        self._claims: dict[str, _Claim] = {}
        self._status_keys: dict[str, str] = {}  # run id -> the STATUS key it claimed
        self.clock = time.monotonic  # a test may move it on, instead of waiting a TTL out

    def claim(self, requests: list[ClaimRequest]) -> dict[str, str]:
        """Each request's run id -> the run holding its key now (itself when it won)."""
        now = self.clock()
        # expired claims go (CleanUpExpiredIdempotencyKeys), so the map stays small
        for key in [k for k, held in self._claims.items() if held.expires_at <= now]:
            del self._claims[key]
        winners: dict[str, ClaimRequest] = {}
        for request in requests:  # the engine leaves ties in a batch unordered: first wins
            best = winners.get(request.key)
            if best is None or request.config.ttl_ms > best.config.ttl_ms:
                winners[request.key] = request
        holders: dict[str, str] = {}
        for key, request in winners.items():
            held = self._claims.get(key)
            if held is None:
                held = _Claim(request.run_id, now + request.config.ttl_ms / 1000)
                self._claims[key] = held
                if request.config.method == "STATUS":
                    self._status_keys[request.run_id] = key
            holders[key] = held.holder_run_id
        return {request.run_id: holders[request.key] for request in requests}

    def release(self, run_id: str) -> None:
        """A task of ``run_id`` reached a final state: the STATUS key it claimed is free,
        whoever holds it now (``ReleaseIdempotencyKeys`` deletes by the task's key)."""
        key = self._status_keys.pop(run_id, None)
        if key is not None:
            self._claims.pop(key, None)

    def forget(self, run_id: str) -> None:
        """The run was refused after it claimed its key: the claim goes with it."""
        self._status_keys.pop(run_id, None)
        for key in [k for k, held in self._claims.items() if held.holder_run_id == run_id]:
            del self._claims[key]
