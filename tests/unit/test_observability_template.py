"""The template's scaling, alarms and dashboard name what the code emits: the names
and dimensions are hatchway/metrics.py's constants, and the relay's own EMF output
(a run followed through the relay, ``test_relay_metrics``) holds each metric an
alarm or the scaling policy reads, with the same namespace and dimensions."""

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


def of_type(kind: str) -> dict[str, dict[str, Any]]:
    return {name: r for name, r in RESOURCES.items() if r["Type"] == kind}


ALARMS = of_type("AWS::CloudWatch::Alarm")


def dimensions(pairs: list[dict[str, Any]]) -> dict[str, Any]:
    return {d["Name"]: d["Value"] for d in pairs}


def relay_dimensions() -> list[dict[str, str]]:
    return [{"Name": m.DIMENSION, "Value": m.SERVICE_RELAY}]


@pytest.fixture
async def relay_emf(capsys: pytest.CaptureFixture[str]) -> dict[str, dict[str, Any]]:
    """What the relay really prints after following a run (and a heartbeat)."""
    relay, _, _ = await follow_one_run()
    capsys.readouterr()
    relay.metrics.flush()
    return emitted(emf_lines(capsys.readouterr().out))


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
    for parameter in ("RelayMinCapacity", "RelayMaxCapacity", "RelayTargetActiveRuns"):
        assert PARAMETERS[parameter]["Type"] == "Number"


async def test_target_tracking_reads_active_runs_per_task_as_the_relay_prints_it(
    relay_emf: dict[str, dict[str, Any]],
) -> None:
    policies = of_type("AWS::ApplicationAutoScaling::ScalingPolicy")
    assert set(policies) == {"RelayActiveRunsScaling"}
    policy = policies["RelayActiveRunsScaling"]
    assert policy["Condition"] == "RelayRuns"
    properties = policy["Properties"]
    assert properties["PolicyType"] == "TargetTrackingScaling"
    assert properties["ScalingTargetId"] == {"Ref": "RelayScalableTarget"}
    configuration = properties["TargetTrackingScalingPolicyConfiguration"]
    assert configuration["TargetValue"] == {"Ref": "RelayTargetActiveRuns"}
    metric = configuration["CustomizedMetricSpecification"]
    assert metric["Namespace"] == m.NAMESPACE
    assert metric["MetricName"] == m.ACTIVE_RUNS
    assert metric["Dimensions"] == relay_dimensions()
    assert metric["Statistic"] == "Average"

    printed = relay_emf[m.ACTIVE_RUNS]
    assert printed["namespace"] == metric["Namespace"]
    assert printed["dimension_values"] == dimensions(metric["Dimensions"])
    assert printed["unit"] == metric["Unit"]


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
    own = {n: a for n, a in ALARMS.items() if a["Properties"].get("Namespace") == m.NAMESPACE}
    assert set(own) == set(HATCHWAY_ALARMS)
    for name, (metric, service) in HATCHWAY_ALARMS.items():
        properties = own[name]["Properties"]
        assert properties["MetricName"] == metric, name
        assert properties["Dimensions"] == [{"Name": m.DIMENSION, "Value": service}], name
        if service == m.SERVICE_RELAY:  # the dead-letter count: test_relay_metrics
            printed = relay_emf[metric]
            assert printed["namespace"] == m.NAMESPACE
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
        if row[0] != m.NAMESPACE:
            continue
        name = row[1]
        shown.add(name)
        assert row[2:4] == [m.DIMENSION, services.get(name, m.SERVICE_RELAY)], name
        if name not in services and name != m.HANDOVER_SECONDS:  # that one: at a stop
            assert name in relay_emf, name  # the relay really prints it
    assert {*m.COUNTERS, m.ACTIVE_RUNS, m.DELIVERY_LAG_MS, m.HANDOVER_SECONDS} <= shown
    assert set(services) <= shown
