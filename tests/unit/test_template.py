"""template.yaml declares what docs/design.md says: functions, routes, data stores,
the relay, least privilege, outputs. (cfn-lint and `sam validate` check the rest:
`make check-template`.)"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterator
from typing import Any

import pytest

from hatchway_local.apigw_emulator.template import TemplateReader, load_template
from hatchway_local.stack import LOCAL_PARAMETERS
from tests.conftest import REPO_ROOT

TEMPLATE_PATH = REPO_ROOT / "template.yaml"
TEMPLATE = load_template(TEMPLATE_PATH)
RESOURCES: dict[str, Any] = TEMPLATE["Resources"]
PARAMETERS: dict[str, Any] = TEMPLATE["Parameters"]
GLOBAL_FUNCTION: dict[str, Any] = TEMPLATE["Globals"]["Function"]

# docs/design.md, "Resources": function logical id -> (folder under functions/, route)
FUNCTIONS = {
    "TriggerFunction": "trigger",
    "WsAuthorizerFunction": "ws_authorizer",
    "WsConnectFunction": "ws_connect",
    "WsDisconnectFunction": "ws_disconnect",
    "WsSubscribeFunction": "ws_subscribe",
    "WsUnsubscribeFunction": "ws_unsubscribe",
    "WsPingFunction": "ws_ping",
    "WsDefaultFunction": "ws_default",
    "DlqConsumerFunction": "dlq_consumer",
}
# The functions that speak Hatchet's gRPC API (TriggerLayer, the Hatchet token); the
# others are the WebSocket API's.
HATCHET_FUNCTIONS = {"TriggerFunction", "DlqConsumerFunction"}
ROUTES = {
    "$connect": "WsConnectFunction",
    "$disconnect": "WsDisconnectFunction",
    "subscribe": "WsSubscribeFunction",
    "unsubscribe": "WsUnsubscribeFunction",
    "ping": "WsPingFunction",
    "$default": "WsDefaultFunction",
}
POSTING_FUNCTIONS = {
    "DlqConsumerFunction",  # tells a dead-lettered run's subscribers its end
    "WsSubscribeFunction",
    "WsUnsubscribeFunction",
    "WsPingFunction",
    "WsDefaultFunction",
}
CONNECTIONS_SCOPE = {
    "Fn::Sub": "arn:aws:execute-api:${AWS::Region}:${AWS::AccountId}:${WebSocketApi}"
    "/${StageName}/POST/@connections/*"
}
SHED_SCOPE = {
    "Fn::Sub": "arn:aws:execute-api:${AWS::Region}:${AWS::AccountId}:${WebSocketApi}"
    "/${StageName}/DELETE/@connections/*"
}
POST_RUNS_ARN = {
    "Fn::Sub": "arn:aws:execute-api:${AWS::Region}:${AWS::AccountId}:${HttpApi}/$default/POST/runs"
}
POST_TOKEN_ARN = {
    "Fn::Sub": "arn:aws:execute-api:${AWS::Region}:${AWS::AccountId}:${HttpApi}"
    "/$default/POST/runs/*/token"
}
TRIGGER_URI = {
    "Fn::Sub": "arn:aws:apigateway:${AWS::Region}:lambda:path/2015-03-31/functions/"
    "${TriggerFunction.Arn}/invocations"
}
MANAGEMENT_ENDPOINT = {
    "Fn::Sub": "https://${WebSocketApi}.execute-api.${AWS::Region}.amazonaws.com/${StageName}"
}


def of_type(resource_type: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in RESOURCES.items() if v["Type"] == resource_type}


def props(logical_id: str) -> dict[str, Any]:
    properties: dict[str, Any] = RESOURCES[logical_id].get("Properties") or {}
    return properties


def function_env(logical_id: str) -> dict[str, Any]:
    own = (props(logical_id).get("Environment") or {}).get("Variables") or {}
    return {**GLOBAL_FUNCTION["Environment"]["Variables"], **own}


def statements() -> Iterator[tuple[str, dict[str, Any]]]:
    """(holder, statement) for every inline IAM statement: SAM function policies and roles."""
    for logical_id, resource in RESOURCES.items():
        properties = resource.get("Properties") or {}
        if resource["Type"] == "AWS::Serverless::Function":
            for policy in properties.get("Policies") or []:
                assert isinstance(policy, dict), f"{logical_id}: only inline statements expected"
                assert set(policy) == {"Statement"}, f"{logical_id}: {sorted(policy)}"
                for statement in policy["Statement"]:
                    yield logical_id, statement
        elif resource["Type"] == "AWS::IAM::Role":
            for policy in properties.get("Policies") or []:
                for statement in policy["PolicyDocument"]["Statement"]:
                    yield logical_id, statement
        elif resource["Type"] == "AWS::IAM::ManagedPolicy":
            # Only for roles outside the stack (Hatchet workers): attached to none here.
            assert not {"Roles", "Users", "Groups"} & set(properties), logical_id
            for statement in properties["PolicyDocument"]["Statement"]:
                yield logical_id, statement
        else:
            assert resource["Type"] != "AWS::IAM::Policy"


def actions(statement: dict[str, Any]) -> list[str]:
    action = statement["Action"]
    return [action] if isinstance(action, str) else list(action)


def grants(action: str) -> dict[str, list[dict[str, Any]]]:
    """Who is allowed ``action`` (directly or by a wildcard), with the statements."""
    service = action.split(":", maxsplit=1)[0]
    holders: dict[str, list[dict[str, Any]]] = {}
    for holder, statement in statements():
        if statement["Effect"] == "Allow" and {action, f"{service}:*", "*"} & set(
            actions(statement)
        ):
            holders.setdefault(holder, []).append(statement)
    return holders


def design_logical_ids() -> set[str]:
    """Logical ids in the Resources table of docs/design.md."""
    text = (REPO_ROOT / "docs" / "design.md").read_text("utf-8")
    section = text.split("## Resources", 1)[1].split("\n## ", 1)[0]
    ids: set[str] = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            first_cell = line.split("|")[1]
            ids.update(re.findall(r"`([A-Z][A-Za-z0-9]+)`", first_cell))
    return ids - set(PARAMETERS)  # "named by parameter `StageName`"


# -- shape ---------------------------------------------------------------------------


def test_a_serverless_resource_comes_first() -> None:
    """`sam local start-api` crashes when an ApiGatewayV2 resource precedes all of them."""
    order = list(RESOURCES)
    assert order[0] == "CoreLayer"
    assert RESOURCES["CoreLayer"]["Type"] == "AWS::Serverless::LayerVersion"
    assert RESOURCES["CoreLayer"]["Metadata"]["BuildMethod"] == "makefile"


def test_every_resource_of_the_design_is_declared() -> None:
    expected = design_logical_ids()
    assert {"HatchwayTable", "RelayService", "WebSocketStage", "WsTokenAuthorizer"} <= expected
    assert expected - set(RESOURCES) == set()


def test_globals_apply_to_every_function() -> None:
    assert GLOBAL_FUNCTION["Runtime"] == "python3.12"
    assert GLOBAL_FUNCTION["Architectures"] == ["x86_64"]
    assert GLOBAL_FUNCTION["Timeout"] == 10
    assert GLOBAL_FUNCTION["MemorySize"] == 512
    assert GLOBAL_FUNCTION["Tracing"] == "Active"
    assert GLOBAL_FUNCTION["Layers"] == [{"Ref": "CoreLayer"}]
    assert GLOBAL_FUNCTION["Environment"]["Variables"] == {
        "TABLE_NAME": {"Ref": "HatchwayTable"},
        "POWERTOOLS_SERVICE_NAME": "hatchway",
        # the stack's own metrics namespace (test_observability_template.py)
        "POWERTOOLS_METRICS_NAMESPACE": {"Fn::Sub": "Hatchway/${AWS::StackName}"},
        "FRAME_RETENTION_SECONDS": {"Ref": "FrameRetentionSeconds"},
    }


def test_functions_are_exactly_the_designed_ones() -> None:
    functions = of_type("AWS::Serverless::Function")
    assert set(functions) == set(FUNCTIONS)
    for logical_id, folder in FUNCTIONS.items():
        properties = props(logical_id)
        assert properties["CodeUri"] == f"functions/{folder}/"
        assert properties.get("Handler", GLOBAL_FUNCTION.get("Handler")) == "app.handler"
        for key in ("Runtime", "Timeout", "MemorySize", "Architectures"):
            assert key not in properties, f"{logical_id} overrides the global {key}"


def test_trigger_serves_the_http_api() -> None:
    assert RESOURCES["HttpApi"]["Type"] == "AWS::Serverless::HttpApi"
    events = props("TriggerFunction")["Events"].values()
    assert all(e["Type"] == "HttpApi" for e in events)
    assert all(e["Properties"]["ApiId"] == {"Ref": "HttpApi"} for e in events)
    routes = [(e["Properties"].get("Method"), e["Properties"].get("Path")) for e in events]
    assert sorted(routes, key=str) == sorted(
        [
            ("POST", "/runs"),
            ("POST", "/runs/{runId}/token"),
            ("GET", "/runs/{runId}"),
            ("GET", "/runs/{runId}/frames"),
            ("GET", "/healthz"),
            # No method and path: SAM's $default route, so that any other request
            # gets the protocol's error body from FastAPI, not API Gateway's own.
            (None, None),
        ],
        key=str,
    )
    # The only other function with an event: the DLQ consumer, on its queue.
    with_events = {f for f in FUNCTIONS if "Events" in props(f)}
    assert with_events == {"TriggerFunction", "DlqConsumerFunction"}


def test_trigger_environment() -> None:
    env = function_env("TriggerFunction")
    assert env["RUN_QUEUE_URL"] == {"Ref": "RunQueue"}
    assert env["ALLOWED_WORKFLOWS"] == {"Ref": "AllowedWorkflows"}
    assert env["WEBSOCKET_URL"] == {
        "Fn::Sub": "wss://${WebSocketApi}.execute-api.${AWS::Region}.amazonaws.com/${StageName}"
    }
    assert env["TOKEN_SECRET_ARN"] == {"Ref": "TokenSigningSecret"}
    assert env["TOKEN_TTL_SECONDS"] == {"Ref": "TokenTtlSeconds"}
    # The Hatchet token's secret, read at the cold start: never the token itself.
    assert env["HATCHET_CLIENT_TOKEN_SECRET_ARN"] == {"Ref": "HatchetTokenSecretArn"}
    assert "HATCHET_CLIENT_TOKEN" not in env


def test_token_key_only_where_tokens_are_minted_or_checked() -> None:
    with_key = {f for f in FUNCTIONS if "TOKEN_SECRET_ARN" in function_env(f)}
    assert with_key == {"TriggerFunction", "WsAuthorizerFunction", "WsSubscribeFunction"}
    assert set(grants("secretsmanager:GetSecretValue")) == with_key | {
        "RelayExecutionRole",
        "DlqConsumerFunction",  # the Hatchet token only: it asks Hatchet how the run ended
    }
    hatchet_token = {"Ref": "HatchetTokenSecretArn"}
    run_token_key = {"Ref": "TokenSigningSecret"}
    for holder, found in grants("secretsmanager:GetSecretValue").items():
        expected = {
            "RelayExecutionRole": [hatchet_token],  # ECS injects it at the task's start
            "DlqConsumerFunction": [hatchet_token],
            "TriggerFunction": [run_token_key, hatchet_token],
        }.get(holder, [run_token_key])
        assert [s["Resource"] for s in found] == expected, holder


def test_the_hatchet_token_is_in_no_environment() -> None:
    """Neither the token nor a dynamic reference that CloudFormation would resolve
    into plain configuration: functions get the secret's ARN, the relay ECS secrets."""
    environments = {f: function_env(f) for f in FUNCTIONS}
    environments["RelayTaskDefinition"] = relay_environment()
    for holder, env in environments.items():
        assert "HATCHET_CLIENT_TOKEN" not in env, holder
        assert "resolve:secretsmanager" not in json.dumps(env), holder
    assert "resolve:secretsmanager" not in TEMPLATE_PATH.read_text("utf-8")
    with_arn = {f for f, env in environments.items() if "HATCHET_CLIENT_TOKEN_SECRET_ARN" in env}
    assert with_arn == HATCHET_FUNCTIONS


