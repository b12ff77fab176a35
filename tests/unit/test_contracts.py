"""The runtime's copy of Hatchet's gRPC contracts (which the emulator serves too) must
match the installed SDK."""

from __future__ import annotations

from hatchway.hatchet_contracts import stored_file_set
from hatchway_local.hatchet_emulator import contracts


def test_stored_contracts_match_the_installed_hatchet_sdk() -> None:
    assert stored_file_set() == contracts.sdk_file_set(), (
        "hatchet-sdk's contracts changed: run `python -m hatchway_local.hatchet_emulator.contracts`"
        " and check the emulator against the new fields"
    )


def test_every_service_the_emulator_serves_is_in_the_contracts() -> None:
    for name in ("Dispatcher", "EventsService", "WorkflowService", "v1.AdminService"):
        assert contracts.service(name).methods
    assert contracts.enum_name("StepActionEventType", 2) == "STEP_EVENT_TYPE_COMPLETED"
