"""Pushed events and event filters: what the engine stores of each event, and how its
filters decide which runs an event starts.

The decisions follow ``makeTriggerDecisions`` and ``prepareTriggerFromEvents`` in
Hatchet's pkg/repository/trigger.go:

- a workflow listens to an event key pattern where ``*`` matches anything
  (``ListWorkflowsForEvents`` in pkg/repository/sqlcv1/triggers.sql: ``LIKE``);
- a workflow with no filters at all is triggered once per event;
- a workflow with filters is triggered only through the filters whose scope equals
  the event's scope (an event without a scope matches none): once per filter whose
  CEL expression is true, that filter's payload handed to the run's tasks as
  ``triggers.filter_payload``. An empty expression, an error or a non-boolean value
  does not trigger;
- the expression sees ``input`` (the event payload), ``additional_metadata`` (the
  event's), ``payload`` (the filter's), ``event_id`` and ``event_key``
  (``processWorkflowExpression``; variables from internal/cel/cel.go).

A workflow's default filters (``default_filters``) are declarative filters: a version
that declares some replaces all the workflow's declarative ones, and a version that
declares none leaves them be (``DeleteExistingDeclarativeFiltersForOverwrite`` and
``BulkInsertDeclarativeFilters`` in pkg/repository/workflow.go). Filters made over REST
are never declarative and stay.
"""

from __future__ import annotations

import functools
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import celpy
from celpy.adapter import json_to_cel
from celpy.celparser import CELParseError
from celpy.celtypes import BoolType
from celpy.evaluation import CELEvalError

from hatchway.observability import logger


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(eq=False, slots=True)
class EventFilter:
    workflow_id: str
    scope: str
    expression: str
    payload: dict[str, Any]
    is_declarative: bool = False  # a workflow's default filter, replaced with its version
    filter_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    created_at: datetime = field(default_factory=_utcnow)
    updated_at: datetime = field(default_factory=_utcnow)


@dataclass(eq=False, slots=True)
class PushedEvent:
    key: str
    payload: dict[str, Any]
    additional_metadata: dict[str, Any]
    scope: str | None = None
    triggering_webhook_name: str | None = None  # the incoming webhook that made it (webhooks.py)
    event_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    seen_at: datetime = field(default_factory=_utcnow)
    triggered: list[tuple[str, str | None]] = field(default_factory=list)  # (run id, filter id)


@dataclass(frozen=True, slots=True)
class Decision:
    filter_id: str | None = None
    payload: dict[str, Any] | None = None


@functools.cache
def _pattern(event_trigger: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in event_trigger.split("*")), re.DOTALL)


def key_matches(event_trigger: str, key: str) -> bool:
    """Whether a workflow's event trigger (``*`` a wildcard) matches a pushed key."""
    return _pattern(event_trigger).fullmatch(key) is not None


@functools.cache
def _program(expression: str) -> celpy.Runner:
    environment = celpy.Environment()
    return environment.program(environment.compile(expression))


def _expression_true(expression: str, event: PushedEvent, payload: dict[str, Any]) -> bool:
    variables: dict[str, Any] = {
        "input": event.payload,
        "additional_metadata": event.additional_metadata,
        "payload": payload,
        "event_id": event.event_id,
        "event_key": event.key,
    }
    try:
        value = _program(expression).evaluate(
            {name: json_to_cel(v) for name, v in variables.items()}
        )
    except (CELParseError, CELEvalError) as error:  # the engine does not trigger
        logger.info("event filter expression failed", expression=expression, error=str(error))
        return False
    return isinstance(value, BoolType) and bool(value)


def decisions(filters: list[EventFilter], workflow_id: str, event: PushedEvent) -> list[Decision]:
    """The runs one event starts for one workflow whose trigger matched its key."""
    own = [f for f in filters if f.workflow_id == workflow_id]
    if not own:
        return [Decision()]
    return [
        Decision(f.filter_id, f.payload)
        for f in own
        if event.scope is not None
        and f.scope == event.scope
        and f.expression
        and _expression_true(f.expression, event, f.payload)
    ]
