"""The template's scaling, alarms and dashboard name what the code emits: the names
and dimensions are hatchway/metrics.py's constants, and the relay's own EMF output
(a run followed through the relay, ``test_relay_metrics``) holds each metric an
alarm or the scaling policy reads, with the same namespace and dimensions. The
namespace is the stack's: the template sets it for every function and the relay,
and the relay, given that variable, prints exactly what the alarms read. Also the
second scaling policy (the run queue's backlog per task) and the APIs' access logs."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from hatchway import metrics as m
from hatchway_local.apigw_emulator.template import load_template
from tests.conftest import REPO_ROOT
from tests.unit.test_relay_metrics import emf_lines, emitted, follow_one_run

TEMPLATE = load_template(REPO_ROOT / "template.yaml")
RESOURCES: dict[str, Any] = TEMPLATE["Resources"]
PARAMETERS: dict[str, Any] = TEMPLATE["Parameters"]
FUNCTIONS = {name for name, r in RESOURCES.items() if r["Type"] == "AWS::Serverless::Function"}
ALARM_ACTIONS = {"Fn::If": ["HasAlarmTopic", [{"Ref": "AlarmTopicArn"}], {"Ref": "AWS::NoValue"}]}
STACK = "hatchway-staging"  # a stack name, as CloudFormation resolves AWS::StackName
NAMESPACE = {"Fn::Sub": m.STACK_NAMESPACE}  # the stack's own namespace, in the template


def resolved(value: Any) -> Any:
    """A namespace as CloudFormation resolves it in stack STACK."""
    if isinstance(value, dict) and set(value) == {"Fn::Sub"}:
        return value["Fn::Sub"].replace("${AWS::StackName}", STACK)
    return value


def of_type(kind: str) -> dict[str, dict[str, Any]]:
    return {name: r for name, r in RESOURCES.items() if r["Type"] == kind}


ALARMS = of_type("AWS::CloudWatch::Alarm")


def dimensions(pairs: list[dict[str, Any]]) -> dict[str, Any]:
    return {d["Name"]: d["Value"] for d in pairs}


def relay_dimensions() -> list[dict[str, str]]:
    return [{"Name": m.DIMENSION, "Value": m.SERVICE_RELAY}]


@pytest.fixture
async def relay_emf(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> dict[str, dict[str, Any]]:
    """What the relay really prints after following a run (and a heartbeat), with
    the environment the template gives its container in stack STACK."""
    monkeypatch.setenv(m.NAMESPACE_VARIABLE, resolved(relay_environment()[m.NAMESPACE_VARIABLE]))
    relay, _, _ = await follow_one_run()
    capsys.readouterr()
    relay.metrics.flush()
    return emitted(emf_lines(capsys.readouterr().out))


def relay_environment() -> dict[str, Any]:
    (container,) = RESOURCES["RelayTaskDefinition"]["Properties"]["ContainerDefinitions"]
    return {variable["Name"]: variable["Value"] for variable in container["Environment"]}


def test_every_function_and_the_relay_emit_in_the_stack_s_own_namespace() -> None:
    """Two stacks in one account never merge: each sets Hatchway/<stack> for all its
    processes, and nothing overrides it."""
    globals_ = TEMPLATE["Globals"]["Function"]["Environment"]["Variables"]
    assert globals_[m.NAMESPACE_VARIABLE] == NAMESPACE
    for name in FUNCTIONS:
        own = RESOURCES[name]["Properties"].get("Environment", {}).get("Variables", {})
        assert m.NAMESPACE_VARIABLE not in own, name
    assert relay_environment()[m.NAMESPACE_VARIABLE] == NAMESPACE
    assert resolved(NAMESPACE) == f"Hatchway/{STACK}"


def test_a_function_s_metrics_take_the_namespace_the_template_sets(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(m.NAMESPACE_VARIABLE, resolved(NAMESPACE))
    metrics = m.function_metrics(m.SERVICE_TRIGGER)
    metrics.add_metric(name=m.RUNS_STARTED, unit=m.MetricUnit.Count, value=1)
    capsys.readouterr()
    metrics.flush_metrics()
    printed = emitted(emf_lines(capsys.readouterr().out))[m.RUNS_STARTED]
    assert printed["namespace"] == f"Hatchway/{STACK}"
    assert printed["dimension_values"] == {m.DIMENSION: m.SERVICE_TRIGGER}
    monkeypatch.delenv(m.NAMESPACE_VARIABLE)
    assert m.namespace() == m.NAMESPACE  # tests and the local stack


def test_the_relay_scales_between_two_parameters_with_the_service_linked_role() -> None:
    target = RESOURCES["RelayScalableTarget"]
    assert target["Type"] == "AWS::ApplicationAutoScaling::ScalableTarget"
    assert target["Condition"] == "RelayRuns"  # no scaling while no image exists (first pass)
    assert TEMPLATE["Conditions"]["RelayRuns"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "RelayDesiredCount"}, 0]}]
    }
    properties = target["Properties"]
    assert properties["ServiceNamespace"] == "ecs"
    assert properties["ScalableDimension"] == "ecs:service:DesiredCount"
    assert properties["ResourceId"] == {"Fn::Sub": "service/${RelayCluster}/${RelayService.Name}"}
    assert properties["MinCapacity"] == {"Ref": "RelayMinCapacity"}
    assert properties["MaxCapacity"] == {"Ref": "RelayMaxCapacity"}
    assert "RoleARN" not in properties  # the service-linked role
    for parameter in (
        "RelayMinCapacity",
        "RelayMaxCapacity",
        "RelayTargetActiveRuns",
        "RelayTargetBacklogPerTask",
    ):
        assert PARAMETERS[parameter]["Type"] == "Number"


async def test_target_tracking_reads_active_runs_per_task_as_the_relay_prints_it(
    relay_emf: dict[str, dict[str, Any]],
) -> None:
    policies = of_type("AWS::ApplicationAutoScaling::ScalingPolicy")
    assert set(policies) == {"RelayActiveRunsScaling", "RelayBacklogScaling"}
    policy = policies["RelayActiveRunsScaling"]
    assert policy["Condition"] == "RelayRuns"
    properties = policy["Properties"]
    assert properties["PolicyType"] == "TargetTrackingScaling"
    assert properties["ScalingTargetId"] == {"Ref": "RelayScalableTarget"}
    configuration = properties["TargetTrackingScalingPolicyConfiguration"]
    assert configuration["TargetValue"] == {"Ref": "RelayTargetActiveRuns"}
    assert "DisableScaleIn" not in configuration  # this policy alone scales in
    metric = configuration["CustomizedMetricSpecification"]
    assert metric["Namespace"] == NAMESPACE
    assert metric["MetricName"] == m.ACTIVE_RUNS
    assert metric["Dimensions"] == relay_dimensions()
    assert metric["Statistic"] == "Average"

    printed = relay_emf[m.ACTIVE_RUNS]
    assert printed["namespace"] == resolved(metric["Namespace"])
    assert printed["dimension_values"] == dimensions(metric["Dimensions"])
    assert printed["unit"] == metric["Unit"]


def test_backlog_per_task_is_the_run_queue_s_visible_runs_over_the_running_tasks() -> None:
    policy = RESOURCES["RelayBacklogScaling"]
    assert policy["Condition"] == "RelayRuns"
    properties = policy["Properties"]
    assert properties["PolicyType"] == "TargetTrackingScaling"
    assert properties["ScalingTargetId"] == {"Ref": "RelayScalableTarget"}
    configuration = properties["TargetTrackingScalingPolicyConfiguration"]
    assert configuration["TargetValue"] == {"Ref": "RelayTargetBacklogPerTask"}
    assert PARAMETERS["RelayTargetBacklogPerTask"]["MinValue"] >= 1
    # An empty queue says nothing about how many tasks the runs need: scale-in is
    # RelayActiveRunsScaling's alone (Application Auto Scaling scales out on either).
    assert configuration["DisableScaleIn"] is True
    queries = {q["Id"]: q for q in configuration["CustomizedMetricSpecification"]["Metrics"]}
    returned = [q for q in queries.values() if q["ReturnData"]]
    assert len(returned) == 1  # target tracking needs exactly one time series
    (total,) = returned
    stats = {i: q["MetricStat"] for i, q in queries.items() if "MetricStat" in q}
    backlog = [i for i, s in stats.items() if s["Metric"]["Namespace"] == "AWS/SQS"]
    tasks = [i for i, s in stats.items() if s["Metric"]["Namespace"] == "ECS/ContainerInsights"]
    assert len(backlog) == len(tasks) == 1
    assert set(stats) == {*backlog, *tasks}
    queue = stats[backlog[0]]["Metric"]
    assert queue["MetricName"] == "ApproximateNumberOfMessagesVisible"  # waiting, not in flight
    assert dimensions(queue["Dimensions"]) == {
        "QueueName": {"Fn::GetAtt": ["RunQueue", "QueueName"]}
    }
    running = stats[tasks[0]]["Metric"]
    assert running["MetricName"] == "RunningTaskCount"
    assert dimensions(running["Dimensions"]) == {
        "ClusterName": {"Ref": "RelayCluster"},
        "ServiceName": {"Fn::GetAtt": ["RelayService", "Name"]},
    }
    # Container Insights publishes RunningTaskCount only where it is enabled.
    assert {"Name": "containerInsights", "Value": "enabled"} in RESOURCES["RelayCluster"][
        "Properties"
    ]["ClusterSettings"]
    assert total["Expression"] == f"IF({tasks[0]} > 0, {backlog[0]} / {tasks[0]}, {backlog[0]})"
    for query in queries.values():  # metric math ids: lower-case letters and digits
        assert re.fullmatch(r"[a-z][a-z0-9]*", query["Id"]), query["Id"]


def backlog_per_task(expression: str, backlog: float, tasks: float) -> float:
    """The policy's expression, evaluated as CloudWatch would for one data point."""
    match = re.fullmatch(r"IF\((\w+) > 0, (\w+) / (\w+), (\w+)\)", expression)
    assert match
    values = {"backlog": backlog, "tasks": tasks}
    condition, numerator, denominator, otherwise = match.groups()
    if values[condition] > 0:
        return values[numerator] / values[denominator]
    return values[otherwise]


