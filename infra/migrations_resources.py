"""The migrator function and its custom resources: expand runs before the app functions
change, contract after all of them did, and the backfill start after contract (it starts the
backfill runner and does not wait for it); the backfill alarms."""

from __future__ import annotations

from pathlib import Path

from aws_cdk import CustomResource, Duration, RemovalPolicy, Stack, Token
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cloudwatch_actions
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as events_targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_rds as rds
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import aws_sns as sns
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk import custom_resources as cr
from constructs import Construct, IConstruct

from .alarms import function_alarms
from .bundling import Target, migrator_code, worker_image
from .db_stack import log_retention
from .fingerprint import MigrationsFingerprint
from .settings import StageSettings

RESOURCE_TYPE = "Custom::SvcmigMigrations"
BACKFILLS_RESOURCE_TYPE = "Custom::SvcmigBackfills"
BACKFILL_START_TIMEOUT = Duration.minutes(5)  # CloudFormation's wait for the start's answer
BACKFILL_CHECK_INTERVAL = Duration.minutes(5)  # the schedule that counts failed/stalled ones
OPERATIONS_TIMEOUT = Duration.minutes(5)
FRAMEWORK_TIMEOUT = Duration.minutes(15)  # the Provider framework's own function
STARTER_TIMEOUT = Duration.minutes(1)  # on_event starts a task; is_complete reads a row
WORKER_CONTAINER = "worker"
POLL_INTERVAL = Duration.seconds(20)
START_ALLOWANCE = Duration.minutes(4)  # Fargate's start (image pull) before the run's budget
ANSWER_ALLOWANCE = Duration.minutes(2)  # the last poll and the framework's answer


def cdk_token_port(cluster: rds.DatabaseCluster) -> str:
    return Token.as_string(cluster.cluster_endpoint.port)


