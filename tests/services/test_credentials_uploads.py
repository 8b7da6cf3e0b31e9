"""Secrets Manager credentials (moto) with a rotated password against a server that checks
passwords, and the presigned upload URL (moto S3)."""

from __future__ import annotations

import json
from typing import Any

import boto3
import psycopg
import pytest
from moto import mock_aws

from migrations_runtime.engine.apply import migrate
from services.shared.db import Database, SecretsManagerCredentials
from services.shared.http import ServiceUnavailable
from tests.conftest import REPO
from tests.services.conftest import call
from tests.services.throwaway import throwaway_postgres


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Any:
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    from aws_lambda_powertools.utilities import parameters

    parameters.clear_caches()
    with mock_aws():
        yield
    parameters.clear_caches()


def test_secrets_manager_credentials_survive_a_rotation(aws: Any) -> None:
    with throwaway_postgres(password_auth=True) as url:
        migrate(url, REPO, "all", log=lambda _: None)
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute("ALTER ROLE users_app PASSWORD 'first-password'")
        info = psycopg.conninfo.conninfo_to_dict(url)
        secret = {"username": "users_app", "password": "first-password",
                  "host": info["host"], "port": int(info.get("port") or 5432),
                  "dbname": "postgres"}
        client = boto3.client("secretsmanager")
        client.create_secret(Name="users-db", SecretString=json.dumps(secret))
        db = Database("users", SecretsManagerCredentials("users-db", max_age=300))
        try:
            with db.transaction() as conn:
                assert conn.execute("SELECT current_user").fetchone() == ("users_app",)
            # rotation: new password in the database and the secret; the old session dies
            with psycopg.connect(url, autocommit=True) as admin:
                admin.execute("ALTER ROLE users_app PASSWORD 'second-password'")
                admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE usename = 'users_app'")
            client.put_secret_value(SecretId="users-db", SecretString=json.dumps(
                {**secret, "password": "second-password"}))
            with db.transaction() as conn:  # cached password fails once, refreshed, succeeds
                assert conn.execute("SELECT count(*) FROM users.users").fetchone() == (0,)
            assert db.last_connect_error and "password authentication failed" in \
                db.last_connect_error
            # the secret is stale even after a refresh: a 503 with the reason, not a hang
            with psycopg.connect(url, autocommit=True) as admin:
                admin.execute("ALTER ROLE users_app PASSWORD 'not-in-the-secret'")
            db.close()
            db.timeout = 2
            with pytest.raises(ServiceUnavailable, match="password authentication failed"):
                with db.transaction():
                    pass
        finally:
            db.close()


def test_presigned_upload_url_accepts_the_put(services_url: str, aws: Any,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import requests

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="svcmig-uploads")
    monkeypatch.setenv("UPLOAD_BUCKET", "svcmig-uploads")
    reply = call("users", "POST", "/uploads",
                 {"filename": "big.csv", "content_type": "text/csv"})
    assert reply.status == 201, reply.body
    assert reply.body["method"] == "PUT" and reply.body["expires_in"] == 900
    put = requests.put(reply.body["upload_url"], data=b"a,b\n1,2\n",
                       headers=reply.body["headers"], timeout=10)
    assert put.status_code == 200
    stored = s3.get_object(Bucket="svcmig-uploads", Key=reply.body["key"])
    assert stored["Body"].read() == b"a,b\n1,2\n"


def test_oversize_body_points_to_the_upload_path(services_url: str) -> None:
    reply = call("users", "POST", "/users", {"email": "a@example.com", "pad": "x" * 70_000})
    assert reply.status == 413
    assert "POST /uploads" in reply.message and reply.body["upload_path"] == "/uploads"


def test_uploads_not_configured_is_a_503_with_a_reason(services_url: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("UPLOAD_BUCKET", raising=False)
    reply = call("users", "POST", "/uploads", {"filename": "a.bin"})
    assert reply.status == 503 and "UPLOAD_BUCKET" in reply.message


def test_iam_auth_signs_a_token_per_connection(aws: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """What infra/ deploys: RDS Proxy with IAM auth, so the password is a signed token."""
    from services.shared.db import IamTokenCredentials, credentials_from_environment

    for name, value in {"DB_AUTH": "iam", "DB_HOST": "proxy.example.internal", "DB_PORT": "5432",
                        "DB_NAME": "app", "DB_USER": "users_app",
                        "DB_SECRET_ID": "ignored-with-iam"}.items():
        monkeypatch.setenv(name, value)
    credentials = credentials_from_environment("users")
    assert isinstance(credentials, IamTokenCredentials)
    info = psycopg.conninfo.conninfo_to_dict(credentials.conninfo())
    assert info["user"] == "users_app" and info["host"] == "proxy.example.internal"
    assert info["sslmode"] == "require"
    assert "Action=connect" in str(info["password"]) and "X-Amz-Signature" in str(info["password"])
    monkeypatch.delenv("DB_USER")
    with pytest.raises(ServiceUnavailable, match="DB_USER"):
        credentials_from_environment("users")
