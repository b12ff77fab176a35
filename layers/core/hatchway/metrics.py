"""Hatchway's CloudWatch metrics (Powertools Metrics, EMF): the names, in one place.

The template's alarms, dashboard and scaling policy use these constants, and the
tests check the code emits them (``tests/unit/test_observability_template.py``).
Every metric has one dimension, ``service`` (the process: ``relay``, ``trigger``,
``dlq_consumer``): minimal and stable, so an alarm names exactly what is emitted.
The namespace is the stack's own: the template sets ``POWERTOOLS_METRICS_NAMESPACE``
to ``Hatchway/<stack name>`` for every function and the relay (and its alarms,
dashboard and scaling read that namespace), so two stacks in one account and
region never merge their metrics; without the variable (tests, the local stack)
it is ``Hatchway`` (:func:`namespace`).

The relay is a long-lived process: :class:`RelayMetrics` keeps counters in memory
(the hot path only adds to a dict) and :meth:`RelayMetrics.flush` prints them as
EMF JSON on stdout, every ``FLUSH_S`` and at the stop. ECS ships stdout to
CloudWatch Logs, which extracts the metrics. The functions use Powertools'
``log_metrics`` decorator over :func:`function_metrics`.

List prices for the cost of a run (us-east-1, as in ``benchmarks/relay.py``) are
here too: the relay's ``run finished`` line says what each chunk cost.
"""

from __future__ import annotations

import os
import random
from typing import Final

from aws_lambda_powertools import Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.metrics.provider.cloudwatch_emf.cloudwatch import (
    AmazonCloudWatchEMFProvider,
)

__all__ = ["MetricUnit", "Metrics"]  # re-exported for the functions

NAMESPACE: Final = "Hatchway"  # without NAMESPACE_VARIABLE (tests, the local stack)
NAMESPACE_VARIABLE: Final = "POWERTOOLS_METRICS_NAMESPACE"  # Powertools' own; the template's
STACK_NAMESPACE: Final = "Hatchway/${AWS::StackName}"  # what the template sets it to (Fn::Sub)
DIMENSION: Final = "service"  # Powertools' default dimension, the only one
SERVICE_RELAY: Final = "relay"
SERVICE_TRIGGER: Final = "trigger"
SERVICE_DLQ_CONSUMER: Final = "dlq_consumer"

FLUSH_S: Final = 60.0  # the relay prints its metrics this often (and at the stop)
MAX_LAG_SAMPLES: Final = 300  # DeliveryLagMs values kept per flush (a uniform sample)

# -- the relay ---------------------------------------------------------------------------
RUNS_TAKEN: Final = "RunsTaken"  # runs this relay started following (incl. takeovers)
RUNS_HANDED_OVER: Final = "RunsHandedOver"  # passed to a successor or released at a stop
RUNS_FINISHED: Final = "RunsFinished"  # final status logged and the message deleted
FRAMES_LOGGED: Final = "FramesLogged"
BYTES_LOGGED: Final = "BytesLogged"
LOG_WRITES: Final = "LogWrites"  # log items written (one conditional PutItem each)
POSTS: Final = "Posts"  # PostToConnection calls that got through
POSTS_410: Final = "Posts410"  # the connection was gone
POSTS_429: Final = "Posts429"  # throttled (retried)
GAPS: Final = "Gaps"  # gap frames emitted: chunks lost upstream or skipped seqs
LEASE_LOSSES: Final = "LeaseLosses"  # a run's lease lost while following it
RELAY_ERRORS: Final = "RelayErrors"  # a run handed back on a failure, a loop that failed
HANDOVER_SECONDS: Final = "HandoverSeconds"  # a stop's handover of all its runs
DELIVERY_LAG_MS: Final = "DeliveryLagMs"  # Hatchet event received -> posted (a distribution)
ACTIVE_RUNS: Final = "ActiveRuns"  # runs followed by one task, each heartbeat (a gauge)

# -- the functions -----------------------------------------------------------------------
RUNS_STARTED: Final = "RunsStarted"
RUNS_DEAD_LETTERED: Final = "RunsDeadLettered"

COUNTERS: Final = (
    RUNS_TAKEN,
    RUNS_HANDED_OVER,
    RUNS_FINISHED,
    FRAMES_LOGGED,
    BYTES_LOGGED,
    LOG_WRITES,
    POSTS,
    POSTS_410,
    POSTS_429,
    GAPS,
    LEASE_LOSSES,
    RELAY_ERRORS,
)
UNITS: Final = {
    BYTES_LOGGED: MetricUnit.Bytes,
    HANDOVER_SECONDS: MetricUnit.Seconds,
    DELIVERY_LAG_MS: MetricUnit.Milliseconds,
}

