"""Hatchet's gRPC contracts for the emulator: the runtime's own copy
(``hatchway.hatchet_contracts``), and how to regenerate it from the pinned SDK.

    python -m hatchway_local.hatchet_emulator.contracts

rewrites ``layers/core/hatchway/hatchet_contracts.binpb`` from the installed
hatchet-sdk (slow: it imports the SDK); a unit test fails when they differ.
"""

from __future__ import annotations

import importlib
import sys
from importlib import resources
from pathlib import Path

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FileDescriptor

from hatchway import hatchet_contracts
from hatchway.hatchet_contracts import enum_name, enum_value, message, service

__all__ = ["SDK_MODULES", "enum_name", "enum_value", "message", "sdk_file_set", "service"]

# The SDK's generated modules whose services the runtime calls and the emulator serves.
SDK_MODULES = (
    "hatchet_sdk.contracts.dispatcher_pb2",
    "hatchet_sdk.contracts.events_pb2",
    "hatchet_sdk.contracts.workflows_pb2",
    "hatchet_sdk.contracts.v1.workflows_pb2",
    "hatchet_sdk.contracts.v1.dispatcher_pb2",
)


def sdk_file_set() -> descriptor_pb2.FileDescriptorSet:
    """Build the FileDescriptorSet from the installed hatchet-sdk."""
    file_set = descriptor_pb2.FileDescriptorSet()
    seen: set[str] = set()

    def add(file_descriptor: FileDescriptor) -> None:
        if file_descriptor.name in seen:
            return
        for dependency in file_descriptor.dependencies:
            add(dependency)
        seen.add(file_descriptor.name)
        file_descriptor.CopyToProto(file_set.file.add())

    for module_name in SDK_MODULES:
        add(importlib.import_module(module_name).DESCRIPTOR)
    return file_set


def main() -> None:
    target = Path(
        str(
            resources.files(hatchet_contracts.__package__).joinpath(
                hatchet_contracts.CONTRACTS_FILE
            )
        )
    )
    target.write_bytes(sdk_file_set().SerializeToString(deterministic=True))
    sys.stderr.write(f"wrote {target}\n")


if __name__ == "__main__":
    main()