# -- who may call what (docs/security.md) ----------------------------------------------


def post_runs_definitions() -> tuple[dict[str, Any], dict[str, Any]]:
    """POST /runs's method definitions in HttpApi's OpenAPI: (JWT, IAM). POST
    /runs/{runId}/token (a fresh token) is authorized exactly alike."""
    body = props("HttpApi")["DefinitionBody"]
    # Every other route is SAM's, from the events.
    assert set(body["paths"]) == {"/runs", "/runs/{runId}/token"}
    assert set(body["paths"]["/runs"]) == {"post"}
    assert body["paths"]["/runs/{runId}/token"] == body["paths"]["/runs"]
    condition, jwt, iam = body["paths"]["/runs"]["post"]["Fn::If"]
    assert condition == "TriggerAuthIsJwt"
    return jwt, iam


def test_post_runs_has_an_authorizer_chosen_by_trigger_auth() -> None:
    assert PARAMETERS["TriggerAuth"]["Default"] == "IAM"
    assert PARAMETERS["TriggerAuth"]["AllowedValues"] == ["IAM", "JWT"]
    assert TEMPLATE["Conditions"]["TriggerAuthIsJwt"] == {
        "Fn::Equals": [{"Ref": "TriggerAuth"}, "JWT"]
    }
    jwt, iam = post_runs_definitions()
    assert jwt["security"] == [{"TriggerJwt": []}]
    assert iam["security"] == [{"AWS_IAM": []}]
    for definition in (jwt, iam):
        assert definition["x-amazon-apigateway-integration"] == {
            "type": "aws_proxy",
            "httpMethod": "POST",
            "payloadFormatVersion": "2.0",
            "uri": TRIGGER_URI,
        }
    schemes = props("HttpApi")["DefinitionBody"]["components"]["securitySchemes"]
    condition, jwt_schemes, iam_schemes = schemes["Fn::If"]
    assert condition == "TriggerAuthIsJwt"
    assert iam_schemes["AWS_IAM"]["x-amazon-apigateway-authtype"] == "awsSigv4"
    authorizer = jwt_schemes["TriggerJwt"]["x-amazon-apigateway-authorizer"]
    assert authorizer["type"] == "jwt"
    assert authorizer["identitySource"] == "$request.header.Authorization"
    assert authorizer["jwtConfiguration"] == {
        "issuer": {"Ref": "TriggerJwtIssuer"},
        "audience": [{"Ref": "TriggerJwtAudience"}],
    }


