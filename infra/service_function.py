"""One service's function, as its folder declares it (`services/<name>/service.toml`)."""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_rds as rds
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from .alarms import function_alarms
from .db_stack import DATABASE_NAME, log_retention
from .service_spec import ServiceSpec
from .settings import StageSettings


class ServiceFunction(Construct):
    """arm64 function in the VPC with X-Ray, bounded concurrency, a DLQ for async invokes, its
    own log group and alarms, and the narrowest database access: read its own secret and
    `rds-db:connect` to the proxy as its own `<service>_app` user, nothing else. With an upload
    bucket, also `s3:PutObject` on that bucket's objects only: a presigned PUT URL is signed with
    the function's role, so the role itself must be allowed the PUT.

    Callers go through the `live` alias, which carries provisioned concurrency when the stage
    asks for it and the service is latency-critical."""

    def __init__(self, scope: Construct, construct_id: str, *, spec: ServiceSpec,
                 stage: StageSettings, code: lambda_.Code, runtime: lambda_.Runtime,
                 layers: list[lambda_.ILayerVersion], vpc: ec2.IVpc,
                 security_group: ec2.ISecurityGroup, proxy: rds.IDatabaseProxy,
                 secret: secretsmanager.ISecret | None, alarm_topic: sns.ITopic,
                 upload_bucket: s3.IBucket | None = None) -> None:
        super().__init__(scope, construct_id)
        removal = RemovalPolicy.RETAIN if stage.retain_data else RemovalPolicy.DESTROY
        timeout = Duration.seconds(spec.timeout_seconds)
        log_group = logs.LogGroup(self, "Logs", retention=log_retention(stage.log_retention_days),
                                  removal_policy=removal)
        self.dlq = sqs.Queue(self, "Dlq", encryption=sqs.QueueEncryption.SQS_MANAGED,
                             enforce_ssl=True, retention_period=Duration.days(14))
        environment = {
            "SERVICE_NAME": spec.name,
            "STAGE": stage.name,
            "POWERTOOLS_SERVICE_NAME": spec.name,
            "POWERTOOLS_METRICS_NAMESPACE": "svcmig",
            "DB_HOST": proxy.endpoint,
            "DB_PORT": "5432",
            "DB_NAME": DATABASE_NAME,
            "DB_USER": spec.app_user,
            "DB_AUTH": "iam",  # RDS Proxy requires an IAM token as the password
            "DB_SSLMODE": "require",
        }
        if secret is not None:  # services/shared/db.py reads it; DB_HOST overrides its host
            environment["DB_SECRET_ID"] = secret.secret_arn
        self.upload_bucket = upload_bucket
        if upload_bucket is not None:  # services/users/handler.py answers 503 without it
            environment["UPLOAD_BUCKET"] = upload_bucket.bucket_name
        self.function = lambda_.Function(
            self, "Function",
            runtime=runtime, architecture=lambda_.Architecture.ARM_64,
            handler=spec.handler, code=code, layers=layers,
            memory_size=spec.memory_mb, timeout=timeout,
            vpc=vpc, vpc_subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_ISOLATED),
            security_groups=[security_group],
            tracing=lambda_.Tracing.ACTIVE,
            reserved_concurrent_executions=(spec.reserved_concurrency
                                            if stage.reserve_concurrency else None),
            dead_letter_queue=self.dlq,
            log_group=log_group,
            environment=environment,
            description=f"svcmig {spec.name} service ({stage.name})",
        )
        provisioned = stage.provisioned_concurrency if spec.latency_critical else 0
        self.alias = lambda_.Alias(
            self, "Live", alias_name="live", version=self.function.current_version,
            provisioned_concurrent_executions=provisioned or None)
        if secret is not None:
            secret.grant_read(self.function)
        proxy.grant_connect(self.function, spec.app_user)
        if upload_bucket is not None:  # not grant_put: that adds tagging, retention and Abort*
            self.function.add_to_role_policy(iam.PolicyStatement(
                actions=["s3:PutObject"], resources=[upload_bucket.arn_for_objects("*")]))
        function_alarms(self, self.function, timeout, alarm_topic, self.dlq)
