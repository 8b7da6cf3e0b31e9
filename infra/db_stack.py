"""The database stack: network, Aurora PostgreSQL, its secrets and RDS Proxy."""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_logs as logs
from aws_cdk import aws_rds as rds
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from constructs import Construct

from .alarms import database_alarms
from .service_spec import ServiceSpec
from .settings import StageSettings

# Aurora PostgreSQL 17.9: a current minor of a major that RDS Proxy supports.
ENGINE_VERSION = rds.AuroraPostgresEngineVersion.VER_17_9
DATABASE_NAME = "app"
MASTER_USER = "svcmig_admin"


_RETENTIONS = [(1, "ONE_DAY"), (3, "THREE_DAYS"), (5, "FIVE_DAYS"), (7, "ONE_WEEK"),
               (14, "TWO_WEEKS"), (30, "ONE_MONTH"), (60, "TWO_MONTHS"), (90, "THREE_MONTHS"),
               (120, "FOUR_MONTHS"), (150, "FIVE_MONTHS"), (180, "SIX_MONTHS"),
               (365, "ONE_YEAR"), (400, "THIRTEEN_MONTHS"), (545, "EIGHTEEN_MONTHS"),
               (731, "TWO_YEARS"), (1827, "FIVE_YEARS"), (3653, "TEN_YEARS")]


def log_retention(days: int) -> logs.RetentionDays:
    """CloudWatch accepts only some values: the smallest allowed one that keeps `days`."""
    name = next((n for value, n in _RETENTIONS if value >= days), _RETENTIONS[-1][1])
    retention: logs.RetentionDays = getattr(logs.RetentionDays, name)
    return retention


INTERFACE_ENDPOINTS = ("SecretsManager", "XRay", "Ecs", "Ecr", "EcrDocker", "Logs")


