"""Build a Lambda layer from its requirements file, as `sam build` runs it
(template.yaml: ``BuildMethod: makefile``, see Makefile beside this file).

    python3.12 build_layer.py core|trigger ARTIFACTS_DIR

- Installs exactly the pinned files (``--no-deps``: requirements*.txt hold the whole
  closure, generated from constraints.txt) as manylinux x86_64 CPython 3.12 wheels,
  whatever machine builds it, with bytecode compiled (Lambda's file system is
  read-only: without .pyc every cold start compiles).
- The core layer adds the runtime package (``hatchway/``) and nothing else of this
  folder; no build tool (pip, setuptools, grpc_tools) and no console script lands.
- botocore's service models are cut to the services Hatchway calls (``BOTOCORE_SERVICES``):
  the other ~400 are 28 MB of the layer. tests/functional/test_layers.py builds
  the layers and creates every client Hatchway uses from them, alone on sys.path.
"""

from __future__ import annotations

import compileall
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REQUIREMENTS = {"core": "requirements.txt", "trigger": "requirements-trigger.txt"}
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_28_x86_64", "manylinux_2_34_x86_64")
# The AWS services the runtime's boto3 clients call (Lambda functions and relay), and
# xray: aws-xray-sdk (Powertools Tracer) makes its sampling client when it is imported.
BOTOCORE_SERVICES = frozenset(
    {
        *("dynamodb", "sqs", "s3", "apigatewaymanagementapi", "secretsmanager"),
        *("sts", "sso", "sso-oidc", "xray"),
    }
)
NEVER_SHIPPED = ("bin", "pip", "setuptools", "pkg_resources", "_distutils_hack", "grpc_tools")


def install(requirements: Path, target: Path) -> None:
    platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    subprocess.run(  # noqa: S603 - our interpreter, our pinned file
        [
            sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
            "--no-deps", "--only-binary=:all:", *platforms,
            "--implementation", "cp", "--python-version", "3.12",
            "--target", str(target), "--requirement", str(requirements),
        ],
        check=True,
    )  # fmt: skip


def prune_botocore(target: Path) -> None:
    data = target / "botocore" / "data"
    if not data.is_dir():
        return
    for service in data.iterdir():
        if service.is_dir() and service.name not in BOTOCORE_SERVICES:
            shutil.rmtree(service)


def build(layer: str, artifacts: Path) -> Path:
    target = artifacts / "python"  # Lambda puts /opt/python on sys.path
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    install(HERE / REQUIREMENTS[layer], target)
    if layer == "core":
        shutil.copytree(
            HERE / "hatchway", target / "hatchway", ignore=shutil.ignore_patterns("__pycache__")
        )
        compileall.compile_dir(target / "hatchway", quiet=1)
    prune_botocore(target)
    for name in NEVER_SHIPPED:
        path = target / name
        if path.is_dir():
            shutil.rmtree(path)
    return target


def main() -> int:
    if len(sys.argv) != 3 or sys.argv[1] not in REQUIREMENTS:
        sys.stderr.write(f"usage: {Path(sys.argv[0]).name} core|trigger ARTIFACTS_DIR\n")
        return 2
    if sys.version_info[:2] != (3, 12):
        sys.stderr.write("build the layers with Python 3.12 (the Lambda runtime's bytecode)\n")
        return 2
    build(sys.argv[1], Path(sys.argv[2]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