def test_backlog_per_task_scales_out_also_when_no_task_runs() -> None:
    queries = RESOURCES["RelayBacklogScaling"]["Properties"][
        "TargetTrackingScalingPolicyConfiguration"
    ]["CustomizedMetricSpecification"]["Metrics"]
    (expression,) = [q["Expression"] for q in queries if "Expression" in q]
    assert backlog_per_task(expression, backlog=40, tasks=2) == 20
    assert backlog_per_task(expression, backlog=0, tasks=2) == 0
    assert backlog_per_task(expression, backlog=15, tasks=0) == 15  # no division by zero


# alarm -> (metric, service) for the alarms on Hatchway's own metrics
HATCHWAY_ALARMS = {
    "RelayErrorsAlarm": (m.RELAY_ERRORS, m.SERVICE_RELAY),
    "RelayLeaseLossesAlarm": (m.LEASE_LOSSES, m.SERVICE_RELAY),
    "DeliveryLagAlarm": (m.DELIVERY_LAG_MS, m.SERVICE_RELAY),
    "RunsDeadLetteredAlarm": (m.RUNS_DEAD_LETTERED, m.SERVICE_DLQ_CONSUMER),
}


async def test_alarms_on_hatchway_metrics_name_what_the_code_emits(
    relay_emf: dict[str, dict[str, Any]],
) -> None:
    own = {n: a for n, a in ALARMS.items() if a["Properties"].get("Namespace") == NAMESPACE}
    assert set(own) == set(HATCHWAY_ALARMS)
    for name, (metric, service) in HATCHWAY_ALARMS.items():
        properties = own[name]["Properties"]
        assert properties["MetricName"] == metric, name
        assert properties["Dimensions"] == [{"Name": m.DIMENSION, "Value": service}], name
        if service == m.SERVICE_RELAY:  # the dead-letter count: test_relay_metrics
            printed = relay_emf[metric]
            assert printed["namespace"] == resolved(NAMESPACE)
            assert printed["dimension_values"] == dimensions(properties["Dimensions"])