def test_only_post_runs_is_authorized_by_api_gateway() -> None:
    """GET /runs/{runId} and /frames check the run token in the function; /healthz is
    open. No event overrides the body's POST /runs, no default authorizer closes the rest."""
    assert "Auth" not in props("HttpApi")
    for name, event in props("TriggerFunction")["Events"].items():
        assert "Auth" not in event["Properties"], name


def test_jwt_mode_needs_an_issuer_and_an_audience() -> None:
    rule = TEMPLATE["Rules"]["JwtNeedsIssuerAndAudience"]
    assert rule["RuleCondition"] == {"Fn::Equals": [{"Ref": "TriggerAuth"}, "JWT"]}
    asserted = json.dumps(rule["Assertions"])
    assert "TriggerJwtIssuer" in asserted
    assert "TriggerJwtAudience" in asserted


def test_backends_get_a_policy_for_post_runs_and_its_arn() -> None:
    policy = RESOURCES["TriggerInvokePolicy"]
    assert policy["Condition"] == "TriggerAuthIsIam"
    (statement,) = policy["Properties"]["PolicyDocument"]["Statement"]
    assert (statement["Effect"], statement["Action"]) == ("Allow", "execute-api:Invoke")
    assert statement["Resource"] == [POST_RUNS_ARN, POST_TOKEN_ARN]
    assert TEMPLATE["Outputs"]["TriggerRouteArn"]["Value"] == POST_RUNS_ARN
    assert TEMPLATE["Outputs"]["TokenRouteArn"]["Value"] == POST_TOKEN_ARN
    assert TEMPLATE["Outputs"]["TriggerInvokePolicyArn"]["Value"] == {"Ref": "TriggerInvokePolicy"}


