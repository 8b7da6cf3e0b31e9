"""Service handler benchmark: latency of the real users/orders handlers, in process and through
`svcmig dev`, and the connection storm's figures (through PgBouncer and straight to Postgres).

- in process: each route called N times with an API Gateway v2 event, warm (after 20 warm-up
  calls); p50/p99 of the handler call, which includes routing, validation, the pool checkout
  with its check, the SQL and, for POSTs, the idempotency record round trips;
- cold: a fresh process imports a handler and serves its first request (import + pool + first
  query), median of 5;
- through `svcmig dev`: the same routes over HTTP/1.1 keep-alive from this process;
- storm: tests/services/storm.py with W instances, through PgBouncer (transaction mode, pool 4)
  and straight to a throwaway PostgreSQL 18 with max_connections=20.

Usage:
    python bench/bench_handlers.py [--requests 500] [--workers 100] [--database-url URL]

The database URL defaults to $SVCMIG_BENCH_DATABASE_URL, then
postgresql://postgres@127.0.0.1:5432/postgres when that port answers, then the project's
embedded Postgres. The bench creates and drops its own database. Nothing asserts on timings.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import psycopg

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from migrations_runtime.dev.embedded import embedded_url  # noqa: E402
from migrations_runtime.engine.apply import migrate  # noqa: E402

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
COLD_SNIPPET = """
import json, os, sys, time
t0 = time.perf_counter()
sys.path.insert(0, {repo!r})
from services.shared.events import LocalContext, http_api_event
from services.users import handler
t1 = time.perf_counter()
r = handler.handler(http_api_event("GET", "/users/1"), LocalContext())
t2 = time.perf_counter()
print(json.dumps({{"import_ms": (t1 - t0) * 1000, "first_ms": (t2 - t1) * 1000,
                  "status": r["statusCode"]}}))
"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def server_url(explicit: str | None) -> str:
    url = explicit or os.environ.get("SVCMIG_BENCH_DATABASE_URL")
    if url:
        return url
    try:
        socket.create_connection(("127.0.0.1", 5432), timeout=0.5).close()
        return DEFAULT_URL
    except OSError:
        return embedded_url(REPO)


def with_database(url: str, name: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(url)
    info["dbname"] = name
    return psycopg.conninfo.make_conninfo(**info)  # type: ignore[arg-type]


Call = Callable[[str, str, Any, dict[str, str]], tuple[int, Any]]


def in_process_call() -> Call:
    from services.orders import handler as orders
    from services.shared.events import LocalContext, http_api_event, response_body
    from services.users import handler as users

    for module in (users, orders):
        module.logger.setLevel("ERROR")

    def call(method: str, path: str, body: Any, headers: dict[str, str]) -> tuple[int, Any]:
        # /users/{id}/orders belongs to orders, as in API Gateway's route table
        module = orders if path.startswith("/orders") or path.endswith("/orders") else users
        path, _, query = path.partition("?")
        event = http_api_event(method, path, body=None if body is None else json.dumps(body),
                               headers={"content-type": "application/json", **headers},
                               query=query)
        response = module.handler(event, LocalContext(function_name=module.SERVICE))
        return response["statusCode"], json.loads(response_body(response) or b"null")

    return call


def close_pools() -> None:
    from services.orders.handler import db as orders_db
    from services.users.handler import db as users_db

    users_db.close()
    orders_db.close()


def http_call(port: int) -> Call:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def call(method: str, path: str, body: Any, headers: dict[str, str]) -> tuple[int, Any]:
        payload = None if body is None else json.dumps(body)
        conn.request(method, path, body=payload,
                     headers={"Content-Type": "application/json", **headers})
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"null")

    return call


def measure(call: Call, requests: int) -> dict[str, tuple[float, float]]:
    """p50/p99 (ms) per route, after 20 warm-up calls."""
    run = uuid.uuid4().hex[:8]
    status, user = call("POST", "/users", {"email": f"bench-{run}@example.com"}, {})
    assert status == 201, user
    uid = user["id"]
    routes: dict[str, Callable[[int], tuple[str, str, Any, dict[str, str]]]] = {
        "GET /users/{id}": lambda i: ("GET", f"/users/{uid}", None, {}),
        "GET /users?limit=20": lambda i: ("GET", "/users?limit=20", None, {}),
        "POST /users (new key)": lambda i: ("POST", "/users",
                                            {"email": f"b{run}-{i}@example.com"},
                                            {"Idempotency-Key": f"{run}-u-{i}"}),
        "POST /users (replay)": lambda i: ("POST", "/users", {"email": f"b{run}-0@example.com"},
                                           {"Idempotency-Key": f"{run}-u-0"}),
        "POST /orders (new key)": lambda i: ("POST", "/orders",
                                             {"user_id": uid, "total_cents": i},
                                             {"Idempotency-Key": f"{run}-o-{i}"}),
        "GET /users/{id}/orders": lambda i: ("GET", f"/users/{uid}/orders", None, {}),
    }
    results = {}
    for name, make in routes.items():
        for i in range(20):
            call(*make(100_000 + i))
        timings = []
        for i in range(requests):
            method, path, body, headers = make(i)
            started = time.perf_counter()
            status, _ = call(method, path, body, headers)
            timings.append((time.perf_counter() - started) * 1000)
            assert status < 300, (name, status)
        results[name] = (statistics.median(timings), percentile(timings, 99))
    return results


