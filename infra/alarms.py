"""The alarms every function gets: errors, throttles, p99 duration and (when it has one) DLQ
depth, all sent to the stage's alarm topic."""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as actions
from aws_cdk import aws_lambda as lambda_
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
    alarms = []
    for name, metric, threshold, why in specs:
        alarm = cloudwatch.Alarm(
            scope, f"{name}Alarm", metric=metric, threshold=threshold, evaluation_periods=1,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING, alarm_description=why)
        alarm.add_alarm_action(actions.SnsAction(topic))
        alarms.append(alarm)
    return alarms
