"""HTTP trigger: POST /runs, GET /runs/{runId}, GET /runs/{runId}/frames, GET /healthz."""

from mangum import Mangum

from hatchway.settings import settings
from hatchway.wiring import trigger_app

# Module scope: built once per execution environment, reused by warm invocations.
app = trigger_app(settings())
handler = Mangum(app, lifespan="off")  # "auto" would run startup/shutdown on every call
