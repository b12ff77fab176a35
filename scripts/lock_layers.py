"""Write the Lambda layers' requirements files from constraints.txt.

Each layer pins its whole dependency closure (not only the top-level packages),
so `sam build` installs exactly what the tests ran with; the build installs with
``--no-deps``, so nothing unpinned can slip in. The closure is read from the
installed distributions' metadata (``make install`` first):

- ``layers/core/requirements.txt``: the runtime package's own dependencies
  (layers/core/pyproject.toml ``dependencies``), in every function;
- ``layers/core/requirements-trigger.txt``: what the ``trigger`` extra adds,
  minus what the core layer already holds (Lambda merges layers into one path).

``python scripts/lock_layers.py --check`` exits 1 when the files are stale.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
RUNTIME = ROOT / "layers" / "core"
LAYERS = {"core": RUNTIME / "requirements.txt", "trigger": RUNTIME / "requirements-trigger.txt"}


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins() -> dict[str, str]:
    found = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)", line.strip())
        if match:
            found[normalize(match.group(1))] = f"{match.group(1)}=={match.group(2)}"
    return found


def closure(roots: list[Requirement]) -> set[str]:
    """Every distribution ``roots`` need on the Lambda runtime (Linux, CPython 3.12)."""
    environment = {**default_environment(), "python_version": "3.12", "sys_platform": "linux"}
    seen: set[str] = set()
    visited: set[tuple[str, frozenset[str]]] = set()
    todo = [(root, frozenset(root.extras)) for root in roots]
    while todo:
        requirement, extras = todo.pop()
        name = normalize(requirement.name)
        if (name, extras) in visited:
            continue
        visited.add((name, extras))
        if name == "hatchway":  # the runtime's own extras, named through itself
            children = [Requirement(r) for r in runtime_requirements(extras)]
            todo.extend((child, frozenset(child.extras)) for child in children)
            continue
        seen.add(name)
        for text in metadata.requires(name) or []:
            dependency = Requirement(text)
            wanted = [{**environment, "extra": extra} for extra in extras or {""}]
            if dependency.marker is None or any(dependency.marker.evaluate(e) for e in wanted):
                todo.append((dependency, frozenset(dependency.extras)))
    return seen


def runtime_requirements(extras: frozenset[str] = frozenset()) -> list[str]:
    project = tomllib.loads((RUNTIME / "pyproject.toml").read_text())["project"]
    found = list(project["dependencies"])
    for extra in extras:
        found.extend(project["optional-dependencies"][extra])
    return found


def layer_requirements() -> dict[str, list[str]]:
    lock = pins()
    core = closure([Requirement(r) for r in runtime_requirements()])
    trigger = closure([Requirement("hatchway[trigger]")]) - core
    missing = sorted((core | trigger) - set(lock))
    if missing:
        raise SystemExit(f"not in constraints.txt: {', '.join(missing)} (run make lock)")
    return {
        "core": sorted(lock[name] for name in core),
        "trigger": sorted(lock[name] for name in trigger),
    }


HEADER = {
    "core": "# CoreLayer (every function): the runtime package's dependencies, whole closure.",
    "trigger": "# TriggerLayer (the trigger only): what it adds to CoreLayer, whole closure.",
}


def render(layer: str, lines: list[str]) -> str:
    return (
        f"{HEADER[layer]}\n# Generated from constraints.txt by `make lock-layers`; "
        "tests/unit/test_packaging.py fails on drift.\n" + "\n".join(lines) + "\n"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the files are stale")
    args = parser.parse_args()
    stale = []
    for layer, lines in layer_requirements().items():
        text = render(layer, lines)
        if args.check:
            if LAYERS[layer].read_text() != text:
                stale.append(str(LAYERS[layer].relative_to(ROOT)))
        else:
            LAYERS[layer].write_text(text)
    if stale:
        sys.stderr.write(f"stale: {', '.join(stale)}; run make lock-layers\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
