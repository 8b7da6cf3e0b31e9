"""The users service: `POST /users` (idempotent), `GET /users/{id}`, `GET /users` (keyset
pages), `POST /uploads` (a presigned S3 PUT for payloads too large for the API).

Lambda handler: `services.users.handler.handler`. Tables come from services/users/migrations/.
"""

from __future__ import annotations

import os
import uuid
from functools import cache
from typing import Annotated, Any

import psycopg
from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.openapi.params import Header, Path, Query

from services.shared.db import Database
from services.shared.http import (
    BIGINT_MAX,
    Conflict,
    NotFound,
    ServiceUnavailable,
    created_response,
    decode_cursor,
    encode_cursor,
    json_response,
    make_resolver,
)
from services.shared.idempotency import IdempotentWrites
from services.shared.observability import lambda_entrypoint
from services.shared.text import Text

from .models import NewUpload, NewUser, Upload, User, UserPage

SERVICE = "users"
UPLOAD_EXPIRES_SECONDS = 900
COLUMNS = "id, email, display_name, created_at"

app = make_resolver()
db = Database(SERVICE)
writes = IdempotentWrites(db)

UserId = Annotated[int, Path(gt=0, le=BIGINT_MAX, description="user id")]
IdempotencyKey = Annotated[Text | None, Header(alias="idempotency-key", max_length=255,
                                              description="retries with the same key and "
                                              "body return the first response")]


def _user(row: tuple[Any, ...]) -> User:
    return User(id=row[0], email=row[1], display_name=row[2], created_at=row[3])


@app.post("/users", responses={201: {"description": "created (or replayed)"}})
def create_user(user: NewUser, idempotency_key: IdempotencyKey = None) -> Response[User]:
    def insert(conn: psycopg.Connection[Any]) -> dict[str, Any]:
        try:
            row = conn.execute(
                # email_domain: required once the backfill has filled the older rows
                f"INSERT INTO users.users (email, display_name, email_domain) "
                f"VALUES (%s, %s, lower(split_part(%s, '@', 2))) RETURNING {COLUMNS}",
                (user.email, user.display_name, user.email)).fetchone()
        except psycopg.errors.UniqueViolation as err:
            raise Conflict(f"a user with email {user.email!r} already exists") from err
        assert row is not None
        return _user(row).model_dump(mode="json")

    created, replayed = writes.run(idempotency_key, "POST /users", user.model_dump(mode="json"),
                                   insert, context=app.lambda_context)
    return created_response(created, f"/users/{created['id']}", replayed)


@app.get("/users/<user_id>")
def get_user(user_id: UserId) -> User:
    with db.transaction() as conn:
        row = conn.execute(f"SELECT {COLUMNS} FROM users.users WHERE id = %s",
                           (user_id,)).fetchone()
    if row is None:
        raise NotFound(f"user {user_id} does not exist")
    return _user(row)


@app.get("/users")
def list_users(limit: Annotated[int, Query(ge=1, le=100)] = 20,
               cursor: Annotated[Text | None, Query(max_length=200)] = None) -> UserPage:
    after = decode_cursor(cursor)
    with db.transaction() as conn:
        rows = conn.execute(f"SELECT {COLUMNS} FROM users.users WHERE id > %s ORDER BY id "
                            "LIMIT %s", (after, limit + 1)).fetchall()
    items = [_user(row) for row in rows[:limit]]
    return UserPage(items=items,
                    next_cursor=encode_cursor(items[-1].id) if len(rows) > limit else None)


@cache
def _s3() -> Any:
    import boto3

    return boto3.client("s3")


@app.post("/uploads", responses={201: {"description": "a presigned PUT URL"}})
def create_upload(upload: NewUpload) -> Response[Upload]:
    bucket = os.environ.get("UPLOAD_BUCKET")
    if not bucket:
        raise ServiceUnavailable("uploads are not configured here (UPLOAD_BUCKET is not set)")
    key = f"uploads/{uuid.uuid4()}/{upload.filename}"
    url = _s3().generate_presigned_url(
        "put_object", Params={"Bucket": bucket, "Key": key, "ContentType": upload.content_type},
        ExpiresIn=UPLOAD_EXPIRES_SECONDS)
    body = Upload(key=key, upload_url=url, method="PUT",
                  headers={"Content-Type": upload.content_type},
                  expires_in=UPLOAD_EXPIRES_SECONDS)
    return json_response(201, body.model_dump())


handler, logger = lambda_entrypoint(SERVICE, app)
