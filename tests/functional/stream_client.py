"""Someone else's hatchet-sdk client: configured only by the HATCHET_CLIENT_*
environment, it triggers a workflow by name, prints each streamed chunk as a
JSON line, then the run's result. Used to show the emulator needs nothing more."""

from __future__ import annotations

import asyncio
import json
import sys

from hatchet_sdk import Hatchet
from pydantic import BaseModel, ConfigDict


class AnyInput(BaseModel):
    model_config = ConfigDict(extra="allow")


async def main(workflow: str, input_json: str) -> None:
    hatchet = Hatchet()
    stub = hatchet.stubs.task(name=workflow, input_validator=AnyInput, output_validator=dict)
    ref = await stub.aio_run(AnyInput(**json.loads(input_json)), wait_for_result=False)
    sys.stdout.write(json.dumps({"runId": ref.workflow_run_id}) + "\n")
    async for chunk in hatchet.runs.subscribe_to_stream(ref.workflow_run_id):
        sys.stdout.write(json.dumps({"chunk": chunk}) + "\n")
    result = await hatchet.runs.get_run_ref(ref.workflow_run_id).aio_result()
    status = await hatchet.runs.aio_get_status(ref.workflow_run_id)
    sys.stdout.write(json.dumps({"result": result, "status": status.value}) + "\n")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "{}"))
