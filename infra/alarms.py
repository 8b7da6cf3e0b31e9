"""The stage's alarms, all sent to its alarm topic: every function's errors, throttles, p99
duration and (when it has one) DLQ depth; each API route's 5xx responses (handled 500/503s
included: API Gateway counts what the function returned) and p99 latency; the database's CPU,
connections, freeable memory and deadlocks."""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as actions
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_rds as rds
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sqs as sqs
from constructs import Construct

PERIOD = Duration.minutes(5)


def function_alarms(scope: Construct, fn: lambda_.IFunction, timeout: Duration,
                    topic: sns.ITopic, dlq: sqs.IQueue | None = None) -> list[cloudwatch.Alarm]:
    """Alarm when anything fails, is throttled, runs close to its timeout, or lands in the DLQ."""
    p99 = fn.metric_duration(statistic="p99", period=PERIOD)
    specs: list[tuple[str, cloudwatch.IMetric, float, str]] = [
        ("Errors", fn.metric_errors(period=PERIOD), 1, "any invocation error"),
        ("Throttles", fn.metric_throttles(period=PERIOD), 1, "any throttled invocation"),
        ("DurationP99", p99, timeout.to_milliseconds() * 0.8, "p99 duration above 80% of timeout"),
    ]
    if dlq is not None:
        specs.append(("DlqDepth", dlq.metric_approximate_number_of_messages_visible(
            period=PERIOD, statistic="Maximum"), 1, "a failed async event waits in the DLQ"))
    return [alarm(scope, name, metric, threshold, why, topic)
            for name, metric, threshold, why in specs]


def alarm(scope: Construct, name: str, metric: cloudwatch.IMetric, threshold: float, why: str,
          topic: sns.ITopic, below: bool = False, periods: int = 1) -> cloudwatch.Alarm:
    """An alarm at `threshold` or above (`below`: at or under it), sent to `topic`."""
    made = cloudwatch.Alarm(
        scope, f"{name}Alarm", metric=metric, threshold=threshold, evaluation_periods=periods,
        comparison_operator=cloudwatch.ComparisonOperator.LESS_THAN_OR_EQUAL_TO_THRESHOLD
        if below else cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
        treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING, alarm_description=why)
    made.add_alarm_action(actions.SnsAction(topic))
    return made


def database_alarms(scope: Construct, cluster: rds.DatabaseCluster, topic: sns.ITopic,
                    connections: int) -> list[cloudwatch.Alarm]:
    """CPU at 80% for 15 minutes, `connections` or more, under 256 MiB freeable memory, any
    deadlock."""
    return [
        alarm(scope, "DatabaseCpu", cluster.metric_cpu_utilization(period=PERIOD), 80,
              "database CPU at 80% or more for 15 minutes", topic, periods=3),
        alarm(scope, "DatabaseConnections",
              cluster.metric_database_connections(period=PERIOD, statistic="Maximum"),
              connections, f"{connections} or more database connections", topic),
        alarm(scope, "DatabaseMemory",
              cluster.metric_freeable_memory(period=PERIOD, statistic="Minimum"),
              256 * 1024 * 1024, "under 256 MiB of freeable memory", topic, below=True),
        alarm(scope, "DatabaseDeadlocks", cluster.metric_deadlocks(period=PERIOD, statistic="Sum"),
              1, "a deadlock", topic),
    ]


def route_alarms(scope: Construct, name: str, api_id: str, method: str, path: str,
                 topic: sns.ITopic, latency_ms: int) -> list[cloudwatch.Alarm]:
    """Any 5xx response of the route, and its p99 latency at `latency_ms` or more (API
    Gateway's detailed metrics: dimensions ApiId, Stage, Method, Resource)."""
    dimensions = {"ApiId": api_id, "Stage": "$default", "Method": method, "Resource": path}

    def metric(metric_name: str, statistic: str) -> cloudwatch.Metric:
        return cloudwatch.Metric(namespace="AWS/ApiGateway", metric_name=metric_name,
                                 dimensions_map=dimensions, period=PERIOD, statistic=statistic)

    return [alarm(scope, f"{name}5xx", metric("5xx", "Sum"), 1,
                  f"{method} {path}: a 5xx response", topic),
            alarm(scope, f"{name}Latency", metric("Latency", "p99"), latency_ms,
                  f"{method} {path}: p99 latency {latency_ms} ms or more", topic)]
