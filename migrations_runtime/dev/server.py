"""The local dev server behind `svcmig dev`: every service's real Lambda handler behind one
local HTTP server.

The command (`migrations_runtime.cli.dev`) migrates the local database through the same
`engine.apply.migrate` the deploy runs; this module then serves `http://127.0.0.1:<port>`: each
HTTP request becomes an API Gateway HTTP API (payload 2.0) event for the service that owns the
route (routes come from each service's OpenAPI document), and the handler's response goes back
as HTTP.

Like API Gateway + Lambda, each handler instance serves one request at a time and a service has
several (`--concurrency`), so concurrent requests are served concurrently, each instance with
its own tiny pool; bodies over 6 MB are refused before any handler runs, and unknown routes get
a JSON 404. The services are imported only when the
command runs, never when the CLI is imported.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import queue
import re
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any
from urllib.parse import urlsplit

import click

from ..engine.discover import discover_services

LAMBDA_PAYLOAD_LIMIT = 6 * 1024 * 1024
HOST = "127.0.0.1"


@dataclass
class ServiceRoutes:
    """One service's handler instances and the (method, path regex, route key) it answers.

    Like Lambda, which runs one request per instance and scales by adding instances, each
    instance is its own copy of the handler module (its own resolver, pool and idempotency
    store: Powertools keeps the current event on the resolver, so one copy serves one request
    at a time); a request takes a free instance, or waits for one."""

    name: str
    module: ModuleType  # the first instance: its OpenAPI document stands for all
    routes: list[tuple[str, re.Pattern[str], str, int]]
    instances: queue.SimpleQueue[ModuleType] = field(default_factory=queue.SimpleQueue)
    all_instances: list[ModuleType] = field(default_factory=list)

    @contextmanager
    def instance(self) -> Iterator[ModuleType]:
        module = self.instances.get()
        try:
            yield module
        finally:
            self.instances.put(module)


def _route_pattern(template: str) -> tuple[re.Pattern[str], int]:
    """`/users/{user_id}/orders` → a regex, and how many literal segments it has (the more,
    the more specific, as API Gateway prefers)."""
    parts = template.strip("/").split("/")
    regex = "".join(f"/(?P<{p[1:-1]}>[^/]+)" if p.startswith("{") else "/" + re.escape(p)
                    for p in parts if p)
    literal = sum(1 for p in parts if p and not p.startswith("{"))
    return re.compile(f"^{regex or '/'}$"), literal


def _handler_copy(service: str, path: Path, number: int) -> ModuleType:
    """Another instance of `services.<service>.handler`: the same file executed as a module
    of its own (relative imports resolve in the service's package, shared modules such as
    services.shared are imported once), so it gets its own module-level state."""
    name = f"services.{service}.handler__instance{number}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    module.__package__ = f"services.{service}"
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_services(root: Path, concurrency: int = 1) -> list[ServiceRoutes]:
    """Import `services.<name>.handler` for every service that has one, `concurrency`
    instances each."""
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    loaded = []
    for service in discover_services(root):
        path = service.folder / "handler.py"
        if not path.is_file():
            continue
        module = importlib.import_module(f"services.{service.name}.handler")
        schema = module.app.get_openapi_schema()
        routes = []
        for template, item in schema.paths.items():
            pattern, literal = _route_pattern(template)
            for method in ("get", "put", "post", "delete", "patch", "head", "options"):
                if getattr(item, method, None) is not None:
                    routes.append((method.upper(), pattern, template, literal))
        found = ServiceRoutes(service.name, module, routes)
        found.all_instances = [module] + [_handler_copy(service.name, path, n)
                                          for n in range(1, concurrency)]
        for instance in found.all_instances:
            found.instances.put(instance)
        loaded.append(found)
    return loaded


@dataclass
class RouteMatch:
    """The service that owns a request's route, or (service None) the methods the path allows."""

    service: ServiceRoutes | None
    route_key: str = ""
    path_parameters: dict[str, str] = field(default_factory=dict)
    allowed: list[str] = field(default_factory=list)


def find_route(services: list[ServiceRoutes], method: str, path: str) -> RouteMatch:
    """The most specific route for `method path` across all services, as API Gateway picks."""
    best: tuple[int, RouteMatch] | None = None
    allowed: set[str] = set()
    for service in services:
        for route_method, pattern, template, literal in service.routes:
            match = pattern.match(path)
            if not match:
                continue
            if route_method != method:
                allowed.add(route_method)
            elif best is None or literal > best[0]:
                best = (literal, RouteMatch(service, f"{method} {template}", match.groupdict()))
    return best[1] if best else RouteMatch(None, allowed=sorted(allowed))


def merged_openapi(services: list[ServiceRoutes]) -> dict[str, Any]:
    """One OpenAPI document for the whole local API."""
    document: dict[str, Any] = {"openapi": "3.1.0", "info": {"title": "svcmig services",
                                                              "version": "local"},
                                "paths": {}, "components": {"schemas": {}}}
    for service in services:
        part = json.loads(service.module.app.get_openapi_json_schema())
        document["paths"].update(part.get("paths", {}))
        document["components"]["schemas"].update(part.get("components", {}).get("schemas", {}))
    return document