def cold_start(database_url: str) -> tuple[float, float]:
    env = {**os.environ, "DATABASE_URL": database_url, "POWERTOOLS_METRICS_DISABLED": "true",
           "POWERTOOLS_LOG_LEVEL": "ERROR"}
    runs = []
    for _ in range(5):
        out = subprocess.run([sys.executable, "-c", COLD_SNIPPET.format(repo=str(REPO))],
                             env=env, capture_output=True, text=True, check=True).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
    return (statistics.median(r["import_ms"] for r in runs),
            statistics.median(r["first_ms"] for r in runs))


def start_dev(database_url: str, root: Path = REPO,
              concurrency: int | None = None) -> tuple[subprocess.Popen[str], int]:
    """`svcmig dev` on a free port for the project at `root` (it migrates first)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    env = {**os.environ, "SVCMIG_PROJECT_ROOT": str(root)}
    extra = ["--concurrency", str(concurrency)] if concurrency else []
    process = subprocess.Popen([sys.executable, "-m", "migrations_runtime.cli", "dev", "--port",
                                str(port), "--database-url", database_url, *extra], cwd=root,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               text=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line.startswith("serving"), line
    # keep reading: a full pipe would block the server's next print (Powertools prints a
    # metrics blob to stdout every 100 values) and with it every request
    threading.Thread(target=lambda: [None for _ in process.stdout],  # type: ignore[union-attr]
                     daemon=True).start()
    return process, port


def storm_figures(url: str, database: str, workers: int) -> list[str]:
    from tests.pgbouncer import pgbouncer, pgbouncer_binary
    from tests.services.storm import APP_ROLES, run_storm
    from tests.services.throwaway import throwaway_postgres

    rows = []

    def row(label: str, result: Any) -> str:
        ok = [ms for ms, status in zip(result.latencies_ms, result.statuses, strict=False)
              if status < 400]
        p50 = f"{statistics.median(ok):.1f}" if ok else "–"
        p99 = f"{percentile(ok, 99):.1f}" if ok else "–"
        return (f"| {label} | {result.workers} | {len(result.statuses)} | {result.errors} | "
                f"{result.seconds:.2f} | {result.max_backends} | {p50} | {p99} |")

    if pgbouncer_binary():
        with pgbouncer(url, database, 4, users=APP_ROLES) as bouncer:
            rows.append(row("PgBouncer, transaction mode, pool 4",
                            run_storm(bouncer, url, workers)))
    with throwaway_postgres(settings={"max_connections": "20"}) as direct:
        migrate(direct, REPO, "all", log=lambda _: None)
        rows.append(row("direct, max_connections=20", run_storm(direct, direct, workers,
                                                                pool_timeout=3)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--workers", type=int, default=100)
    parser.add_argument("--database-url")
    args = parser.parse_args()

    url = server_url(args.database_url)
    name = f"bench_handlers_{os.getpid()}"
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        version = admin.execute("SHOW server_version").fetchone()
    database_url = with_database(url, name)
    os.environ.update({"DATABASE_URL": database_url, "POWERTOOLS_METRICS_DISABLED": "true"})
    try:
        migrate(database_url, REPO, "all", log=lambda _: None)
        in_process = measure(in_process_call(), args.requests)
        close_pools()  # the storm counts server backends: this process must hold none
        cold_import, cold_first = cold_start(database_url)
        dev, port = start_dev(database_url)
        try:
            through_dev = measure(http_call(port), args.requests)
        finally:
            dev.terminate()
            dev.wait(20)
        storm = storm_figures(url, name, args.workers)
    finally:
        close_pools()
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    print(f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"- machine: {os.cpu_count()} CPUs, {platform.system()} {platform.machine()}; "
          f"Python {platform.python_version()}")
    packages = ", ".join(f"{p} {metadata.version(p)}" for p in
                         ("aws-lambda-powertools", "pydantic", "psycopg", "psycopg-pool"))
    print(f"- {packages}; PostgreSQL {version[0] if version else '?'}")
    print(f"- {args.requests} requests per route after 20 warm-up calls\n")
    print("| route | in process p50 (ms) | in process p99 (ms) | svcmig dev p50 (ms) | "
          "svcmig dev p99 (ms) |")
    print("|---|--:|--:|--:|--:|")
    for route, (p50, p99) in in_process.items():
        d50, d99 = through_dev[route]
        print(f"| {route} | {p50:.2f} | {p99:.2f} | {d50:.2f} | {d99:.2f} |")
    print(f"\nCold start (fresh process, median of 5): import {cold_import:.0f} ms, first "
          f"request {cold_first:.0f} ms.\n")
    print("| storm | instances | requests | errors | seconds | peak server backends | "
          "p50 ok (ms) | p99 ok (ms) |")
    print("|---|--:|--:|--:|--:|--:|--:|--:|")
    print("\n".join(storm))


if __name__ == "__main__":
    main()
