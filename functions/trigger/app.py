"""HTTP trigger: POST /runs, GET /runs/{runId}, GET /runs/{runId}/frames, GET /healthz."""

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext
from mangum import Mangum

from hatchway.observability import logger
from hatchway.settings import TriggerSettings, load
from hatchway.trigger_api import build_app, metrics

# Module scope: built once per execution environment, reused by warm invocations.
app = build_app(load(TriggerSettings))
asgi = Mangum(app, lifespan="off")  # "auto" would run startup/shutdown on every call


@metrics.log_metrics  # RunsStarted, as EMF on stdout (CloudWatch Logs extracts it)
@logger.inject_lambda_context(clear_state=True)
def handler(event: dict[str, Any], context: LambdaContext) -> Any:  # noqa: ANN401 - Mangum's answer
    return asgi(event, context)
