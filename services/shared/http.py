"""HTTP behaviour every service shares: the resolver with validation, JSON errors with a
message (never a bare 500), the body size limit, opaque keyset cursors and id limits.

Every error body is `{"message": "...", "code": "..."}`, plus `errors` for validation details.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from http import HTTPStatus
from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response, content_types
from aws_lambda_powertools.event_handler.exceptions import NotFoundError
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError

# API Gateway HTTP API accepts 10 MB and a synchronous Lambda invoke 6 MB, but a JSON API
# should refuse far earlier: large payloads go straight to S3 through POST /uploads.
DEFAULT_MAX_BODY_BYTES = 64 * 1024
UPLOAD_PATH = "/uploads"
BIGINT_MAX = 2**63 - 1
INT_MAX = 2**31 - 1


class ApiError(Exception):
    """An error the client can act on; rendered as JSON with its status and message."""

    status = HTTPStatus.BAD_REQUEST
    code = "bad_request"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class NotFound(ApiError):
    status = HTTPStatus.NOT_FOUND
    code = "not_found"


class Conflict(ApiError):
    status = HTTPStatus.CONFLICT
    code = "conflict"


class Unprocessable(ApiError):
    status = HTTPStatus.UNPROCESSABLE_ENTITY
    code = "unprocessable"


class PayloadTooLarge(ApiError):
    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    code = "payload_too_large"


class ServiceUnavailable(ApiError):
    status = HTTPStatus.SERVICE_UNAVAILABLE
    code = "unavailable"


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    """The one shape of every error body."""
    return {"message": message, "code": code, **extra}


def error_response(err: ApiError) -> Response[Any]:
    headers = {**err.headers}
    return Response(status_code=int(err.status), content_type=content_types.APPLICATION_JSON,
                    body=error_body(err.code, err.message), headers=headers)


def json_response(status: int, body: Any, headers: dict[str, str] | None = None
                  ) -> Response[Any]:
    return Response(status_code=status, content_type=content_types.APPLICATION_JSON, body=body,
                    headers=headers or {})


def created_response(created: dict[str, Any], location: str, replayed: bool) -> Response[Any]:
    """201 for an idempotent create; a replay of a completed request says so in a header."""
    headers = {"Location": location}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return json_response(201, created, headers)


def max_body_bytes() -> int:
    return int(os.environ.get("MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES))


def oversize_response(event: dict[str, Any]) -> dict[str, Any] | None:
    """A ready API Gateway response when the body is over the limit, else None. Checked before
    routing so a huge body is never parsed."""
    body = event.get("body") or ""
    size = len(body) * 3 // 4 if event.get("isBase64Encoded") else len(body.encode())
    limit = max_body_bytes()
    if size <= limit:
        return None
    message = (f"the request body is {size} bytes; this API accepts at most {limit}. Upload "
               f"large payloads to S3: POST {UPLOAD_PATH} returns a presigned PUT URL")
    return {
        "statusCode": int(HTTPStatus.REQUEST_ENTITY_TOO_LARGE),
        "headers": {"Content-Type": content_types.APPLICATION_JSON},
        "body": json.dumps(error_body(PayloadTooLarge.code, message,
                                      upload_path=UPLOAD_PATH)),
        "isBase64Encoded": False,
    }


def _validation_message(errors: list[dict[str, Any]]) -> str:
    parts = []
    for error in errors[:5]:
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts)


def make_resolver() -> APIGatewayHttpResolver:
    """An HTTP API resolver with pydantic validation and the shared error rendering."""
    app = APIGatewayHttpResolver(enable_validation=True)

    @app.exception_handler(ApiError)
    def _api_error(err: ApiError) -> Response[Any]:
        return error_response(err)

    @app.exception_handler(RequestValidationError)
    def _invalid(err: RequestValidationError) -> Response[Any]:
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")}
                  for e in err.errors()]
        return Response(status_code=422, content_type=content_types.APPLICATION_JSON,
                        body=error_body("invalid_request", _validation_message(errors),
                                        errors=errors))

    @app.not_found
    def _not_found(_: NotFoundError) -> Response[Any]:
        event = app.current_event
        method, path = event.http_method.upper(), event.path
        allowed = sorted({route.method for route in app._static_routes + app._dynamic_routes
                          if route.rule.match(path)})
        if allowed:
            return Response(status_code=405, content_type=content_types.APPLICATION_JSON,
                            headers={"Allow": ", ".join(allowed)},
                            body=error_body("method_not_allowed",
                                            f"{method} is not allowed on {path}; use "
                                            f"{', '.join(allowed)}"))
        return Response(status_code=404, content_type=content_types.APPLICATION_JSON,
                        body=error_body("no_route", f"no route for {method} {path}"))

    return app


def encode_cursor(last_id: int) -> str:
    """Opaque keyset cursor: clients pass it back, never build it."""
    return base64.urlsafe_b64encode(f"after:{last_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> int:
    """The id after which the next page starts (0 = first page); a bogus cursor is a 400."""
    if not cursor:
        return 0
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        prefix, _, value = text.partition(":")
        last_id = int(value)
        if prefix != "after" or not 0 < last_id <= BIGINT_MAX:
            raise ValueError(text)
    except (ValueError, binascii.Error, UnicodeDecodeError) as err:
        raise ApiError("cursor is not valid: pass the next_cursor of a previous page, or no "
                       "cursor for the first page") from err
    return last_id
