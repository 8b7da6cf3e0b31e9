"""cdk-nag's AwsSolutions checks, and every acknowledgement with the reason it is acceptable.

cdk-nag 3 runs as a policy-validation plugin: an unacknowledged finding fails the synth.
Acknowledgements name the exact finding (`Rule[finding]`) and sit on the narrowest construct
the reason holds for. docs/deploy.md lists the same reasons.
"""

from __future__ import annotations

from dataclasses import dataclass

from aws_cdk import Acknowledgment, App, CfnElement, Stack, Validations
from cdk_nag import AwsSolutionsChecks
from constructs import IConstruct

from .api_stack import ApiStack
from .db_stack import INTERFACE_ENDPOINTS, DbStack

BASIC_ROLE = ("AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
              "AWSLambdaBasicExecutionRole]")
VPC_ROLE = ("AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
            "AWSLambdaVPCAccessExecutionRole]")


@dataclass(frozen=True)
class Ack:
    finding: str
    reason: str


MANAGED_ROLES = [
    Ack(BASIC_ROLE, "AWSLambdaBasicExecutionRole only lets the function write its own logs; "
        "CDK attaches it to every function it creates."),
    Ack(VPC_ROLE, "AWSLambdaVPCAccessExecutionRole only manages the function's network "
        "interfaces in the VPC; data access is granted separately on exact ARNs."),
]
XRAY = Ack("AwsSolutions-IAM5[Resource::*]", "xray:PutTraceSegments/PutTelemetryRecords for "
           "active tracing: X-Ray has no resource-level permissions. Secrets and rds-db:connect "
           "are granted on exact ARNs (tests/infra asserts it).")
LIST_TASKS = Ack(
    "AwsSolutions-IAM5[Resource::*]",
    "xray:PutTraceSegments/PutTelemetryRecords (X-Ray has no resource-level permissions) and "
    "ecs:ListTasks, which has none either: the workers of one request (a repeated start), only "
    "in the workers' cluster (ecs:cluster condition).")
WORKER_ENVIRONMENT = Ack("AwsSolutions-ECS2", "The worker's environment holds secret ARNs and "
                         "the cluster's host name, no secret: the worker reads the secrets "
                         "itself when it runs.")
ECR_TOKEN = Ack("AwsSolutions-IAM5[Resource::*]", "ecr:GetAuthorizationToken for pulling the "
                "worker's image has no resource-level permissions; the pull itself is granted "
                "on the image's repository only.")
WAITER_LOGS = Ack("AwsSolutions-SF1", "The Provider's waiter logs errors: ALL would log every "
                  "poll (every 20 s, each with the resource's properties) for a whole run.")
WAITER_TRACING = Ack("AwsSolutions-SF2", "The CDK Provider's waiter state machine has no "
                     "tracing option; the two functions it invokes (framework and poller) are "
                     "traced.")
ENDPOINT_SG = Ack("AwsSolutions-EC23", "The interface endpoint's security group admits HTTPS "
                  "from the VPC's own CIDR (a token, hence the rule's evaluation error); nothing "
                  "outside the VPC can reach it.")
NON_PROD_DELETION = Ack("AwsSolutions-RDS10", "Deletion protection is on in prod only: dev and "
                        "preview-<n> databases are disposable and `cdk destroy` must delete them.")


def _ack(scope: IConstruct, *acks: Ack) -> None:
    for ack in acks:
        Validations.of(scope).acknowledge(Acknowledgment(id=ack.finding, reason=ack.reason))


def acknowledge_db(stack: DbStack) -> list[Ack]:
    endpoints = [stack.vpc.node.find_child(name) for name in INTERFACE_ENDPOINTS]
    for endpoint in endpoints:
        _ack(endpoint, ENDPOINT_SG)
    if not stack.deletion_protected:
        _ack(stack.cluster, NON_PROD_DELETION)
        return [ENDPOINT_SG, NON_PROD_DELETION]
    return [ENDPOINT_SG]


def acknowledge_api(stack: ApiStack) -> list[Ack]:
    migrations = stack.migrations
    provider = migrations.node.find_child("Provider")

    def versions(function: IConstruct) -> Ack:
        cfn = function.node.default_child
        assert isinstance(cfn, CfnElement)
        return Ack(f"AwsSolutions-IAM5[Resource::<{stack.get_logical_id(cfn)}.Arn>:*]",
                   "The CDK Provider framework may invoke any version of this function "
                   "(`<arn>:*`); it is that one function only.")

    functions = [migrations.operations, *(s.function for s in stack.functions.values())]
    for fn in functions:
        _ack(fn, *MANAGED_ROLES, XRAY)
    for fn in (migrations.function, migrations.progress):
        _ack(fn, *MANAGED_ROLES, LIST_TASKS)
    invoked = [versions(migrations.function), versions(migrations.progress),
               *(versions(provider.node.find_child(name))
                 for name in ("framework-isComplete", "framework-onTimeout"))]
    _ack(provider, MANAGED_ROLES[0], *invoked, WAITER_LOGS, WAITER_TRACING)
    workers = migrations.node.find_child("Workers").node.default_child
    assert isinstance(workers, CfnElement)
    tasks = Ack(
        "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:ecs:<AWS::Region>:<AWS::AccountId>:"
        f"task/<{stack.get_logical_id(workers)}>/*]",
        "ecs:DescribeTasks and ecs:StopTask on the tasks of the migration workers' own "
        "cluster (with an ecs:cluster condition): each run's task ID is made when it starts.")
    _ack(migrations.progress, tasks)
    _ack(migrations.function, tasks)
    _ack(migrations.node.find_child("Worker"), ECR_TOKEN, WORKER_ENVIRONMENT)
    return [*MANAGED_ROLES, XRAY, LIST_TASKS, *invoked, WAITER_LOGS, WAITER_TRACING,
            tasks, ECR_TOKEN, WORKER_ENVIRONMENT, *_acknowledge_uploads(stack)]


def _acknowledge_uploads(stack: ApiStack) -> list[Ack]:
    """`s3:PutObject` on `<bucket>/*`, on the function of each service that declares [uploads].
    The upload buckets need no S1 acknowledgement (they log to the access-log bucket), nor does
    the access-log bucket: cdk-nag counts a bucket that receives access logs as compliant."""
    acks = []
    for service in stack.functions.values():
        if service.upload_bucket is None:
            continue
        cfn_bucket = service.upload_bucket.node.default_child
        assert isinstance(cfn_bucket, CfnElement)
        ack = Ack(
            f"AwsSolutions-IAM5[Resource::<{stack.get_logical_id(cfn_bucket)}.Arn>/*]",
            "s3:PutObject only, on the objects of the service's own upload bucket: each "
            "presigned PUT URL is for a new generated key (uploads/<uuid>/<name>), so no fixed "
            "object ARN exists to grant.")
        _ack(service.function, ack)
        acks.append(ack)
    return acks


def add_nag(app: App, stacks: list[Stack]) -> list[Ack]:
    """Acknowledge what is listed here, then run AwsSolutions on synth; returns the acks."""
    acks: list[Ack] = []
    for stack in stacks:
        if isinstance(stack, DbStack):
            acks += acknowledge_db(stack)
        elif isinstance(stack, ApiStack):
            acks += acknowledge_api(stack)
    Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    return acks
