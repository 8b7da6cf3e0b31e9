"""`svcmig dev` as a user runs it: its own process, real HTTP, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import REPO


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None,
         raw: bytes | None = None) -> tuple[int, dict[str, str], Any]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url, data=data, method=method, headers={
        "Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), json.loads(response.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read() or b"null")


def raw_request(base: str, request: bytes) -> int:
    """Send `request` bytes as they are; the status of a JSON answer (asserted JSON)."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"Content-Type: application/json" in head, answer[:300]
    assert json.loads(body)["message"]
    return int(head.split()[1])


@pytest.fixture
def dev_server(database_url: str) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    port = free_port()
    env = {**os.environ, "SVCMIG_PROJECT_ROOT": str(REPO)}
    env.pop("DATABASE_URL", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "migrations_runtime.cli", "dev", "--port", str(port),
         "--database-url", database_url],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert first.startswith("serving"), first + process.stderr.read()  # type: ignore[union-attr]
        yield f"http://127.0.0.1:{port}", process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_dev_serves_every_service_and_stops_on_ctrl_c(
        dev_server: tuple[str, subprocess.Popen[str]]) -> None:
    base, process = dev_server
    status, _, user = http("POST", f"{base}/users", {"email": "ada@example.com"},
                           {"Idempotency-Key": "dev-1"})
    assert status == 201
    status, headers, again = http("POST", f"{base}/users", {"email": "ada@example.com"},
                                  {"Idempotency-Key": "dev-1"})
    assert status == 201 and again == user and headers["Idempotent-Replayed"] == "true"
    assert http("GET", f"{base}/users/{user['id']}")[2] == user
    status, _, order = http("POST", f"{base}/orders",
                            {"user_id": user["id"], "total_cents": 1250})
    assert status == 201
    # /users/{id}/orders belongs to the orders service, /users/{id} to users
    assert http("GET", f"{base}/users/{user['id']}/orders")[2]["items"] == [order]
    status, headers, error = http("DELETE", f"{base}/users/1")
    assert status == 405 and headers["Allow"] == "GET" and error["message"]
    for method in ("TRACE", "QUERY"):  # methods http.server has no do_ for: JSON, not a 501
        status, headers, error = http(method, f"{base}/users")
        assert status == 405 and headers["Allow"] == "GET, POST" and error["message"]
    assert http("GET", f"{base}/nowhere")[0] == 404
    status, _, error = http("POST", f"{base}/users", raw=b"x" * 70_000)
    assert status == 413 and "/uploads" in error["message"]
    # every route of every service, in one document (tools/schemathesis_run.py fuzzes it)
    assert set(http("GET", f"{base}/openapi.json")[2]["paths"]) == {
        "/users", "/users/{user_id}", "/uploads", "/orders", "/orders/{order_id}",
        "/users/{user_id}/orders"}
    # what http.server refuses itself is JSON too (a breaker got its HTML pages)
    for request, status in ((b"GET /users?cursor=" + b"A" * 100_000 + b" HTTP/1.1", 414),
                            (b"GET /users HTTP/1.1\r\nX-Big: " + b"b" * 100_000, 431),
                            (b"GET /users/1\xed\xa0\x80 HTTP/1.1", 400)):
        assert raw_request(base, request + b"\r\n\r\n") == status

    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=20)
    assert process.returncode == 0, stderr
    assert "stopped" in stderr and "Traceback" not in stderr
