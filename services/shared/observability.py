"""The observability seam: every service's Lambda entry point is built here, so logging,
metrics and tracing are the same everywhere and a handler module only declares routes.

- Logger: JSON lines with service, function name, request id, cold_start (Powertools'
  `inject_lambda_context`), plus one `request` line per invocation with method, path, status
  and latency_ms.
- Metrics: CloudWatch EMF (Requests, Latency, ServerErrors, ColdStart); set
  `POWERTOOLS_METRICS_DISABLED=true` to silence them locally (`svcmig dev` does).
- Tracing: X-Ray through Powertools' Tracer, only when enabled, because it needs the X-Ray SDK
  and a daemon: on by default inside Lambda, off elsewhere; `SVCMIG_TRACING=on|off` overrides.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response, content_types
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit

from .http import error_body, refused_body_response
from .text import shown

METRICS_NAMESPACE = "svcmig"
LambdaHandler = Callable[[dict[str, Any], Any], dict[str, Any]]


def tracing_enabled() -> bool:
    setting = os.environ.get("SVCMIG_TRACING", "auto").lower()
    if setting == "auto":
        return "AWS_LAMBDA_FUNCTION_NAME" in os.environ and "SVCMIG_LOCAL" not in os.environ
    return setting in ("1", "on", "true")


def traced(service: str, handler: LambdaHandler) -> LambdaHandler:
    """Wrap `handler` in X-Ray tracing only when tracing is enabled (the SDK is imported only
    then, so local runs and tests need neither the SDK nor a daemon)."""
    if not tracing_enabled():
        return handler
    from aws_lambda_powertools import Tracer

    tracer = Tracer(service=service)
    return tracer.capture_lambda_handler(handler)  # type: ignore[no-any-return]


def lambda_entrypoint(service: str, app: APIGatewayHttpResolver) -> tuple[LambdaHandler, Logger]:
    """The Lambda handler for `app`: bodies refused before routing (size, media type, UTF-8),
    routing, one log line and metrics per request."""
    logger = Logger(service=service)
    metrics = Metrics(namespace=METRICS_NAMESPACE, service=service)

    @app.exception_handler(Exception)
    def _unexpected(err: Exception) -> Response[Any]:
        """A bug: logged with its traceback; the client gets JSON naming the request id."""
        logger.exception("unhandled error")
        request_id = app.current_event.request_context.request_id
        return Response(status_code=500, content_type=content_types.APPLICATION_JSON,
                        body=error_body("internal", "internal error; quote request id "
                                        f"{request_id} when reporting it"))

    # the ColdStart metric is printed even when metrics are disabled: only inside Lambda
    @metrics.log_metrics(capture_cold_start_metric="AWS_LAMBDA_FUNCTION_NAME" in os.environ)
    @logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP,
                                  clear_state=True)
    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        started = time.perf_counter()
        response = refused_body_response(event) or app.resolve(event, context)
        latency_ms = round((time.perf_counter() - started) * 1000, 2)
        status = int(response.get("statusCode", 500))
        http = event.get("requestContext", {}).get("http", {})
        # shown(): a crafted event's lone surrogate would make the log line unwritable
        logger.info("request", extra={"method": http.get("method"),
                                      "path": shown(str(event.get("rawPath") or "")),
                                      "status": status, "latency_ms": latency_ms})
        metrics.add_metric(name="Requests", unit=MetricUnit.Count, value=1)
        metrics.add_metric(name="Latency", unit=MetricUnit.Milliseconds, value=latency_ms)
        if status >= 500:
            metrics.add_metric(name="ServerErrors", unit=MetricUnit.Count, value=1)
        return response

    return traced(service, handler), logger
