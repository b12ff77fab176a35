"""The Lambda layer installs exactly what the tests ran with."""

from __future__ import annotations

import re
import tomllib

from tests.conftest import REPO_ROOT


def pins(path: str) -> dict[str, str]:
    found = {}
    for line in (REPO_ROOT / path).read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)", line.strip())
        if match:
            found[match.group(1).lower().replace("_", "-")] = match.group(2)
    return found


def test_layer_requirements_match_the_lock() -> None:
    layer = pins("layers/core/requirements.txt")
    lock = pins("constraints.txt")
    assert layer
    assert {name: lock.get(name) for name in layer} == layer


def test_layer_requirements_cover_every_runtime_dependency() -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    declared = {re.split(r"[<>=!~ ]", dep)[0].lower() for dep in project["dependencies"]}
    assert declared <= set(pins("layers/core/requirements.txt"))