def make_request_handler(services: list[ServiceRoutes]) -> type[BaseHTTPRequestHandler]:
    from services.shared.events import LocalContext, http_api_event, response_body

    openapi = json.dumps(merged_openapi(services)).encode()

    class Handler(BaseHTTPRequestHandler):
        server_version = "svcmig-dev"
        protocol_version = "HTTP/1.1"
        # headers and body go out in separate writes: without TCP_NODELAY, Nagle's algorithm
        # and the client's delayed ACK add ~40 ms to every keep-alive response
        disable_nagle_algorithm = True

        def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None,
                  cookies: list[str] | None = None) -> None:
            self.send_response(status)
            for name, value in (headers or {}).items():
                if name.lower() not in ("content-length", "connection", "transfer-encoding"):
                    self.send_header(name, value)
            for cookie in cookies or []:
                self.send_header("Set-Cookie", cookie)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _error(self, status: int, message: str, **headers: str) -> None:
            body = json.dumps({"message": message, "code": "gateway"}).encode()
            self._send(status, body, {"Content-Type": "application/json", **headers})

        def send_error(self, code: int, message: str | None = None,
                       explain: str | None = None) -> None:
            """http.server's own refusals (a request line or headers too long or malformed)
            in JSON like every other answer, not its HTML page; the connection then closes."""
            self.close_connection = True
            reason = message or self.responses.get(code, ("error",))[0]
            body = json.dumps({"message": reason, "code": "gateway"}).encode()
            self.send_response(code, message)
            self.send_header("Content-Type", "application/json")
            self.send_header("Connection", "close")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _dispatch(self) -> None:
            started = time.perf_counter()
            url = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            if length > LAMBDA_PAYLOAD_LIMIT:
                self.close_connection = True
                self._error(413, f"request body of {length} bytes is over the 6 MB Lambda "
                                 "payload limit; upload large payloads with POST /uploads")
                return
            body = self.rfile.read(length) if length else None
            if self.command == "GET" and url.path == "/openapi.json":
                self._send(200, openapi, {"Content-Type": "application/json"})
                return
            found = find_route(services, self.command, url.path)
            service = found.service
            if service is None:
                if found.allowed:
                    allowed = ", ".join(found.allowed)
                    self._error(405, f"{self.command} is not allowed on {url.path}; use "
                                     f"{allowed}", Allow=allowed)
                else:
                    self._error(404, f"no route for {self.command} {url.path}")
                return
            event = http_api_event(self.command, url.path, body=body, query=url.query,
                                   headers=dict(self.headers.items()),
                                   route_key=found.route_key,
                                   path_parameters=found.path_parameters,
                                   source_ip=self.client_address[0])
            with service.instance() as instance:
                response = instance.handler(event, LocalContext(function_name=service.name))
            self._send(int(response.get("statusCode", 200)), response_body(response),
                       response.get("headers") or {}, response.get("cookies"))
            click.echo(f"{self.command} {self.path} → {service.name} "
                       f"{response.get('statusCode')} "
                       f"{(time.perf_counter() - started) * 1000:.1f} ms", err=True)

        def _guarded(self) -> None:
            try:
                self._dispatch()
            except Exception as err:  # a bug in a handler: answer, log, keep serving
                click.echo(f"error: {type(err).__name__}: {err}", err=True)
                self._error(502, f"the handler failed: {type(err).__name__}; see the "
                                 "svcmig dev output")

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _guarded

        def __getattr__(self, name: str) -> Any:
            """Any other method (TRACE, QUERY…) gets the JSON 405 or 404 too, not
            http.server's HTML 501."""
            if name.startswith("do_"):
                return self._guarded
            raise AttributeError(name)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            """Quiet: `_dispatch` prints one line per request."""

    return Handler


def curl_examples(port: int) -> str:
    base = f"http://{HOST}:{port}"
    return "\n".join([
        f"  curl -s -X POST {base}/users -H 'Content-Type: application/json' "
        "-H 'Idempotency-Key: first-user' -d '{\"email\": \"ada@example.com\"}'",
        f"  curl -s {base}/users/1",
        f"  curl -s -X POST {base}/orders -H 'Content-Type: application/json' "
        "-d '{\"user_id\": 1, \"total_cents\": 1250}'",
        f"  curl -s {base}/users/1/orders",
        f"  curl -s {base}/openapi.json",
    ])


def serve(services: list[ServiceRoutes], port: int,
          ready: Callable[[ThreadingHTTPServer], None] | None = None) -> None:
    """Serve until Ctrl-C or SIGTERM, then close the server and every service's pool."""
    server = ThreadingHTTPServer((HOST, port), make_request_handler(services))
    server.daemon_threads = True

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    # SIGINT explicitly too: a shell script's background job starts with SIGINT ignored
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        if ready:
            ready(server)
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.server_close()
        for service in services:
            for instance in service.all_instances:
                instance.db.close()