# -- list prices (us-east-1, 2026-12; benchmarks/relay.py) -------------------------------
USD_PER_WRU: Final = 0.625 / 1e6  # DynamoDB on-demand, per write request unit (1 KB)
USD_PER_MESSAGE: Final = 1.00 / 1e6  # API Gateway WebSocket, per message (each 32 KB counts one)
MESSAGE_UNIT_BYTES: Final = 32 * 1024
WRU_BYTES: Final = 1024


def message_units(size: int) -> int:
    """API Gateway bills a WebSocket message per 32 KB."""
    return max(1, -(-size // MESSAGE_UNIT_BYTES))


def write_units(size: int) -> int:
    """DynamoDB bills a write per 1 KB of item."""
    return max(1, -(-size // WRU_BYTES))


def usd_per_chunk(*, chunks: int, message_units: int, write_units: int) -> float:
    """What a run's chunks cost at list prices: its messages and its log writes."""
    usd = message_units * USD_PER_MESSAGE + write_units * USD_PER_WRU
    return usd / max(1, chunks)


def namespace() -> str:
    """This process's metrics namespace: the stack's (``Hatchway/<stack>``, from the
    template), else ``Hatchway``. Read when a function's or the relay's metrics are made."""
    return os.environ.get(NAMESPACE_VARIABLE) or NAMESPACE


def function_metrics(service: str) -> Metrics:
    """A function's metrics, for ``@metrics.log_metrics`` (flushed per invocation).

    Its own sets of metrics and dimensions: Powertools' ``Metrics()`` shares them
    among all its instances in a process, which would mix two services' metrics."""
    provider = AmazonCloudWatchEMFProvider(
        metric_set={},
        dimension_set={},
        metadata_set={},
        default_dimensions={},
        namespace=namespace(),
        service=service,
    )
    return Metrics(namespace=provider.namespace, service=service, provider=provider)


class RelayMetrics:
    """The relay's metrics in memory, printed as EMF by :meth:`flush`."""

    def __init__(self, service: str = SERVICE_RELAY) -> None:
        self.counts: dict[str, float] = dict.fromkeys(COUNTERS, 0)
        self.lags_ms: list[float] = []
        self._lags_seen = 0
        self.handover_seconds: float | None = None
        self.active_runs: list[int] = []  # gauge readings since the last flush
        self._metrics = function_metrics(service)

    def add(self, name: str, value: float = 1) -> None:
        self.counts[name] += value

    def lag(self, ms: float) -> None:
        """One delivery lag; at most MAX_LAG_SAMPLES per flush, a uniform sample
        of all of them (reservoir), so a busy relay prints a bounded line."""
        self._lags_seen += 1
        if len(self.lags_ms) < MAX_LAG_SAMPLES:
            self.lags_ms.append(ms)
            return
        slot = random.randrange(self._lags_seen)  # noqa: S311 - sampling, not security
        if slot < MAX_LAG_SAMPLES:
            self.lags_ms[slot] = ms

    def gauge_active_runs(self, runs: int) -> None:
        self.active_runs.append(runs)

    def flush(self) -> None:
        """Print what was counted since the last flush (EMF JSON, one line per 100
        values at most) and start again. Counters print even when zero, so alarms
        and scaling see a value every minute."""
        metrics = self._metrics
        for name, value in self.counts.items():
            metrics.add_metric(name=name, unit=UNITS.get(name, MetricUnit.Count), value=value)
        for ms in self.lags_ms:
            metrics.add_metric(name=DELIVERY_LAG_MS, unit=MetricUnit.Milliseconds, value=ms)
        for runs in self.active_runs:
            metrics.add_metric(name=ACTIVE_RUNS, unit=MetricUnit.Count, value=runs)
        if self.handover_seconds is not None:
            metrics.add_metric(
                name=HANDOVER_SECONDS, unit=MetricUnit.Seconds, value=self.handover_seconds
            )
        metrics.flush_metrics()
        self.counts = dict.fromkeys(COUNTERS, 0)
        self.lags_ms = []
        self._lags_seen = 0
        self.active_runs = []
        self.handover_seconds = None
