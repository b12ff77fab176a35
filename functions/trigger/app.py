"""HTTP trigger: POST /runs, GET /runs/{runId}, GET /runs/{runId}/frames, GET /healthz."""

from mangum import Mangum

from hatchway.settings import TriggerSettings, load
from hatchway.trigger_api import build_app

# Module scope: built once per execution environment, reused by warm invocations.
app = build_app(load(TriggerSettings))
handler = Mangum(app, lifespan="off")  # "auto" would run startup/shutdown on every call
