"""The API stack: one function per service folder, the HTTP API routes they declare, the
shared dependency layer, the migrations ordered around the functions, and the upload buckets
of the services that declare `[uploads]` (with one access-log bucket for them)."""

from __future__ import annotations

from pathlib import Path

from aws_cdk import RemovalPolicy, Stack
from aws_cdk import aws_apigatewayv2 as apigwv2
from aws_cdk import aws_apigatewayv2_authorizers as authorizers
from aws_cdk import aws_apigatewayv2_integrations as integrations
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from constructs import Construct

from .alarms import route_alarms
from .bundling import Target, layer_code, service_code
from .db_stack import DbStack, log_retention
from .fingerprint import fingerprint
from .migrations_resources import Migrations
from .service_function import ServiceFunction
from .service_spec import ServiceSpec, layer_requirements
from .settings import StageSettings
from .uploads import access_log_bucket, upload_bucket

RUNTIMES = {"3.12": lambda_.Runtime.PYTHON_3_12, "3.13": lambda_.Runtime.PYTHON_3_13,
            "3.14": lambda_.Runtime.PYTHON_3_14}


class ApiStack(Stack):
    def __init__(self, scope: Construct, construct_id: str, *, root: Path,
                 stage: StageSettings, specs: list[ServiceSpec], db: DbStack, target: Target,
                 **kwargs: object) -> None:
        super().__init__(scope, construct_id, **kwargs)  # type: ignore[arg-type]
        runtime = RUNTIMES[target.python]
        assert db.master_secret is not None
        removal = RemovalPolicy.RETAIN if stage.retain_data else RemovalPolicy.DESTROY
        self.alarm_topic = db.alarm_topic
        self.migrations = Migrations(
            self, "Migrations", root=root, target=target, runtime=runtime, stage=stage,
            fingerprint=fingerprint(root), vpc=db.vpc,
            security_group=db.migrator_security_group, cluster=db.cluster,
            master_secret=db.master_secret, app_secrets=db.app_secrets,
            alarm_topic=self.alarm_topic)

        with_function = [s for s in specs if s.has_function]
        layers: list[lambda_.ILayerVersion] = []
        requirements = layer_requirements(specs)
        if requirements:
            layers.append(lambda_.LayerVersion(
                self, "Dependencies", code=layer_code(root, requirements, target),
                compatible_runtimes=[runtime],
                compatible_architectures=[lambda_.Architecture.ARM_64],
                removal_policy=removal, description="dependencies shared by the app functions"))

        access_logs = logs.LogGroup(self, "ApiAccessLogs", removal_policy=removal,
                                    retention=log_retention(stage.log_retention_days))
        self.api = apigwv2.HttpApi(self, "Api", api_name=f"{stage.prefix}-api")
        stage_resource = self.api.default_stage
        assert stage_resource is not None
        cfn_stage = stage_resource.node.default_child
        assert isinstance(cfn_stage, apigwv2.CfnStage)
        # per-route metrics, for the route alarms
        cfn_stage.default_route_settings = apigwv2.CfnStage.RouteSettingsProperty(
            detailed_metrics_enabled=True)
        cfn_stage.access_log_settings = apigwv2.CfnStage.AccessLogSettingsProperty(
            destination_arn=access_logs.log_group_arn,
            format='{"requestId":"$context.requestId","ip":"$context.identity.sourceIp",'
                   '"method":"$context.httpMethod","path":"$context.path",'
                   '"status":"$context.status","latency":"$context.integrationLatency",'
                   '"error":"$context.integrationErrorMessage"}')
        iam_auth = authorizers.HttpIamAuthorizer()

        # Only created when some service declares [uploads]: no empty bucket otherwise.
        self.upload_logs: s3.Bucket | None = None
        if any(s.uploads for s in with_function):
            self.upload_logs = access_log_bucket(self, "UploadAccessLogs", stage)
        self.functions: dict[str, ServiceFunction] = {}
        for spec in with_function:
            bucket = None
            if spec.uploads is not None and self.upload_logs is not None:
                bucket = upload_bucket(
                    self, f"{spec.name.capitalize()}Uploads", service=spec.name,
                    uploads=spec.uploads, stage=stage, log_bucket=self.upload_logs)
            service = ServiceFunction(
                self, f"{spec.name.capitalize()}Service", spec=spec, stage=stage,
                code=service_code(root, spec, target), runtime=runtime, layers=layers,
                vpc=db.vpc, security_group=db.app_security_group, proxy=db.proxy,
                secret=db.app_secrets.get(spec.name), alarm_topic=self.alarm_topic,
                upload_bucket=bucket)
            self.migrations.run_before(service.function)
            self.migrations.run_after(service)
            integration = integrations.HttpLambdaIntegration(
                f"{spec.name.capitalize()}Integration", service.alias)
            for index, route in enumerate(spec.routes):
                self.api.add_routes(
                    path=route.path, methods=[apigwv2.HttpMethod(route.method)],
                    integration=integration,
                    authorizer=None if route.public else iam_auth)
                route_alarms(self, f"{spec.name.capitalize()}Route{index}", self.api.api_id,
                             route.method, route.path, self.alarm_topic,
                             stage.latency_p99_alarm_ms)
            self.functions[spec.name] = service
        # Contract is the stack's last resource: once it runs, nothing else in the stack can
        # fail and roll the code back to a release that needs what contract removed (routes,
        # integrations, permissions, the stage, bucket policies, alarms included).
        self.migrations.run_last(self)