def test_delivery_lag_alarms_on_its_p99() -> None:
    properties = ALARMS["DeliveryLagAlarm"]["Properties"]
    assert properties["ExtendedStatistic"] == "p99"
    assert "Statistic" not in properties
    assert properties["Threshold"] == {"Ref": "DeliveryLagP99AlarmMs"}


def test_the_dead_letter_queue_s_depth_alarms() -> None:
    properties = ALARMS["DeadLetterQueueAlarm"]["Properties"]
    assert (properties["Namespace"], properties["MetricName"]) == (
        "AWS/SQS",
        "ApproximateNumberOfMessagesVisible",
    )
    assert dimensions(properties["Dimensions"]) == {
        "QueueName": {"Fn::GetAtt": ["RunDeadLetterQueue", "QueueName"]}
    }
    assert (properties["Threshold"], properties["ComparisonOperator"]) == (
        0,
        "GreaterThanThreshold",
    )


def test_both_apis_alarm_on_their_server_errors() -> None:
    http = ALARMS["HttpApi5xxAlarm"]["Properties"]
    assert (http["Namespace"], http["MetricName"]) == ("AWS/ApiGateway", "5xx")
    assert dimensions(http["Dimensions"]) == {"ApiId": {"Ref": "HttpApi"}}
    for alarm, metric in (
        ("WebSocketIntegrationErrorAlarm", "IntegrationError"),
        ("WebSocketExecutionErrorAlarm", "ExecutionError"),
    ):
        properties = ALARMS[alarm]["Properties"]
        assert (properties["Namespace"], properties["MetricName"]) == ("AWS/ApiGateway", metric)
        assert dimensions(properties["Dimensions"]) == {
            "ApiId": {"Ref": "WebSocketApi"},
            "Stage": {"Ref": "StageName"},
        }


