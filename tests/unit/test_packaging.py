"""The runtime apart from the local tools: each function imports only what it uses,
the layers' pins are the lock, and the runtime never reaches the local tooling."""

from __future__ import annotations

import ast
import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from hatchway_local.apigw_emulator.template import load_template
from hatchway_local.packaging import (
    FUNCTIONS,
    LOCAL_TOOLING,
    NOT_IN_WEBSOCKET_FUNCTIONS,
    WEBSOCKET_FUNCTIONS,
    function_environment,
    import_function,
    layers_of,
    normalize,
    read_pins,
)
from tests.conftest import REPO_ROOT

RUNTIME = REPO_ROOT / "layers" / "core"
# The dead-letter queue's consumer (in FUNCTIONS): CoreLayer and TriggerLayer (grpcio, for Hatchet).
DLQ_CONSUMER = "dlq_consumer"


def loaded(modules: list[str], name: str) -> bool:
    return any(module == name or module.startswith(name + ".") for module in modules)


def lock_layers() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "lock_layers", REPO_ROOT / "scripts/lock_layers.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("function", WEBSOCKET_FUNCTIONS)
def test_websocket_functions_import_neither_hatchet_grpc_nor_fastapi(function: str) -> None:
    cold = import_function(REPO_ROOT / "functions" / function, [RUNTIME], isolated=False)
    for heavy in (*NOT_IN_WEBSOCKET_FUNCTIONS, *LOCAL_TOOLING, "hatchway.client"):
        assert not loaded(cold.modules, heavy), f"{function} imports {heavy}"
    assert loaded(cold.modules, "hatchway")
    # Tracing is off outside Lambda: no X-Ray recorder (and its two sampling clients).
    assert not loaded(cold.modules, "aws_xray_sdk.core"), f"{function} imports the recorder"


def test_the_trigger_starts_runs_without_hatchet_sdk() -> None:
    cold = import_function(REPO_ROOT / "functions" / "trigger", [RUNTIME], isolated=False)
    for heavy in ("hatchet_sdk", *LOCAL_TOOLING, "hatchway.client"):
        assert not loaded(cold.modules, heavy), f"the trigger imports {heavy}"
    assert loaded(cold.modules, "grpc")
    assert loaded(cold.modules, "fastapi")


def test_the_dlq_consumer_reaches_hatchet_over_grpc_without_the_sdk_or_fastapi() -> None:
    cold = import_function(REPO_ROOT / "functions" / DLQ_CONSUMER, [RUNTIME], isolated=False)
    for heavy in ("hatchet_sdk", "fastapi", "starlette", *LOCAL_TOOLING, "hatchway.client"):
        assert not loaded(cold.modules, heavy), f"the DLQ consumer imports {heavy}"
    assert loaded(cold.modules, "grpc")


def test_the_runtime_package_never_imports_local_tooling_or_the_sdk() -> None:
    forbidden = {
        "hatchway_local",
        "hatchet_sdk",
        "moto",
        "yaml",
        "trustme",
        "websockets",
    }
    for path in (RUNTIME / "hatchway").rglob("*.py"):
        # The relay (its image, never a layer) posts over aiohttp, and the Python client
        # (the `client` extra, for applications) speaks HTTP and WebSocket over it; no
        # function does.
        package = path.relative_to(RUNTIME / "hatchway").parts[0]
        aiohttp_allowed = package in ("relay", "client")
        banned = forbidden if aiohttp_allowed else forbidden | {"aiohttp", "yarl"}
        for name in imported_names(path):
            assert name.split(".")[0] not in banned, f"{path.name} imports {name}"
            if package != "client":  # nothing of the runtime reaches the client
                assert not loaded([name], "hatchway.client"), f"{path.name} imports {name}"


def test_no_function_imports_the_python_client() -> None:
    """The client is for applications: no function's code names it, and its extra
    stays out of the Lambda layers (the cold imports above check the module graphs)."""
    for path in (REPO_ROOT / "functions").rglob("*.py"):
        for name in imported_names(path):
            assert not loaded([name], "hatchway.client"), f"{path} imports {name}"
    layers = set(read_pins(RUNTIME / "requirements.txt")) | set(
        read_pins(RUNTIME / "requirements-trigger.txt")
    )
    assert "aiohttp" not in layers
    assert "yarl" not in layers
    module = lock_layers()
    client_extra = {normalize(r.split(">")[0]) for r in module.runtime_requirements({"client"})}
    assert {"aiohttp", "yarl"} <= client_extra  # the extra is declared, and not locked


