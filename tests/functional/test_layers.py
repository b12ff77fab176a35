"""The layers as `sam build` builds them (layers/core/build_layer.py, BuildMethod
makefile): only runtime code, pinned to the lock, and enough on their own: every
function imports, and every AWS client the runtime uses is created, with nothing
but its code and layers on the path (no site-packages), as on Lambda."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hatchway_local.packaging import (
    FUNCTIONS,
    LOCAL_TOOLING,
    build_layer,
    distributions,
    function_environment,
    import_function,
    layers_of,
    read_pins,
)
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.functional

BUILD = REPO_ROOT / "layers" / "core" / "build_layer.py"


@pytest.fixture(scope="module")
def layers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("layers")
    return {name: build_layer(BUILD, name, root / name) for name in ("core", "trigger")}


def test_every_package_in_a_layer_is_the_version_the_tests_ran(layers: dict[str, Path]) -> None:
    pinned = read_pins(REPO_ROOT / "constraints.txt")
    for layer in layers.values():
        held = distributions(layer)
        assert held
        assert {name: pinned.get(name) for name in held} == held


def test_no_local_tooling_or_build_tool_is_in_a_layer(layers: dict[str, Path]) -> None:
    forbidden = {
        *LOCAL_TOOLING,
        "hatchet_sdk",
        "grpc_tools",
        "setuptools",
        "pkg_resources",
        "pip",
        "bin",
        "_pytest",
        "pytest",
    }
    for layer in layers.values():
        assert not forbidden & {path.name for path in layer.iterdir()}
    runtime = layers["core"] / "hatchway"
    assert (runtime / "hatchet_contracts.binpb").is_file()
    assert not list(runtime.rglob("*emulator*"))
    assert {path.name for path in layers["core"].iterdir()} >= {"hatchway", "boto3", "pydantic"}
    assert not {"grpc", "fastapi", "google"} & {path.name for path in layers["core"].iterdir()}


@pytest.mark.parametrize("function", FUNCTIONS)
def test_each_function_imports_from_its_layers_alone(
    layers: dict[str, Path], function: str
) -> None:
    paths = [layers[name] for name in layers_of(function)]
    cold = import_function(REPO_ROOT / "functions" / function, paths)
    assert not any(module.startswith("hatchway_local") for module in cold.modules)
    # Tracing is off here (no Lambda variables): the X-Ray recorder is never imported.
    assert "aws_xray_sdk.core" not in cold.modules


@pytest.mark.parametrize("function", FUNCTIONS)
def test_a_function_traces_from_its_layers_alone_as_on_lambda(
    layers: dict[str, Path], function: str
) -> None:
    """With Lambda's variables the tracer is on at the cold start: aws-xray-sdk (and
    wrapt) load from the layer and patch botocore."""
    env = {
        **function_environment(),
        "LAMBDA_TASK_ROOT": str(REPO_ROOT / "functions" / function),
        "AWS_LAMBDA_FUNCTION_NAME": function,
        "AWS_XRAY_DAEMON_ADDRESS": "127.0.0.1:9",
        "_X_AMZN_TRACE_ID": "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1",
    }
    cold = import_function(
        REPO_ROOT / "functions" / function, [layers[name] for name in layers_of(function)], env=env
    )
    assert "aws_xray_sdk.ext.botocore.patch" in cold.modules
    assert "wrapt" in {module.split(".")[0] for module in cold.modules}


def test_every_aws_client_the_runtime_uses_loads_from_the_pruned_botocore(
    layers: dict[str, Path],
) -> None:
    probe = (
        f"import sys; sys.path[:0] = [{str(layers['core'])!r}]\n"
        "import boto3\n"
        "for name in ('dynamodb', 'sqs', 's3', 'apigatewaymanagementapi', 'secretsmanager'):\n"
        "    boto3.client(name, endpoint_url='http://127.0.0.1:9')\n"
        "boto3.resource('dynamodb', endpoint_url='http://127.0.0.1:9').Table('t')\n"
        "from aws_lambda_powertools.utilities import parameters\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-S", "-c", probe],
        env=function_environment(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "ok"