def test_both_api_stages_are_throttled() -> None:
    assert props("HttpApi")["DefaultRouteSettings"] == {
        "ThrottlingBurstLimit": {"Ref": "HttpThrottlingBurstLimit"},
        "ThrottlingRateLimit": {"Ref": "HttpThrottlingRateLimit"},
    }
    assert props("WebSocketStage")["DefaultRouteSettings"] == {
        "ThrottlingBurstLimit": {"Ref": "WebSocketThrottlingBurstLimit"},
        "ThrottlingRateLimit": {"Ref": "WebSocketThrottlingRateLimit"},
    }
    for prefix in ("Http", "WebSocket"):
        for limit in ("ThrottlingBurstLimit", "ThrottlingRateLimit"):
            assert PARAMETERS[prefix + limit]["Default"] > 0


def reserved(parameter: str, condition: str) -> dict[str, Any]:
    return {"Fn::If": [condition, {"Ref": parameter}, {"Ref": "AWS::NoValue"}]}


def test_the_functions_have_reserved_concurrency() -> None:
    websocket = reserved("WebSocketReservedConcurrency", "ReserveWebSocketConcurrency")
    assert GLOBAL_FUNCTION["ReservedConcurrentExecutions"] == websocket
    for name in FUNCTIONS:
        if name != "TriggerFunction":  # the global value, not overridden
            assert "ReservedConcurrentExecutions" not in props(name), name
    assert props("TriggerFunction")["ReservedConcurrentExecutions"] == reserved(
        "TriggerReservedConcurrency", "ReserveTriggerConcurrency"
    )
    for parameter, condition in (
        ("WebSocketReservedConcurrency", "ReserveWebSocketConcurrency"),
        ("TriggerReservedConcurrency", "ReserveTriggerConcurrency"),
    ):
        assert TEMPLATE["Conditions"][condition] == {
            "Fn::Not": [{"Fn::Equals": [{"Ref": parameter}, -1]}]
        }
    # The defaults leave Lambda's 100 unreserved in an account of the default 1,000.
    total = 7 * PARAMETERS["WebSocketReservedConcurrency"]["Default"]
    total += PARAMETERS["TriggerReservedConcurrency"]["Default"]
    assert 0 < total <= 900


def test_the_allow_list_has_no_default() -> None:
    """A deploy names the workflows it starts; the demo workflows are the local stack's."""
    assert "Default" not in PARAMETERS["AllowedWorkflows"]
    assert PARAMETERS["AllowedWorkflows"]["MinLength"] == 1
    samconfig = tomllib.loads((REPO_ROOT / "samconfig.toml").read_text("utf-8"))
    overrides = samconfig["default"]["deploy"]["parameters"]["parameter_overrides"]
    assert "AllowedWorkflows" not in overrides
    local = TemplateReader(TEMPLATE_PATH, dict(LOCAL_PARAMETERS)).api()
    trigger = local.functions["TriggerFunction"].environment
    assert (
        trigger["ALLOWED_WORKFLOWS"] == "demo-stream,demo-fail,demo-file,demo-big-chunk,demo-ticks"
    )
    assert trigger["HATCHET_CLIENT_TOKEN_SECRET_ARN"] == ""  # locally: HATCHET_CLIENT_TOKEN


def test_no_openapi_documents_are_enabled() -> None:
    """The trigger serves /openapi.json only with OPENAPI_ENABLED (the local stack's)."""
    env = function_env("TriggerFunction")
    assert "OPENAPI_ENABLED" not in env
    assert not [name for name in env if "OPENAPI" in name or "DOCS" in name]


# -- WebSocket API -------------------------------------------------------------------


def integration_function(integration_id: str) -> str:
    uri = props(integration_id)["IntegrationUri"]
    match = re.fullmatch(
        r"arn:aws:apigateway:\$\{AWS::Region\}:lambda:path/2015-03-31/functions/"
        r"\$\{(\w+)\.Arn\}/invocations",
        uri["Fn::Sub"],
    )
    assert match, uri
    return match.group(1)


def test_websocket_api() -> None:
    api = props("WebSocketApi")
    assert RESOURCES["WebSocketApi"]["Type"] == "AWS::ApiGatewayV2::Api"
    assert api["ProtocolType"] == "WEBSOCKET"
    assert api["RouteSelectionExpression"] == "$request.body.action"


def test_each_route_has_its_own_integration_and_function() -> None:
    routes = of_type("AWS::ApiGatewayV2::Route")
    integrations = of_type("AWS::ApiGatewayV2::Integration")
    served: dict[str, str] = {}
    targets = []
    for route_id in routes:
        properties = props(route_id)
        assert properties["ApiId"] == {"Ref": "WebSocketApi"}
        target = re.fullmatch(r"integrations/\$\{(\w+)\}", properties["Target"]["Fn::Sub"])
        assert target, properties["Target"]
        targets.append(target.group(1))
        integration = props(target.group(1))
        assert integration["IntegrationType"] == "AWS_PROXY"
        assert integration["ApiId"] == {"Ref": "WebSocketApi"}
        served[properties["RouteKey"]] = integration_function(target.group(1))
    assert served == ROUTES
    assert sorted(targets) == sorted(integrations)  # one integration per route, none spare