class Migrations(Construct):
    """`expand` and `contract` custom resources through a CDK `Provider` whose `on_event`
    handler is the migrator. Their properties carry the migrations hash and code heads, so
    CloudFormation calls the migrator exactly when a migration file changed.

    Call `run_before(fn)` for each app function and `run_after(fn)` to order the phases."""

    def __init__(self, scope: Construct, construct_id: str, *, root: Path, target: Target,
                 runtime: lambda_.Runtime, stage: StageSettings,
                 fingerprint: MigrationsFingerprint, vpc: ec2.IVpc,
                 security_group: ec2.ISecurityGroup, cluster: rds.DatabaseCluster,
                 master_secret: secretsmanager.ISecret,
                 app_secrets: dict[str, secretsmanager.ISecret],
                 alarm_topic: sns.ITopic) -> None:
        super().__init__(scope, construct_id)
        removal = RemovalPolicy.RETAIN if stage.retain_data else RemovalPolicy.DESTROY
        retention = log_retention(stage.log_retention_days)
        code = migrator_code(root, target)
        database = {
            "SVCMIG_MASTER_SECRET_ARN": master_secret.secret_arn,
            # The cluster's writer endpoint, never the proxy: advisory locks need a session.
            "SVCMIG_DB_HOST": cluster.cluster_endpoint.hostname,
            "SVCMIG_DB_PORT": cdk_token_port(cluster),
            "SVCMIG_DB_SSLMODE": "require",
        }
        isolated = ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_ISOLATED)

        # The worker: the migrator's bundle in a Fargate task, one per run, where a migration
        # has the custom resource's whole time instead of Lambda's 15 minutes.
        workers = ecs.Cluster(self, "Workers", vpc=vpc,
                              container_insights_v2=ecs.ContainerInsights.ENABLED)
        worker = ecs.FargateTaskDefinition(
            self, "Worker", cpu=1024, memory_limit_mib=2048,
            runtime_platform=ecs.RuntimePlatform(
                cpu_architecture=ecs.CpuArchitecture.ARM64,
                operating_system_family=ecs.OperatingSystemFamily.LINUX))
        worker_logs = logs.LogGroup(self, "WorkerLogs", retention=retention,
                                    removal_policy=removal)
        worker.add_container(
            WORKER_CONTAINER, image=worker_image(self, root, target),
            logging=ecs.LogDrivers.aws_logs(stream_prefix="run", log_group=worker_logs),
            readonly_root_filesystem=True,
            environment={**database, "SVCMIG_APP_SECRETS": Stack.of(self).to_json_string(
                {name: s.secret_arn for name, s in sorted(app_secrets.items())})})
        master_secret.grant_read(worker.task_role)
        for secret in app_secrets.values():
            secret.grant_read(worker.task_role)
        budget = Duration.minutes(stage.migration_timeout_minutes)

        def migrator_function(construct_id: str, handler: str, name: str, timeout: Duration,
                              description: str, environment: dict[str, str]
                              ) -> tuple[lambda_.Function, logs.LogGroup]:
            log_group = logs.LogGroup(self, f"{construct_id}Logs", retention=retention,
                                      removal_policy=removal)
            function = lambda_.Function(
                self, construct_id, runtime=runtime, architecture=lambda_.Architecture.ARM_64,
                handler=handler, code=code, function_name=name, memory_size=1024,
                timeout=timeout, vpc=vpc, vpc_subnets=isolated,
                security_groups=[security_group], tracing=lambda_.Tracing.ACTIVE,
                log_group=log_group, environment=environment, description=description)
            function_alarms(Construct(self, f"{construct_id}Alarms"), function, timeout,
                            alarm_topic)
            return function, log_group

        worker_settings = Stack.of(self).to_json_string({
            "cluster": workers.cluster_arn, "task_definition": worker.task_definition_arn,
            "container": WORKER_CONTAINER,
            "subnets": vpc.select_subnets(subnet_type=ec2.SubnetType.PRIVATE_ISOLATED)
            .subnet_ids,
            "security_groups": [security_group.security_group_id],
            "budget_seconds": budget.to_seconds()})
        roles = [worker.task_role.role_arn]
        if worker.execution_role is not None:
            roles.append(worker.execution_role.role_arn)

        def may_run_worker(function: lambda_.Function) -> None:
            """RunTask of the worker's task definition in the workers' cluster only; the roles
            it passes are the task's own, to ECS tasks only."""
            function.add_to_role_policy(iam.PolicyStatement(
                actions=["ecs:RunTask"], resources=[worker.task_definition_arn],
                conditions={"ArnEquals": {"ecs:cluster": workers.cluster_arn}}))
            function.add_to_role_policy(iam.PolicyStatement(
                actions=["iam:PassRole"], resources=roles,
                conditions={"StringEquals": {"iam:PassedToService": "ecs-tasks.amazonaws.com"}}))

        # on_event: decides what the event asks and starts the worker (a migration run, or the
        # backfills after contract); no database access
        self.function, starter_logs = migrator_function(
            "Migrator", "infra.migrator.handler.handler", f"{stage.prefix}-migrator",
            STARTER_TIMEOUT, f"svcmig migrator ({stage.name}): starts a deploy's migration run",
            {"SVCMIG_WORKER": worker_settings})
        may_run_worker(self.function)
        self.function.add_to_role_policy(iam.PolicyStatement(
            actions=["ecs:ListTasks"], resources=["*"],
            conditions={"ArnEquals": {"ecs:cluster": workers.cluster_arn}}))
        self.function.add_to_role_policy(iam.PolicyStatement(
            actions=["ecs:DescribeTasks"],
            resources=[Stack.of(self).format_arn(
                service="ecs", resource="task", resource_name=f"{workers.cluster_name}/*")],
            conditions={"ArnEquals": {"ecs:cluster": workers.cluster_arn}}))
        # is_complete: reads the run's record and watches (or stops) its task
        self.progress, progress_logs = migrator_function(
            "Progress", "infra.migrator.handler.is_complete_handler",
            f"{stage.prefix}-migrator-progress", STARTER_TIMEOUT,
            f"svcmig migrator ({stage.name}): reports a migration run's end", database)
        master_secret.grant_read(self.progress)
        self.progress.add_to_role_policy(iam.PolicyStatement(
            actions=["ecs:ListTasks"], resources=["*"],
            conditions={"ArnEquals": {"ecs:cluster": workers.cluster_arn}}))
        self.progress.add_to_role_policy(iam.PolicyStatement(
            actions=["ecs:DescribeTasks", "ecs:StopTask"],
            resources=[Stack.of(self).format_arn(
                service="ecs", resource="task", resource_name=f"{workers.cluster_name}/*")],
            conditions={"ArnEquals": {"ecs:cluster": workers.cluster_arn}}))
        # `svcmig remote`: status, repair and backfill, in a function of their own (the same
        # code, another entry point that runs nothing else), which the operators' policy may
        # invoke; the deploy's migrator is the Provider's alone. It may start the worker
        # (backfill resume, retry, run) and nothing else of ECS.
        self.operations, operations_logs = migrator_function(
            "Operations", "infra.migrator.handler.operation_handler",
            f"{stage.prefix}-migrator-operations", OPERATIONS_TIMEOUT,
            f"svcmig remote ({stage.name}): status, repair and backfills for operators",
            {**database, "SVCMIG_WORKER": worker_settings})
        master_secret.grant_read(self.operations)
        may_run_worker(self.operations)
        self.operators = iam.ManagedPolicy(
            self, "Operators", managed_policy_name=f"{stage.prefix}-migrator-operators",
            description="svcmig remote: status, repair and backfills through the operations "
                        "function",
            statements=[iam.PolicyStatement(actions=["lambda:InvokeFunction"],
                                            resources=[self.operations.function_arn])])
        # A failed contract phase does not fail the deploy (see the handler): the poller, which
        # sees every way a run ends, says so here.
        failures = logs.MetricFilter(
            self, "ContractFailures", log_group=progress_logs,
            filter_pattern=logs.FilterPattern.string_value("$.event", "=", "contract_failed"),
            metric_namespace="svcmig", metric_name=f"ContractFailures-{stage.name}",
            metric_value="1", default_value=0)
        contract_alarm = cloudwatch.Alarm(
            self, "ContractFailedAlarm", metric=failures.metric(statistic="Sum"), threshold=1,
            evaluation_periods=1, treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            alarm_description="a contract revision failed; the new code is live and works; "
                              "fix it and deploy again (docs/deploy.md)")
        contract_alarm.add_alarm_action(cloudwatch_actions.SnsAction(alarm_topic))
        provider = cr.Provider(
            self, "Provider", on_event_handler=self.function,
            is_complete_handler=self.progress, query_interval=POLL_INTERVAL,
            total_timeout=budget.plus(START_ALLOWANCE),
            log_group=logs.LogGroup(self, "ProviderLogs", retention=retention,
                                    removal_policy=removal),
            waiter_state_machine_log_options=cr.LogOptions(
                destination=logs.LogGroup(self, "WaiterLogs", retention=retention,
                                          removal_policy=removal),
                level=sfn.LogLevel.ERROR))
        self.service_timeout = budget.plus(START_ALLOWANCE).plus(ANSWER_ALLOWANCE)
        # The Provider framework's own function logs at FATAL by default: its INFO lines say
        # which event it handled and why a resource failed. It gets the same alarms.
        framework = provider.node.find_child("framework-onEvent")
        assert isinstance(framework, lambda_.Function)
        cfn_framework = framework.node.default_child
        assert isinstance(cfn_framework, lambda_.CfnFunction)
        cfn_framework.add_property_override("LoggingConfig.ApplicationLogLevel", "INFO")
        # CloudFormation invokes the framework asynchronously: Lambda's two automatic retries
        # would run a migration again after a timeout; a failure is reported instead.
        framework.configure_async_invoke(retry_attempts=0)
        function_alarms(Construct(self, "Framework"), framework, FRAMEWORK_TIMEOUT, alarm_topic)
        self.expand = self._resource("Expand", provider, fingerprint, "expand", stage)
        self.contract = self._resource("Contract", provider, fingerprint, "contract", stage)
        self.contract.node.add_dependency(self.expand)
        # The backfills start once the new code is live and contract ran: the stack's one
        # resource after contract, which never fails (infra/migrator/backfills.py) and answers
        # as soon as the runner's task is started (is_complete sees no run and says done).
        self.backfills = CustomResource(
            self, "Backfills", service_token=provider.service_token,
            resource_type=BACKFILLS_RESOURCE_TYPE, service_timeout=BACKFILL_START_TIMEOUT,
            properties={**fingerprint.backfill_properties(), "Stage": stage.name})
        self.backfills.node.add_dependency(self.contract)
        self._backfill_alarms(stage, alarm_topic, worker_logs, starter_logs, operations_logs)

    def _backfill_alarms(self, stage: StageSettings, alarm_topic: sns.ITopic,
                         worker_logs: logs.ILogGroup, starter_logs: logs.ILogGroup,
                         operations_logs: logs.ILogGroup) -> None:
        """`BackfillFailedAlarm`: a backfill failed (the runner's `backfill_failed` line, at
        once), one is still failed (the check's count, until it is retried), or the deploy
        could not start the runner (`backfill_start_failed`). `BackfillStalledAlarm`: a
        backfill has been running without progress for 15 minutes (its runner was killed, or
        the database has kept it backing off) in two checks in a row. The check is the
        operations function on a schedule (`backfill_check`: `backfill_status`, no SQL of its
        own), because a killed runner logs nothing that a log-only alarm could see."""
        events.Rule(
            self, "BackfillCheck", schedule=events.Schedule.rate(BACKFILL_CHECK_INTERVAL),
            description=f"svcmig ({stage.name}): count failed and stalled backfills",
            targets=[events_targets.LambdaFunction(
                self.operations, retry_attempts=0,
                event=events.RuleTargetInput.from_object(
                    {"operation": "backfill_check", "caller": "schedule"}))])
        period = BACKFILL_CHECK_INTERVAL

        def counted(construct_id: str, log_group: logs.ILogGroup, event: str, value: str,
                    statistic: str) -> cloudwatch.Metric:
            found = logs.MetricFilter(
                self, construct_id, log_group=log_group,
                filter_pattern=logs.FilterPattern.string_value("$.event", "=", event),
                metric_namespace="svcmig", metric_name=f"{construct_id}-{stage.name}",
                metric_value=value)
            return found.metric(statistic=statistic, period=period)

        failed = cloudwatch.MathExpression(
            expression="FILL(failing, 0) + FILL(failures, 0) + FILL(starts, 0)",
            using_metrics={
                "failing": counted("BackfillsFailing", operations_logs, "backfill_check",
                                   "$.failed", "Maximum"),
                "failures": counted("BackfillFailures", worker_logs, "backfill_failed", "1",
                                    "Sum"),
                "starts": counted("BackfillStartFailures", starter_logs,
                                  "backfill_start_failed", "1", "Sum")},
            period=period, label="failed backfills")
        stalled = counted("BackfillsStalled", operations_logs, "backfill_check", "$.stalled",
                          "Maximum")
        for construct_id, metric, periods, why in (
                ("BackfillFailedAlarm", failed, 1,
                 "a backfill failed (or the deploy could not start them): `svcmig remote "
                 "--stage STAGE backfill status`, fix the cause, then `backfill retry NAME` "
                 "(docs/deploy.md)"),
                ("BackfillStalledAlarm", stalled, 2,
                 "a backfill has made no progress for 15 minutes (its runner was stopped, or "
                 "the database keeps it backing off): `svcmig remote --stage STAGE backfill "
                 "status`; an interrupted one continues with `backfill run NAME`")):
            made = cloudwatch.Alarm(
                self, construct_id, metric=metric, threshold=1, evaluation_periods=periods,
                treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
                comparison_operator=cloudwatch.ComparisonOperator
                .GREATER_THAN_OR_EQUAL_TO_THRESHOLD, alarm_description=why)
            made.add_alarm_action(cloudwatch_actions.SnsAction(alarm_topic))

    def _resource(self, construct_id: str, provider: cr.Provider,
                  fingerprint: MigrationsFingerprint, phase: str,
                  stage: StageSettings) -> CustomResource:
        return CustomResource(
            self, construct_id, service_token=provider.service_token,
            resource_type=RESOURCE_TYPE,
            # CloudFormation's wait for an answer: the run's budget and margins, not the
            # default hour, when an answer is lost
            service_timeout=self.service_timeout,
            properties={**fingerprint.properties(phase), "Stage": stage.name})

    def run_before(self, construct: IConstruct) -> None:
        """`construct`'s resources wait for the expand phase (CloudFormation DependsOn)."""
        construct.node.add_dependency(self.expand)

    def run_after(self, construct: IConstruct) -> None:
        """The contract phase waits for `construct`'s resources."""
        self.contract.node.add_dependency(construct)

    def run_last(self, stack: IConstruct) -> None:
        """The contract phase waits for every other resource of `stack` (call it once the
        stack is built): its own construct's, and every other construct's, except the
        backfill start, which waits for contract and cannot fail."""
        for child in self.node.children:
            if child is not self.contract and child is not self.backfills:
                self.contract.node.add_dependency(child)
        for child in stack.node.children:
            if child is not self:
                self.contract.node.add_dependency(child)
