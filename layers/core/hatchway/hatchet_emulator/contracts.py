"""Hatchet's gRPC contracts, loaded without importing hatchet_sdk.

Importing anything under ``hatchet_sdk`` runs the SDK's ``__init__`` (its REST
models, clients, ...), which takes about 1.7 s; the emulator must start in well
under a second. So the descriptors of the SDK's generated modules are kept in
``hatchet_contracts.binpb`` (a FileDescriptorSet, regenerated from the pinned
SDK by ``python -m hatchway.hatchet_emulator.contracts``; a unit test checks it
still matches) and loaded into a private descriptor pool, so they never clash
with the SDK's own copies when both live in one process.
"""

from __future__ import annotations

import sys
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import FileDescriptor, ServiceDescriptor

CONTRACTS_FILE = "hatchet_contracts.binpb"

# The SDK's generated modules whose services the emulator serves.
SDK_MODULES = (
    "hatchet_sdk.contracts.dispatcher_pb2",
    "hatchet_sdk.contracts.events_pb2",
    "hatchet_sdk.contracts.workflows_pb2",
    "hatchet_sdk.contracts.v1.workflows_pb2",
    "hatchet_sdk.contracts.v1.dispatcher_pb2",
)


@cache
def _pool() -> descriptor_pool.DescriptorPool:
    data = resources.files(__package__).joinpath(CONTRACTS_FILE).read_bytes()
    file_set = descriptor_pb2.FileDescriptorSet.FromString(data)
    pool = descriptor_pool.DescriptorPool()
    for file_proto in file_set.file:  # stored in dependency order
        pool.Add(file_proto)
    return pool


def message(full_name: str) -> Any:  # noqa: ANN401 - classes built at run time
    """The message class for a fully qualified proto name, e.g. ``v1.GetRunDetailsRequest``."""
    return message_factory.GetMessageClass(_pool().FindMessageTypeByName(full_name))


def service(full_name: str) -> ServiceDescriptor:
    return _pool().FindServiceByName(full_name)


def enum_value(enum_full_name: str, name: str) -> int:
    return int(_pool().FindEnumTypeByName(enum_full_name).values_by_name[name].number)


def enum_name(enum_full_name: str, number: int) -> str:
    return str(_pool().FindEnumTypeByName(enum_full_name).values_by_number[number].name)


def sdk_file_set() -> descriptor_pb2.FileDescriptorSet:
    """Build the FileDescriptorSet from the installed hatchet-sdk (slow: imports the SDK)."""
    import importlib  # noqa: PLC0415 - only the regeneration path pays for the SDK import

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
    target = Path(__file__).with_name(CONTRACTS_FILE)
    target.write_bytes(sdk_file_set().SerializeToString(deterministic=True))
    sys.stderr.write(f"wrote {target}\n")


if __name__ == "__main__":
    main()