def test_only_connect_is_authorized_by_the_token_authorizer() -> None:
    authorizer = props("WsTokenAuthorizer")
    assert RESOURCES["WsTokenAuthorizer"]["Type"] == "AWS::ApiGatewayV2::Authorizer"
    assert authorizer["AuthorizerType"] == "REQUEST"
    assert authorizer["IdentitySource"] == ["route.request.querystring.token"]
    assert "WsAuthorizerFunction.Arn" in authorizer["AuthorizerUri"]["Fn::Sub"]
    for route_id in of_type("AWS::ApiGatewayV2::Route"):
        properties = props(route_id)
        if properties["RouteKey"] == "$connect":
            assert properties["AuthorizationType"] == "CUSTOM"
            assert properties["AuthorizerId"] == {"Ref": "WsTokenAuthorizer"}
        else:
            assert properties.get("AuthorizationType", "NONE") == "NONE"
            assert "AuthorizerId" not in properties


def test_the_stage_deploys_itself_and_is_named_by_a_parameter() -> None:
    """AutoDeploy: a route or integration change reaches the stage without a hand-renamed
    AWS::ApiGatewayV2::Deployment (a snapshot CloudFormation never re-takes)."""
    assert of_type("AWS::ApiGatewayV2::Deployment") == {}
    (stage_id,) = of_type("AWS::ApiGatewayV2::Stage")
    assert stage_id == "WebSocketStage"
    stage = props(stage_id)
    assert stage["AutoDeploy"] is True
    assert "DeploymentId" not in stage  # API Gateway owns the deployments
    assert "DependsOn" not in RESOURCES[stage_id]
    assert stage["ApiId"] == {"Ref": "WebSocketApi"}
    assert stage["StageName"] == {"Ref": "StageName"}
    assert PARAMETERS["StageName"]["Default"] == "prod"


def test_one_invoke_permission_per_websocket_function() -> None:
    permissions = of_type("AWS::Lambda::Permission")
    invoked = [props(p)["FunctionName"]["Ref"] for p in permissions]
    # The trigger is invoked through its HttpApi events, the DLQ consumer by its queue.
    assert sorted(invoked) == sorted(f for f in FUNCTIONS if f not in HATCHET_FUNCTIONS)
    for permission_id in permissions:
        properties = props(permission_id)
        assert properties["Action"] == "lambda:InvokeFunction"
        assert properties["Principal"] == "apigateway.amazonaws.com"
        source = properties["SourceArn"]["Fn::Sub"]
        assert source.startswith(
            "arn:aws:execute-api:${AWS::Region}:${AWS::AccountId}:${WebSocketApi}/"
        )
    by_function = {props(p)["FunctionName"]["Ref"]: props(p)["SourceArn"] for p in permissions}
    assert by_function["WsAuthorizerFunction"]["Fn::Sub"].endswith(
        "/authorizers/${WsTokenAuthorizer}"
    )
    for route_key, function in ROUTES.items():
        assert by_function[function]["Fn::Sub"].endswith(f"/*/{route_key}")


def test_manage_connections_only_for_the_relay_and_posting_functions() -> None:
    holders = grants("execute-api:ManageConnections")
    assert set(holders) == POSTING_FUNCTIONS | {"RelayTaskRole"}
    for holder, found in holders.items():
        allowed = [CONNECTIONS_SCOPE]
        if holder == "RelayTaskRole":  # it also disconnects a client that cannot keep up
            allowed.append(SHED_SCOPE)
        assert all(s["Resource"] in allowed for s in found), holder
    assert SHED_SCOPE in [s["Resource"] for s in holders["RelayTaskRole"]]
    # Nobody else, by wildcard; the backends' policy may call the two authorized routes only.
    invokers = grants("execute-api:Invoke")
    assert set(invokers) <= set(holders) | {"TriggerInvokePolicy"}
    assert [s["Resource"] for s in invokers["TriggerInvokePolicy"]] == [
        [POST_RUNS_ARN, POST_TOKEN_ARN]
    ]


def test_unsubscribe_may_read_the_run_and_make_a_tombstone() -> None:
    for action in ("dynamodb:GetItem", "dynamodb:UpdateItem"):
        assert "WsUnsubscribeFunction" in grants(action), action


def test_the_posting_functions_and_the_relay_know_the_management_endpoint() -> None:
    with_endpoint = {
        f for f in FUNCTIONS if "AWS_ENDPOINT_URL_APIGATEWAYMANAGEMENTAPI" in function_env(f)
    }
    assert with_endpoint == POSTING_FUNCTIONS
    assert all(
        function_env(f)["AWS_ENDPOINT_URL_APIGATEWAYMANAGEMENTAPI"] == MANAGEMENT_ENDPOINT
        for f in with_endpoint
    )
    assert relay_environment()["AWS_ENDPOINT_URL_APIGATEWAYMANAGEMENTAPI"] == MANAGEMENT_ENDPOINT


def test_no_wildcard_actions_and_no_open_resources() -> None:
    for holder, statement in statements():
        assert all(not a.endswith(":*") and a != "*" for a in actions(statement)), holder
        if statement["Resource"] == "*":
            assert actions(statement) == ["ecr:GetAuthorizationToken"], holder


