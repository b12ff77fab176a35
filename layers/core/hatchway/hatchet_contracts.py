"""Hatchet's gRPC contracts, without hatchet-sdk.

The runtime talks to Hatchet over grpcio with the engine's own message and
service definitions, kept in ``hatchet_contracts.binpb`` (a FileDescriptorSet
taken from the pinned hatchet-sdk's generated modules; ``python -m
hatchway_local.hatchet_emulator.contracts`` regenerates it and a unit test checks
it still matches). Importing the SDK costs seconds of cold start (about 400
modules) for what is two RPCs here. The descriptors load into a private pool, so
they never clash with the SDK's own copies when both live in one process (the
local stack, the tests).
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import ServiceDescriptor

CONTRACTS_FILE = "hatchet_contracts.binpb"


def stored_file_set() -> descriptor_pb2.FileDescriptorSet:
    data = resources.files(__package__).joinpath(CONTRACTS_FILE).read_bytes()
    return descriptor_pb2.FileDescriptorSet.FromString(data)


@cache
def _pool() -> descriptor_pool.DescriptorPool:
    pool = descriptor_pool.DescriptorPool()
    for file_proto in stored_file_set().file:  # stored in dependency order
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
