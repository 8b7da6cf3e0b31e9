"""The S3 buckets behind `POST /uploads` (a service's `[uploads]` in service.toml): one private
upload bucket per such service, and one access-log bucket per stack for all of them."""

from __future__ import annotations

from typing import Any

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_s3 as s3
from constructs import Construct

from .service_spec import Uploads
from .settings import StageSettings


def _removal(stage: StageSettings) -> RemovalPolicy:
    """Retained where the stage keeps data; elsewhere also emptied on delete (auto_delete_objects),
    so that `cdk destroy` of a dev or preview stack does not fail on a non-empty bucket."""
    return RemovalPolicy.RETAIN if stage.retain_data else RemovalPolicy.DESTROY


def _private_bucket(scope: Construct, construct_id: str, stage: StageSettings,
                    **settings: Any) -> s3.Bucket:
    """The baseline every bucket here shares: no public access, SSE-S3, TLS only, ACLs off,
    removed (and emptied) with the stack only where the stage does not keep data."""
    return s3.Bucket(
        scope, construct_id,
        block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
        encryption=s3.BucketEncryption.S3_MANAGED,
        enforce_ssl=True,
        object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
        removal_policy=_removal(stage), auto_delete_objects=not stage.retain_data,
        **settings)


def access_log_bucket(scope: Construct, construct_id: str, stage: StageSettings) -> s3.Bucket:
    """Server access logs of the upload buckets. SSE-S3 because S3 log delivery cannot write to
    a KMS-encrypted bucket; kept as long as the stage keeps its other logs."""
    return _private_bucket(
        scope, construct_id, stage,
        lifecycle_rules=[s3.LifecycleRule(
            id="expire-logs", expiration=Duration.days(stage.log_retention_days))])


def upload_bucket(scope: Construct, construct_id: str, *, service: str, uploads: Uploads,
                  stage: StageSettings, log_bucket: s3.IBucket) -> s3.Bucket:
    """Private, SSE-S3 (a presigned PUT then needs no KMS grant), TLS only, objects expire and
    abandoned multipart uploads are aborted. No CORS rule: callers of the IAM-authorized API
    sign requests themselves and PUT from code, not from a browser page (docs/deploy.md)."""
    return _private_bucket(
        scope, construct_id, stage,
        server_access_logs_bucket=log_bucket,
        server_access_logs_prefix=f"{service}/",
        lifecycle_rules=[s3.LifecycleRule(
            id="expire-uploads", expiration=Duration.days(uploads.expire_days),
            abort_incomplete_multipart_upload_after=Duration.days(1))])
