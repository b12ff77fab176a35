"""The emulator's copy of Hatchet's gRPC contracts must match the installed SDK."""

from __future__ import annotations

from importlib import resources

from google.protobuf import descriptor_pb2

from hatchway.hatchet_emulator import contracts


def test_stored_contracts_match_the_installed_hatchet_sdk() -> None:
    stored = descriptor_pb2.FileDescriptorSet.FromString(
        resources.files(contracts.__package__).joinpath(contracts.CONTRACTS_FILE).read_bytes()
    )
    assert stored == contracts.sdk_file_set(), (
        "hatchet-sdk's contracts changed: run `python -m hatchway.hatchet_emulator.contracts`"
        " and check the emulator against the new fields"
    )


def test_every_service_the_emulator_serves_is_in_the_contracts() -> None:
    for name in ("Dispatcher", "EventsService", "WorkflowService", "v1.AdminService"):
        assert contracts.service(name).methods
    assert contracts.enum_name("StepActionEventType", 2) == "STEP_EVENT_TYPE_COMPLETED"