def imported_names(path: Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def test_the_layers_requirements_are_generated_from_the_lock() -> None:
    module = lock_layers()
    for layer, lines in module.layer_requirements().items():
        assert module.LAYERS[layer].read_text() == module.render(layer, lines), (
            f"{module.LAYERS[layer].name} is stale: run make lock-layers"
        )


def test_every_layer_pin_equals_the_lock_and_no_package_is_in_two_layers() -> None:
    lock = read_pins(REPO_ROOT / "constraints.txt")
    core = read_pins(RUNTIME / "requirements.txt")
    trigger = read_pins(RUNTIME / "requirements-trigger.txt")
    assert core
    assert trigger
    assert {name: lock.get(name) for name in core | trigger} == core | trigger
    assert not set(core) & set(trigger)
    for tool in ("pip", "setuptools", "wheel", "grpcio-tools", "hatchet-sdk", "moto", "pyyaml"):
        assert tool not in core | trigger


def test_the_layer_closure_covers_what_the_runtime_declares() -> None:
    module = lock_layers()
    core = set(read_pins(RUNTIME / "requirements.txt"))
    trigger = set(read_pins(RUNTIME / "requirements-trigger.txt"))
    declared = {re.split(r"[<>=!~ \[]", dep)[0].lower() for dep in module.runtime_requirements()}
    assert {normalize(d) for d in declared} <= core
    assert {"fastapi", "mangum", "grpcio", "protobuf"} <= trigger


# -- settings: a process that lacks a variable stops at start, naming it ----------------


@pytest.mark.parametrize(
    ("function", "variable"),
    [
        ("trigger", "ALLOWED_WORKFLOWS"),
        ("trigger", "HATCHET_CLIENT_TOKEN"),
        ("ws_connect", "TABLE_NAME"),
        ("ws_subscribe", "PAYLOAD_BUCKET"),
        ("ws_ping", "AWS_ENDPOINT_URL_APIGATEWAYMANAGEMENTAPI"),
        (DLQ_CONSUMER, "HATCHET_CLIENT_TOKEN"),
        (DLQ_CONSUMER, "AWS_ENDPOINT_URL_APIGATEWAYMANAGEMENTAPI"),
    ],
)
def test_a_function_without_a_required_variable_fails_at_import_naming_it(
    function: str, variable: str
) -> None:
    env = function_environment()
    del env[variable]
    with pytest.raises(RuntimeError, match=variable):
        import_function(REPO_ROOT / "functions" / function, [RUNTIME], env=env, isolated=False)


def test_the_authorizer_without_a_token_key_fails_at_import_naming_both() -> None:
    env = function_environment()
    del env["TOKEN_SIGNING_KEY"]
    with pytest.raises(RuntimeError, match=r"TOKEN_SECRET_ARN.*TOKEN_SIGNING_KEY"):
        import_function(
            REPO_ROOT / "functions" / "ws_authorizer", [RUNTIME], env=env, isolated=False
        )


def test_the_relay_without_its_queue_stops_at_start_naming_it() -> None:
    env = function_environment()
    del env["RUN_QUEUE_URL"]
    result = subprocess.run(
        [sys.executable, "-m", "hatchway.relay.main"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "RUN_QUEUE_URL is required" in result.stderr


def test_every_function_is_checked_with_the_layers_the_template_gives_it() -> None:
    assert DLQ_CONSUMER in FUNCTIONS
    assert sorted(FUNCTIONS) == sorted(p.name for p in (REPO_ROOT / "functions").iterdir())
    template = load_template(REPO_ROOT / "template.yaml")
    layer_ids = {"core": "CoreLayer", "trigger": "TriggerLayer"}
    for resource in template["Resources"].values():
        if resource["Type"] != "AWS::Serverless::Function":
            continue
        function = Path(resource["Properties"]["CodeUri"]).name
        own = [layer["Ref"] for layer in resource["Properties"].get("Layers", [])]
        given = ["CoreLayer", *own]  # Globals' CoreLayer, then the function's own
        assert given == [layer_ids[name] for name in layers_of(function)], function
