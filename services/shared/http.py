"""HTTP behaviour every service shares: the resolver with validation, JSON errors with a
message (never a bare 500), the body size limit, opaque keyset cursors and id limits.

Every error body is `{"message": "...", "code": "..."}`, plus `errors` for validation details.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from http import HTTPStatus
from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response, content_types
from aws_lambda_powertools.event_handler.exceptions import NotFoundError
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError

from .text import shown

# API Gateway HTTP API accepts 10 MB and a synchronous Lambda invoke 6 MB, but a JSON API
# should refuse far earlier: large payloads go straight to S3 through POST /uploads.
DEFAULT_MAX_BODY_BYTES = 64 * 1024
UPLOAD_PATH = "/uploads"
BIGINT_MAX = 2**63 - 1
INT_MAX = 2**31 - 1
BODY_METHODS = ("POST", "PUT", "PATCH", "DELETE")


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


def _gateway_response(status: int, body: dict[str, Any]) -> dict[str, Any]:
    """An API Gateway response for a request refused before routing."""
    return {"statusCode": status, "headers": {"Content-Type": content_types.APPLICATION_JSON},
            "body": json.dumps(body), "isBase64Encoded": False}


def oversize_response(event: dict[str, Any]) -> dict[str, Any] | None:
    """A ready API Gateway response when the body is over the limit, else None. Checked before
    routing so a huge body is never parsed."""
    body = event.get("body") or ""
    size = (len(body) * 3 // 4 if event.get("isBase64Encoded")
            else len(body.encode(errors="surrogatepass")))  # a lone surrogate is no 500 here
    limit = max_body_bytes()
    if size <= limit:
        return None
    message = (f"the request body is {size} bytes; this API accepts at most {limit}. Upload "
               f"large payloads to S3: POST {UPLOAD_PATH} returns a presigned PUT URL")
    return _gateway_response(int(HTTPStatus.REQUEST_ENTITY_TOO_LARGE),
                             error_body(PayloadTooLarge.code, message, upload_path=UPLOAD_PATH))


def _content_type(event: dict[str, Any]) -> str:
    return str((event.get("headers") or {}).get("content-type", "")).strip()


def is_json_media_type(content_type: str) -> bool:
    """`application/json` or `application/<x>+json` (RFC 6839), any case, with no charset or
    UTF-8 (RFC 8259: JSON exchanged between systems is UTF-8)."""
    media, _, parameters = content_type.partition(";")
    media = media.strip().lower()
    if media != content_types.APPLICATION_JSON and not (
            media.startswith("application/") and media.endswith("+json")):
        return False
    charset = re.search(r'charset\s*=\s*"?([^";\s]*)', parameters, re.IGNORECASE)
    return charset is None or charset[1].lower() in ("utf-8", "utf8")


def unsupported_media_response(event: dict[str, Any]) -> dict[str, Any] | None:
    """A ready 415 when a request that carries (or may carry) a body says it is not JSON, else
    None. These APIs take JSON only; Powertools would also parse forms and multipart, and a
    malformed multipart type (no boundary) fails outside validation."""
    method = str(event.get("requestContext", {}).get("http", {}).get("method", "")).upper()
    content_type = _content_type(event)
    if not content_type:
        return None
    if is_json_media_type(content_type):
        # Powertools compares the raw header with `startswith("application/json")`: hand it
        # the canonical spelling of what RFC 9110 says is the same type (case-insensitive)
        event["headers"]["content-type"] = content_types.APPLICATION_JSON
        return None
    if not event.get("body") and method not in BODY_METHODS:
        return None
    message = (f"Content-Type {shown(content_type)!r} is not accepted: send the body as "
               f"{content_types.APPLICATION_JSON}")
    return _gateway_response(int(HTTPStatus.UNSUPPORTED_MEDIA_TYPE),
                             error_body("unsupported_media_type", message))


def undecodable_response(event: dict[str, Any]) -> dict[str, Any] | None:
    """A ready 422 when a base64-encoded body is not UTF-8, else None: Powertools decodes it
    before validation, and the UnicodeDecodeError would be a 500."""
    body = event.get("body")
    if not body or not event.get("isBase64Encoded"):
        return None
    try:
        base64.b64decode(body.encode(errors="surrogatepass")).decode()
    except (ValueError, binascii.Error) as err:  # UnicodeDecodeError is a ValueError
        where = f" (byte {err.start})" if isinstance(err, UnicodeDecodeError) else ""
        message = f"invalid request: body: not UTF-8 text{where}; send JSON encoded as UTF-8"
        return _gateway_response(int(HTTPStatus.UNPROCESSABLE_ENTITY), error_body(
            "invalid_request", message,
            errors=[{"loc": ["body"], "msg": "not UTF-8 text", "type": "body_not_utf8"}]))
    return None


def refused_body_response(event: dict[str, Any]) -> dict[str, Any] | None:
    """A ready response for a body refused before routing (over the limit: 413; not JSON: 415;
    not UTF-8: 422), else None."""
    return (oversize_response(event) or unsupported_media_response(event)
            or undecodable_response(event))


def _validation_message(errors: list[dict[str, Any]]) -> str:
    parts = []
    for error in errors[:5]:
        where = ".".join(shown(str(p)) for p in error.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts)


def _json_body(text: str) -> Any:
    """`json.loads`, where JSON Python cannot read is malformed JSON like any other (a 422):
    nested deeper than the interpreter recurses (a 64 KiB body of `[` is: RecursionError), or
    an integer of more than 4300 digits (ValueError); either was a 500."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise
    except RecursionError as err:
        raise json.JSONDecodeError("nested too deeply", text, 0) from err
    except ValueError as err:
        raise json.JSONDecodeError(f"unreadable number ({err})", text, 0) from err


def make_resolver() -> APIGatewayHttpResolver:
    """An HTTP API resolver with pydantic validation and the shared error rendering."""
    app = APIGatewayHttpResolver(enable_validation=True, json_body_deserializer=_json_body)

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