def test_throttles_of_every_function_alarm() -> None:
    queries = ALARMS["LambdaThrottlesAlarm"]["Properties"]["Metrics"]
    stats = [q["MetricStat"] for q in queries if "MetricStat" in q]
    assert {(s["Metric"]["Namespace"], s["Metric"]["MetricName"]) for s in stats} == {
        ("AWS/Lambda", "Throttles")
    }
    named = {dimensions(s["Metric"]["Dimensions"])["FunctionName"]["Ref"] for s in stats}
    assert named == FUNCTIONS
    (total,) = [q for q in queries if q.get("ReturnData")]
    ids = {q["Id"] for q in queries if "MetricStat" in q}
    assert set(re.findall(r"[a-z]+", total["Expression"])) == ids  # the sum of all of them


def test_every_alarm_notifies_the_optional_topic() -> None:
    assert PARAMETERS["AlarmTopicArn"]["Default"] == ""
    assert TEMPLATE["Conditions"]["HasAlarmTopic"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "AlarmTopicArn"}, ""]}]
    }
    assert ALARMS
    for name, alarm in ALARMS.items():
        assert alarm["Properties"]["AlarmActions"] == ALARM_ACTIONS, name
        assert alarm["Properties"]["OKActions"] == ALARM_ACTIONS, name


