"""HTTP trigger: POST /runs, GET /runs/{runId}, GET /runs/{runId}/frames, GET /healthz."""

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext
from mangum import Mangum

from hatchway.observability import logger
from hatchway.settings import TriggerSettings, load
from hatchway.tracing import annotate_run, capture_handler
from hatchway.trigger_api import build_app, metrics

# Module scope: built once per execution environment, reused by warm invocations.
app = build_app(load(TriggerSettings))
asgi = Mangum(app, lifespan="off")  # "auto" would run startup/shutdown on every call


@metrics.log_metrics  # RunsStarted, as EMF on stdout (CloudWatch Logs extracts it)
@logger.inject_lambda_context(clear_state=True)
@capture_handler  # X-Ray (hatchway.tracing); the response, which holds run tokens, is not recorded
def handler(event: dict[str, Any], context: LambdaContext) -> Any:  # noqa: ANN401 - Mangum's answer
    response = asgi(event, context)
    annotate_run(run_of(event))
    return response


def run_of(event: dict[str, Any]) -> object:
    """The run a request named (its path), or the one POST /runs started (the
    trigger's log lines name it as ``run_id``, kept until the next request)."""
    return (event.get("pathParameters") or {}).get("runId") or logger.get_current_keys().get(
        "run_id"
    )
