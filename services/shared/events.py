"""API Gateway HTTP API (payload format 2.0) events and a Lambda context, built from a plain
HTTP request: `svcmig dev`, the tests and the benchmarks call the real handlers with these."""

from __future__ import annotations

import base64
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

TEXT_TYPES = ("json", "text/", "xml", "x-www-form-urlencoded", "javascript")


@dataclass
class LocalContext:
    """The attributes of a Lambda context that Powertools reads."""

    function_name: str = "local"
    memory_limit_in_mb: int = 256
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    timeout_ms: int = 30_000
    started: float = field(default_factory=time.monotonic)

    @property
    def invoked_function_arn(self) -> str:
        return f"arn:aws:lambda:us-east-1:000000000000:function:{self.function_name}"

    def get_remaining_time_in_millis(self) -> int:
        return max(0, self.timeout_ms - int((time.monotonic() - self.started) * 1000))


def http_api_event(method: str, path: str, *, body: bytes | str | None = None,
                   headers: dict[str, str] | None = None, query: str = "",
                   route_key: str | None = None, path_parameters: dict[str, str] | None = None,
                   source_ip: str = "127.0.0.1") -> dict[str, Any]:
    """The event API Gateway would send for this request: headers lower-cased and repeated
    values comma-joined, cookies split out, non-text bodies base64-encoded."""
    lowered: dict[str, str] = {}
    for name, value in (headers or {}).items():
        key = name.lower()
        lowered[key] = f"{lowered[key]},{value}" if key in lowered else value
    cookies = [c.strip() for c in lowered.pop("cookie", "").split(";") if c.strip()]
    params: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        params[name] = f"{params[name]},{value}" if name in params else value
    raw = body.encode() if isinstance(body, str) else body
    content_type = lowered.get("content-type", "application/json")
    is_text = raw is None or any(t in content_type for t in TEXT_TYPES)
    if raw is not None and is_text:
        try:
            text_body: str | None = raw.decode()
        except UnicodeDecodeError:
            is_text = False
    if raw is None:
        text_body = None
    elif not is_text:
        text_body = base64.b64encode(raw).decode()
    now = time.time()
    request_id = str(uuid.uuid4())
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": route_key or "$default",
        "rawPath": path,
        "rawQueryString": query,
        "headers": lowered,
        "requestContext": {
            "accountId": "000000000000",
            "apiId": "local",
            "domainName": lowered.get("host", "127.0.0.1"),
            "domainPrefix": "local",
            "http": {"method": method.upper(), "path": path, "protocol": "HTTP/1.1",
                     "sourceIp": source_ip, "userAgent": lowered.get("user-agent", "")},
            "requestId": request_id,
            "routeKey": route_key or "$default",
            "stage": "$default",
            "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "timeEpoch": int(now * 1000),
        },
        "isBase64Encoded": not is_text,
    }
    if cookies:
        event["cookies"] = cookies
    if params:
        event["queryStringParameters"] = params
    if path_parameters:
        event["pathParameters"] = path_parameters
    if text_body is not None:
        event["body"] = text_body
    return event


def response_body(response: dict[str, Any]) -> bytes:
    """The bytes of a handler's response body."""
    body = response.get("body") or ""
    return base64.b64decode(body) if response.get("isBase64Encoded") else body.encode()