def dashboard_metrics() -> list[list[Any]]:
    body, _variables = RESOURCES["HatchwayDashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
    body = body.replace("${AWS::StackName}", STACK)
    document = json.loads(re.sub(r"\$\{[^}]+\}", "x", body))
    return [row for widget in document["widgets"] for row in widget["properties"]["metrics"]]


async def test_the_dashboard_shows_the_metrics_the_code_emits(
    relay_emf: dict[str, dict[str, Any]],
) -> None:
    services = {
        m.RUNS_STARTED: m.SERVICE_TRIGGER,
        m.RUNS_DEAD_LETTERED: m.SERVICE_DLQ_CONSUMER,
    }
    shown: set[str] = set()
    for row in dashboard_metrics():
        if row[0] != resolved(NAMESPACE):
            assert not row[0].startswith("Hatchway"), row  # every own metric: the stack's
            continue
        name = row[1]
        shown.add(name)
        assert row[2:4] == [m.DIMENSION, services.get(name, m.SERVICE_RELAY)], name
        if name not in services and name != m.HANDOVER_SECONDS:  # that one: at a stop
            assert name in relay_emf, name  # the relay really prints it
            assert relay_emf[name]["namespace"] == row[0], name
    assert {*m.COUNTERS, m.ACTIVE_RUNS, m.DELIVERY_LAG_MS, m.HANDOVER_SECONDS} <= shown
    assert set(services) <= shown


# -- access logs ------------------------------------------------------------------------


def log_group(reference: dict[str, Any]) -> dict[str, Any]:
    assert reference == {"Fn::GetAtt": [reference["Fn::GetAtt"][0], "Arn"]}
    group = RESOURCES[reference["Fn::GetAtt"][0]]
    assert group["Type"] == "AWS::Logs::LogGroup"
    assert group["DeletionPolicy"] == "Delete"  # gone with the stack, like the others
    assert group["Properties"]["RetentionInDays"] == 30
    return group


def access_log_fields(settings: dict[str, Any]) -> dict[str, str]:
    fields: dict[str, str] = json.loads(settings["Format"])  # one JSON object per line
    assert "\n" not in settings["Format"]
    assert all(value.startswith("$context.") for value in fields.values())
    return fields


def test_the_http_api_writes_access_logs_to_its_own_group() -> None:
    settings = RESOURCES["HttpApi"]["Properties"]["AccessLogSettings"]
    group = log_group(settings["DestinationArn"])
    assert group["Properties"]["LogGroupName"] == {
        "Fn::Sub": "/aws/apigateway/${AWS::StackName}-http"
    }
    fields = access_log_fields(settings)
    assert fields["requestId"] == "$context.requestId"
    assert fields["routeKey"] == "$context.routeKey"
    assert fields["status"] == "$context.status"
    assert fields["integrationError"] == "$context.integrationErrorMessage"
    # No query string or header: a run token may ride in either.
    assert not [v for v in fields.values() if "querystring" in v.lower() or "header" in v]


def test_the_websocket_stage_writes_access_logs_with_the_connection_and_its_run() -> None:
    stage = RESOURCES["WebSocketStage"]["Properties"]
    settings = stage["AccessLogSettings"]
    group = log_group(settings["DestinationArn"])
    assert group["Properties"]["LogGroupName"] == {
        "Fn::Sub": "/aws/apigateway/${AWS::StackName}-websocket"
    }
    fields = access_log_fields(settings)
    assert fields["requestId"] == "$context.requestId"
    assert fields["routeKey"] == "$context.routeKey"
    assert fields["status"] == "$context.status"
    assert fields["connectionId"] == "$context.connectionId"
    assert fields["eventType"] == "$context.eventType"
    assert fields["runId"] == "$context.authorizer.principalId"  # the authorizer's principal
    assert not [v for v in fields.values() if "querystring" in v.lower() or "header" in v]


def test_the_websocket_stage_logs_with_the_account_s_role_made_once_and_kept() -> None:
    """REST and WebSocket APIs log through one account-wide role: made by the stack
    (and kept when it goes, since other APIs use it) or already there."""
    parameter = PARAMETERS["ApiGatewayCloudWatchRole"]
    assert parameter["AllowedValues"] == ["create", "existing"]
    assert parameter["Default"] == "create"
    condition = "CreateApiGatewayCloudWatchRole"
    assert TEMPLATE["Conditions"][condition] == {
        "Fn::Equals": [{"Ref": "ApiGatewayCloudWatchRole"}, "create"]
    }
    account = RESOURCES["ApiGatewayAccount"]
    role = RESOURCES["ApiGatewayCloudWatchLogsRole"]
    for resource in (account, role):
        assert resource["Condition"] == condition
        assert resource["DeletionPolicy"] == resource["UpdateReplacePolicy"] == "Retain"
    assert account["Properties"]["CloudWatchRoleArn"] == {
        "Fn::GetAtt": ["ApiGatewayCloudWatchLogsRole", "Arn"]
    }
    (statement,) = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert statement["Principal"] == {"Service": "apigateway.amazonaws.com"}
    assert role["Properties"]["ManagedPolicyArns"] == [
        {
            "Fn::Sub": "arn:${AWS::Partition}:iam::aws:policy/service-role/"
            "AmazonAPIGatewayPushToCloudWatchLogs"
        }
    ]
    # The stage waits for the account setting when the stack makes it (no conditional DependsOn).
    tags = RESOURCES["WebSocketStage"]["Properties"]["Tags"]
    assert tags["CloudWatchRole"] == {
        "Fn::If": [condition, {"Ref": "ApiGatewayAccount"}, "existing"]
    }
