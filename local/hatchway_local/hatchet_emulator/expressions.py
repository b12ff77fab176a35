"""Hatchet's CEL expressions (concurrency keys, conditions, filters), evaluated with
cel-python over plain JSON values."""

from __future__ import annotations

import functools
import json
from typing import Any

import celpy
from celpy.adapter import CELJSONEncoder, json_to_cel
from celpy.celparser import CELParseError
from celpy.evaluation import CELEvalError

from .errors import EngineError


@functools.cache
def _program(expression: str) -> celpy.Runner:
    environment = celpy.Environment()
    try:
        return environment.program(environment.compile(expression))
    except CELParseError as error:
        raise EngineError("INVALID_ARGUMENT", f"invalid CEL expression {expression!r}") from error


def check(expression: str) -> None:
    """Refuse an expression that does not parse (at registration, not when it runs)."""
    _program(expression)


def evaluate(expression: str, variables: dict[str, Any]) -> object:
    """The expression's value as plain JSON (str, int, float, bool, list, dict, None)."""
    activation = {name: json_to_cel(value) for name, value in variables.items()}
    try:
        result = _program(expression).evaluate(activation)
    except CELEvalError as error:
        raise EngineError(
            "INVALID_ARGUMENT", f"CEL expression {expression!r} failed: {error}"
        ) from error
    if isinstance(result, CELEvalError):
        raise EngineError("INVALID_ARGUMENT", f"CEL expression {expression!r} failed: {result}")
    value: object = json.loads(json.dumps(result, cls=CELJSONEncoder))
    return value