class DbStack(Stack):
    """VPC with flow logs and no internet route (interface endpoints for AWS APIs), the Aurora
    cluster, the master secret (rotated), one secret per service's `<service>_app` role
    (rotated), and an RDS Proxy that requires TLS and IAM authentication."""

    def __init__(self, scope: Construct, construct_id: str, *, stage: StageSettings,
                 specs: list[ServiceSpec], **kwargs: object) -> None:
        super().__init__(scope, construct_id, **kwargs)  # type: ignore[arg-type]
        self.deletion_protected = stage.deletion_protection
        removal = RemovalPolicy.RETAIN if stage.retain_data else RemovalPolicy.DESTROY
        self.vpc = ec2.Vpc(
            self, "Vpc", max_azs=2, nat_gateways=0,
            subnet_configuration=[ec2.SubnetConfiguration(
                name="private", subnet_type=ec2.SubnetType.PRIVATE_ISOLATED, cidr_mask=22)])
        flow_logs = logs.LogGroup(self, "FlowLogs", retention=log_retention(
            stage.log_retention_days), removal_policy=removal)
        self.vpc.add_flow_log("FlowLog", destination=ec2.FlowLogDestination.to_cloud_watch_logs(
            flow_logs), traffic_type=ec2.FlowLogTrafficType.ALL)
        # Functions and the migration worker reach AWS APIs without a NAT gateway: secrets and
        # traces; the worker's image (ECR, its layers in S3), its logs, and ECS for the
        # migrator that starts and watches it.
        endpoints = ec2.InterfaceVpcEndpointAwsService
        services = {"SecretsManager": endpoints.SECRETS_MANAGER, "XRay": endpoints.XRAY,
                    "Ecs": endpoints.ECS, "Ecr": endpoints.ECR, "EcrDocker": endpoints.ECR_DOCKER,
                    "Logs": endpoints.CLOUDWATCH_LOGS}
        for name in INTERFACE_ENDPOINTS:
            self.vpc.add_interface_endpoint(name, service=services[name])
        self.vpc.add_gateway_endpoint("S3", service=ec2.GatewayVpcEndpointAwsService.S3)

        self.app_security_group = ec2.SecurityGroup(
            self, "AppFunctions", vpc=self.vpc, description="svcmig app functions")
        self.migrator_security_group = ec2.SecurityGroup(
            self, "Migrator", vpc=self.vpc, description="svcmig migrator function")
        writer = (rds.ClusterInstance.serverless_v2("Writer")
                  if stage.writer_instance == "serverless"
                  else rds.ClusterInstance.provisioned(
                      "Writer", instance_type=ec2.InstanceType(stage.writer_instance)))
        readers = [rds.ClusterInstance.serverless_v2(f"Reader{i}", scale_with_writer=True)
                   if stage.writer_instance == "serverless"
                   else rds.ClusterInstance.provisioned(
                       f"Reader{i}", instance_type=ec2.InstanceType(stage.writer_instance))
                   for i in range(1, stage.readers + 1)]
        self.cluster = rds.DatabaseCluster(
            self, "Cluster",
            engine=rds.DatabaseClusterEngine.aurora_postgres(version=ENGINE_VERSION),
            credentials=rds.Credentials.from_generated_secret(
                MASTER_USER, secret_name=f"{stage.prefix}/db/master"),
            default_database_name=DATABASE_NAME,
            writer=writer, readers=readers,
            serverless_v2_min_capacity=stage.min_capacity_acu,
            serverless_v2_max_capacity=stage.max_capacity_acu,
            vpc=self.vpc, vpc_subnets=ec2.SubnetSelection(
                subnet_type=ec2.SubnetType.PRIVATE_ISOLATED),
            storage_encrypted=True,
            iam_authentication=True,
            deletion_protection=stage.deletion_protection,
            removal_policy=RemovalPolicy.SNAPSHOT if stage.retain_data else RemovalPolicy.DESTROY,
            backup=rds.BackupProps(retention=Duration.days(stage.backup_retention_days)),
            cluster_identifier=f"{stage.prefix}-cluster",
            cloudwatch_logs_exports=["postgresql"],
            parameter_group=rds.ParameterGroup(
                self, "Parameters",
                engine=rds.DatabaseClusterEngine.aurora_postgres(version=ENGINE_VERSION),
                parameters={"rds.force_ssl": "1", "log_min_duration_statement": "1000"}),
        )
        # The exported log group, created here with a retention instead of by CDK's
        # log-retention custom resource (one Lambda and one role fewer).
        self.cluster.node.add_dependency(logs.LogGroup(
            self, "ClusterLogs",
            log_group_name=f"/aws/rds/cluster/{stage.prefix}-cluster/postgresql",
            retention=log_retention(stage.log_retention_days), removal_policy=removal))
        self.master_secret = self.cluster.secret
        assert self.master_secret is not None
        self.cluster.add_rotation_single_user(automatically_after=Duration.days(
            stage.rotation_days))
        self.cluster.connections.allow_default_port_from(
            self.migrator_security_group, "migrator: direct connection for migrations")

        # One login per service; the migrator creates the role and sets this password once (a
        # role without one); from then on the rotation is the only writer of the password.
        self.app_secrets: dict[str, secretsmanager.ISecret] = {}
        for spec in specs:
            if not spec.has_schema:
                continue
            secret = rds.DatabaseSecret(
                self, f"{spec.name.capitalize()}AppSecret", username=spec.app_user,
                secret_name=f"{stage.prefix}/db/{spec.app_user}", dbname=DATABASE_NAME,
                exclude_characters=" %+~`#$&*()|[]{}:;<>?!'/@\"\\")
            secret.apply_removal_policy(removal)
            attached = secret.attach(self.cluster)
            secretsmanager.SecretRotation(
                self, f"{spec.name.capitalize()}AppSecretRotation",
                application=secretsmanager.SecretRotationApplication.POSTGRES_ROTATION_SINGLE_USER,
                secret=attached, target=self.cluster, vpc=self.vpc,
                vpc_subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_ISOLATED),
                automatically_after=Duration.days(stage.rotation_days),
                # The role does not exist yet: the API stack's migrator creates it (with this
                # secret's password) after this stack; the first rotation comes a period later.
                rotate_immediately_on_update=False)
            self.app_secrets[spec.name] = attached

        # The stage's alarm topic (the api stack's alarms use it too), and who it reaches.
        self.alarm_topic = sns.Topic(self, "Alarms", enforce_ssl=True,
                                     display_name=f"svcmig {stage.name} alarms")
        for email in stage.alarm_emails:
            self.alarm_topic.add_subscription(subscriptions.EmailSubscription(email))
        database_alarms(self, self.cluster, self.alarm_topic, stage.connections_alarm)

        self.proxy = self.cluster.add_proxy(
            "Proxy", secrets=list(self.app_secrets.values()) or [self.master_secret],
            vpc=self.vpc, iam_auth=True, require_tls=True, debug_logging=False,
            vpc_subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_ISOLATED),
            # The apps' functions are many small clients: share the pool, keep headroom for
            # the migrator's direct connections.
            max_connections_percent=80, idle_client_timeout=Duration.minutes(30))
        self.proxy.connections.allow_from(
            self.app_security_group, ec2.Port.tcp(5432), "app functions: through the proxy only")