def test_the_dlq_consumer_reads_only_the_dead_letter_queue_and_reports_each_record() -> None:
    """It ends dead-lettered runs: its SQS rights are on the DLQ alone (never the run
    queue), a run a live relay holds comes back alone (partial batch responses), and
    the queue hides a record at least as long as the function may take."""
    sqs = grants("sqs:ReceiveMessage")["DlqConsumerFunction"]
    assert [s["Resource"] for s in sqs] == [{"Fn::GetAtt": ["RunDeadLetterQueue", "Arn"]}]
    assert "DlqConsumerFunction" not in grants("sqs:SendMessage")
    (event,) = props("DlqConsumerFunction")["Events"].values()
    assert event["Type"] == "SQS"
    assert event["Properties"]["Queue"] == {"Fn::GetAtt": ["RunDeadLetterQueue", "Arn"]}
    assert event["Properties"]["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert event["Properties"]["BatchSize"] == 1
    timeout = props("DlqConsumerFunction").get("Timeout", GLOBAL_FUNCTION["Timeout"])
    assert props("RunDeadLetterQueue")["VisibilityTimeout"] >= timeout
    # gRPC to Hatchet, as the trigger: the trigger's layer too.
    assert props("DlqConsumerFunction")["Layers"] == [{"Ref": "TriggerLayer"}]
    assert function_env("DlqConsumerFunction")["HATCHET_CLIENT_TOKEN_SECRET_ARN"] == {
        "Ref": "HatchetTokenSecretArn"
    }


def test_queue_and_table_access_is_role_specific() -> None:
    assert set(grants("sqs:SendMessage")) == {"TriggerFunction"}
    assert set(grants("sqs:ReceiveMessage")) == {"RelayTaskRole", "DlqConsumerFunction"}
    assert set(grants("sqs:DeleteMessage")) == {"RelayTaskRole", "DlqConsumerFunction"}
    assert "WsAuthorizerFunction" not in grants("dynamodb:GetItem")
    writers = {"RelayTaskRole", "PayloadWriterPolicy", "DlqConsumerFunction"}
    assert set(grants("s3:PutObject")) == writers
    relay_sqs = {a for s in grants("sqs:ReceiveMessage")["RelayTaskRole"] for a in actions(s)}
    assert relay_sqs == {"sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility"}


# -- data ----------------------------------------------------------------------------


def test_table_keys_ttl_and_indexes() -> None:
    table = props("HatchwayTable")
    assert RESOURCES["HatchwayTable"]["Type"] == "AWS::DynamoDB::Table"
    assert "TableName" not in table
    assert table["BillingMode"] == "PAY_PER_REQUEST"
    assert table["KeySchema"] == [
        {"AttributeName": "pk", "KeyType": "HASH"},
        {"AttributeName": "sk", "KeyType": "RANGE"},
    ]
    assert {a["AttributeName"]: a["AttributeType"] for a in table["AttributeDefinitions"]} == {
        "pk": "S",
        "sk": "S",
        "gsi1pk": "S",
        "owner": "S",
        "gsi2sk": "S",
    }
    assert table["TimeToLiveSpecification"] == {"AttributeName": "expiresAt", "Enabled": True}
    indexes = {i["IndexName"]: i for i in table["GlobalSecondaryIndexes"]}
    assert set(indexes) == {"byConnection", "byOwner"}
    assert indexes["byConnection"]["KeySchema"] == [
        {"AttributeName": "gsi1pk", "KeyType": "HASH"},
        {"AttributeName": "pk", "KeyType": "RANGE"},
    ]
    assert indexes["byOwner"]["KeySchema"] == [
        {"AttributeName": "owner", "KeyType": "HASH"},
        {"AttributeName": "gsi2sk", "KeyType": "RANGE"},
    ]
    assert all(i["Projection"] == {"ProjectionType": "ALL"} for i in indexes.values())
    assert table["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert table["SSESpecification"]["SSEEnabled"] is True


def test_run_queue_redrives_to_the_dead_letter_queue() -> None:
    queue = props("RunQueue")
    assert queue["VisibilityTimeout"] == 60
    assert queue["RedrivePolicy"] == {
        "deadLetterTargetArn": {"Fn::GetAtt": ["RunDeadLetterQueue", "Arn"]},
        "maxReceiveCount": 5,
    }
    for queue_id in ("RunQueue", "RunDeadLetterQueue"):
        assert props(queue_id)["SqsManagedSseEnabled"] is True
        assert "QueueName" not in props(queue_id)


def test_payload_bucket_is_private_encrypted_and_expires() -> None:
    bucket = props("PayloadBucket")
    assert bucket["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    assert bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"] == [
        {"ServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}
    ]
    assert bucket["OwnershipControls"] == {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]}
    (rule,) = bucket["LifecycleConfiguration"]["Rules"]
    assert rule["Status"] == "Enabled"
    assert rule["ExpirationInDays"] == {"Ref": "FrameRetentionDays"}
    assert PARAMETERS["FrameRetentionDays"]["Default"] == 1
    assert PARAMETERS["FrameRetentionSeconds"]["Default"] == 86400


def bucket_policy_statement(sid: str) -> dict[str, Any]:
    policy = props("PayloadBucketPolicy")
    assert policy["Bucket"] == {"Ref": "PayloadBucket"}
    (statement,) = [s for s in policy["PolicyDocument"]["Statement"] if s["Sid"] == sid]
    return dict(statement)


def test_payload_bucket_policy_grants_nothing() -> None:
    statements = props("PayloadBucketPolicy")["PolicyDocument"]["Statement"]
    assert {s["Effect"] for s in statements} == {"Deny"}  # no public (or any) access
    assert {s["Sid"] for s in statements} == {
        "DenyInsecureTransport",
        "ObjectsOnlyUnderRunPrefixes",
    }


def test_payload_objects_only_under_run_prefixes() -> None:
    statement = bucket_policy_statement("ObjectsOnlyUnderRunPrefixes")
    assert (statement["Effect"], statement["Principal"], statement["Action"]) == (
        "Deny",
        "*",
        "s3:PutObject",
    )
    assert statement["NotResource"] == {"Fn::Sub": "${PayloadBucket.Arn}/runs/*"}
    rule = props("PayloadBucket")["LifecycleConfiguration"]["Rules"][0]
    assert rule["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 1}


RUN_OBJECTS = {"Fn::Sub": "${PayloadBucket.Arn}/runs/*"}


def test_only_the_relay_and_workers_write_payloads() -> None:
    writers = grants("s3:PutObject")
    # The DLQ consumer logs a run's final status, offloaded when huge, as the relay does.
    assert set(writers) == {"RelayTaskRole", "PayloadWriterPolicy", "DlqConsumerFunction"}
    assert all(s["Resource"] == RUN_OBJECTS for found in writers.values() for s in found)
    (worker,) = writers["PayloadWriterPolicy"]
    assert set(actions(worker)) == {"s3:PutObject", "s3:AbortMultipartUpload"}
    assert TEMPLATE["Outputs"]["PayloadWriterPolicyArn"]["Value"] == {"Ref": "PayloadWriterPolicy"}


def test_who_mints_payload_urls_may_read_them_and_knows_the_bucket() -> None:
    # A presigned GET works only if its signer may GetObject: the relay (live frames),
    # the subscribe function (replays) and the trigger (GET /runs/{id}/frames).
    readers = grants("s3:GetObject")
    minters = {"WsSubscribeFunction", "TriggerFunction", "DlqConsumerFunction"}
    assert set(readers) == {"RelayTaskRole", *minters}
    assert all(s["Resource"] == RUN_OBJECTS for found in readers.values() for s in found)
    for function in minters:
        assert function_env(function)["PAYLOAD_BUCKET"] == {"Ref": "PayloadBucket"}
        assert function_env(function)["PAYLOAD_URL_TTL_SECONDS"] == {"Ref": "PayloadUrlTtlSeconds"}
    assert relay_environment()["PAYLOAD_URL_TTL_SECONDS"] == {"Ref": "PayloadUrlTtlSeconds"}
    assert PARAMETERS["PayloadUrlTtlSeconds"]["Default"] == 900
    with_bucket = {f for f in FUNCTIONS if "PAYLOAD_BUCKET" in function_env(f)}
    assert with_bucket == minters


def test_payload_bucket_refuses_plain_http() -> None:
    statement = bucket_policy_statement("DenyInsecureTransport")
    assert statement["Effect"] == "Deny"
    assert statement["Principal"] == "*"
    assert statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert {"Fn::GetAtt": ["PayloadBucket", "Arn"]} in statement["Resource"]
    assert {"Fn::Sub": "${PayloadBucket.Arn}/*"} in statement["Resource"]


def test_token_signing_secret_is_generated() -> None:
    generate = props("TokenSigningSecret")["GenerateSecretString"]
    assert generate["PasswordLength"] >= 32  # hatchway.tokens refuses shorter keys
    assert "SecretString" not in props("TokenSigningSecret")


# -- relay ---------------------------------------------------------------------------


def relay_container() -> dict[str, Any]:
    (container,) = props("RelayTaskDefinition")["ContainerDefinitions"]
    return dict(container)


def relay_environment() -> dict[str, Any]:
    return {e["Name"]: e["Value"] for e in relay_container()["Environment"]}


def test_relay_task_definition() -> None:
    task = props("RelayTaskDefinition")
    assert task["RequiresCompatibilities"] == ["FARGATE"]
    assert task["NetworkMode"] == "awsvpc"
    assert (task["Cpu"], task["Memory"]) == ("512", "1024")
    assert task["TaskRoleArn"] == {"Fn::GetAtt": ["RelayTaskRole", "Arn"]}
    assert task["ExecutionRoleArn"] == {"Fn::GetAtt": ["RelayExecutionRole", "Arn"]}
    container = relay_container()
    assert container["Name"] == "relay"
    assert container["Image"] == {
        "Fn::Sub": "${AWS::AccountId}.dkr.ecr.${AWS::Region}.amazonaws.com/"
        "${RelayRepository}:${RelayImageTag}"
    }
    assert container["Command"] == ["hatchway-relay"]  # exec form: SIGTERM reaches Python
    assert "EntryPoint" not in container
    assert container["StopTimeout"] == 120
    assert container["LogConfiguration"]["LogDriver"] == "awslogs"
    assert container["LogConfiguration"]["Options"]["awslogs-group"] == {"Ref": "RelayLogGroup"}
    assert relay_environment()["TABLE_NAME"] == {"Ref": "HatchwayTable"}
    assert relay_environment()["RUN_QUEUE_URL"] == {"Ref": "RunQueue"}
    assert relay_environment()["PAYLOAD_BUCKET"] == {"Ref": "PayloadBucket"}
    assert container["Secrets"] == [
        {"Name": "HATCHET_CLIENT_TOKEN", "ValueFrom": {"Ref": "HatchetTokenSecretArn"}}
    ]


def test_relay_image_runs_the_same_command() -> None:
    dockerfile = (REPO_ROOT / "Dockerfile").read_text("utf-8")
    cmd = [line for line in dockerfile.splitlines() if line.startswith("CMD ")]
    assert len(cmd) == 1
    assert json.loads(cmd[0].removeprefix("CMD ")) == relay_container()["Command"]
    assert "STOPSIGNAL SIGTERM" in dockerfile
    users = [line.split()[1] for line in dockerfile.splitlines() if line.startswith("USER ")]
    assert users
    assert users[-1] not in ("root", "0", "0:0")
    assert "pip install" in dockerfile
    assert "-c constraints.txt" in dockerfile


def test_relay_service_overlaps_deployments_on_the_given_network() -> None:
    service = props("RelayService")
    assert service["LaunchType"] == "FARGATE"
    assert service["DesiredCount"] == {"Ref": "RelayDesiredCount"}
    assert PARAMETERS["RelayDesiredCount"]["Default"] == 2
    deployment = service["DeploymentConfiguration"]
    assert (deployment["MinimumHealthyPercent"], deployment["MaximumPercent"]) == (100, 200)
    network = service["NetworkConfiguration"]["AwsvpcConfiguration"]
    assert network == {
        "Subnets": {"Ref": "SubnetIds"},
        "SecurityGroups": {"Ref": "SecurityGroupIds"},
        "AssignPublicIp": {"Ref": "AssignPublicIp"},
    }
    assert PARAMETERS["SubnetIds"]["Type"] == "List<AWS::EC2::Subnet::Id>"


def test_relay_repository_and_logs() -> None:
    repository = props("RelayRepository")
    assert repository["ImageScanningConfiguration"] == {"ScanOnPush": True}
    (rule,) = json.loads(repository["LifecyclePolicy"]["LifecyclePolicyText"])["rules"]
    assert rule["selection"]["countType"] == "imageCountMoreThan"
    assert rule["selection"]["countNumber"] == 10
    assert props("RelayLogGroup")["RetentionInDays"] == 30


# -- parameters, outputs, and the emulator's view ------------------------------------


def test_parameters() -> None:
    assert {
        "StageName",
        "RelayImageTag",
        "SubnetIds",
        "SecurityGroupIds",
        "AllowedWorkflows",
        "FrameRetentionSeconds",
        "FrameRetentionDays",
        "HatchetTokenSecretArn",
        "RelayDesiredCount",
        "AssignPublicIp",
        "TriggerAuth",
        "TriggerJwtIssuer",
        "TriggerJwtAudience",
        "HttpThrottlingBurstLimit",
        "HttpThrottlingRateLimit",
        "WebSocketThrottlingBurstLimit",
        "WebSocketThrottlingRateLimit",
        "WebSocketReservedConcurrency",
        "TriggerReservedConcurrency",
    } <= set(PARAMETERS)
    assert "HatchetClientToken" not in PARAMETERS  # the token lives in Secrets Manager


@pytest.mark.parametrize(
    "output",
    [
        "HttpApiUrl",
        "WebSocketUrl",
        "TableName",
        "RunQueueUrl",
        "PayloadBucketName",
        "PayloadWriterPolicyArn",
        "RelayRepositoryUri",
        "TriggerRouteArn",
        "TriggerInvokePolicyArn",
    ],
)
def test_outputs(output: str) -> None:
    assert output in TEMPLATE["Outputs"]


def test_websocket_url_output_is_wss() -> None:
    assert TEMPLATE["Outputs"]["WebSocketUrl"]["Value"]["Fn::Sub"].startswith("wss://")


def test_the_api_gateway_emulator_serves_the_template() -> None:
    api = TemplateReader(TEMPLATE_PATH).api()
    assert api.websocket is not None
    assert api.websocket.stage == "prod"
    assert {k: r.function.logical_id for k, r in api.websocket.routes.items()} == ROUTES
    assert api.websocket.authorizer is not None
    assert api.websocket.authorizer.function.logical_id == "WsAuthorizerFunction"
    assert {r.route_key for r in api.http_routes} == {
        "POST /runs",
        "POST /runs/{runId}/token",
        "GET /runs/{runId}",
        "GET /runs/{runId}/frames",
        "GET /healthz",
        "$default",
    }
    trigger = api.functions["TriggerFunction"]
    assert trigger.timeout_s == 10
    core = (REPO_ROOT / "layers" / "core").resolve()
    assert trigger.layers == (core, core)  # CoreLayer and TriggerLayer, both from layers/core/
    assert trigger.environment["TABLE_NAME"] == "HatchwayTable"  # named by logical id locally


def test_the_websocket_functions_get_only_the_core_layer_and_the_trigger_adds_its_own() -> None:
    for layer in ("CoreLayer", "TriggerLayer"):
        assert RESOURCES[layer]["Metadata"]["BuildMethod"] == "makefile"  # build_layer.py
        assert RESOURCES[layer]["Properties"]["ContentUri"] == "layers/core/"
    assert GLOBAL_FUNCTION["Layers"] == [{"Ref": "CoreLayer"}]
    for name in FUNCTIONS:
        if name in HATCHET_FUNCTIONS:
            assert RESOURCES[name]["Properties"]["Layers"] == [{"Ref": "TriggerLayer"}], name
        else:
            assert "Layers" not in RESOURCES[name]["Properties"], name
    # SAM adds a function's Layers to the global ones; the emulator does the same.
    functions = TemplateReader(TEMPLATE_PATH).api().functions
    assert len(functions["TriggerFunction"].layers) == 2
    assert len(functions["WsConnectFunction"].layers) == 1
