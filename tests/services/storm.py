"""A connection storm: N separate processes, each a cold "function instance" with its own pool,
all invoking the real handlers at once. Used by test_storm.py and bench/bench_handlers.py.

Processes come from a forkserver that has already imported the handlers (importing Powertools,
pydantic and psycopg 100 times over would take a minute on two cores); each child still opens
its own pool, as a Lambda instance does. Children keep their connections until every child is
done, like warm instances that have not been reclaimed yet.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg

from tests.pgbouncer import pooler_servers

HANDLER_MODULES = ["services.users.handler", "services.orders.handler", __name__]
APP_ROLES = ("users_app", "orders_app")


@dataclass
class StormResult:
    workers: int
    seconds: float
    spawn_seconds: float = 0.0
    statuses: list[int] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    max_backends: int = 0
    max_pooler_servers: int = 0  # server connections PgBouncer itself held (SHOW SERVERS)

    @property
    def errors(self) -> int:
        return sum(1 for status in self.statuses if status >= 400)


def _invoke(module: Any, method: str, path: str, body: Any = None,
            headers: dict[str, str] | None = None) -> tuple[int, Any, float]:
    from services.shared.events import LocalContext, http_api_event

    event = http_api_event(method, path, body=None if body is None else json.dumps(body),
                           headers={"content-type": "application/json", **(headers or {})})
    started = time.perf_counter()
    response = module.handler(event, LocalContext(function_name=module.SERVICE))
    elapsed = (time.perf_counter() - started) * 1000
    return response["statusCode"], json.loads(response["body"] or "null"), elapsed


def instance(index: int, database_url: str, pool_timeout: float, start: Any, done: Any,
             results: Any) -> None:
    """One function instance: create a user and an order, read both back. Settings come as
    arguments: children inherit the environment of the forkserver, not of the caller."""
    os.environ["DATABASE_URL"] = database_url
    os.environ["DB_POOL_TIMEOUT"] = str(pool_timeout)
    os.environ["POWERTOOLS_METRICS_DISABLED"] = "true"
    from services.orders import handler as orders
    from services.users import handler as users

    for module in (users, orders):
        module.logger.setLevel("ERROR")
    logging.getLogger("psycopg.pool").setLevel(logging.CRITICAL)  # failures are counted below
    statuses: list[int] = []
    messages: list[str] = []
    latencies: list[float] = []

    def record(status: int, body: Any, elapsed: float) -> Any:
        statuses.append(status)
        latencies.append(elapsed)
        if status >= 400:
            messages.append(str(body.get("message") if isinstance(body, dict) else body))
        return body

    start.wait(60)
    try:
        user = record(*_invoke(users, "POST", "/users", {"email": f"storm{index}@example.com"},
                               {"Idempotency-Key": f"storm-{index}"}))
        if isinstance(user, dict) and "id" in user:
            record(*_invoke(users, "GET", f"/users/{user['id']}"))
            record(*_invoke(orders, "POST", "/orders",
                            {"user_id": user["id"], "total_cents": index},
                            {"Idempotency-Key": f"storm-{index}"}))
            record(*_invoke(orders, "GET", f"/users/{user['id']}/orders"))
    except Exception as err:  # counted, never hidden
        statuses.append(599)
        messages.append(f"{type(err).__name__}: {err}")
    results.put((statuses, messages, latencies))
    done.wait(60)
    users.db.close()
    orders.db.close()


def backends(admin_url: str, database: str) -> int:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND "
                           "usename = ANY(%s)", (database, list(APP_ROLES))).fetchone()
    return int(row[0]) if row else 0


def run_storm(database_url: str, admin_url: str, workers: int = 100,
              pool_timeout: float = 10.0, pooler_url: str | None = None) -> StormResult:
    """Start `workers` instances, release them together, collect what they saw, and sample
    how many app backends the server had meanwhile (and, through a pooler, how many server
    connections the pooler held)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(HANDLER_MODULES)
    start, done, results = context.Event(), context.Event(), context.Queue()
    spawning = time.perf_counter()
    processes = [context.Process(target=instance, args=(i, database_url, pool_timeout, start, done,
                                                         results),
                                 daemon=True) for i in range(workers)]
    for process in processes:
        process.start()
    database = psycopg.conninfo.conninfo_to_dict(database_url).get("dbname", "postgres")
    peak = pooler_peak = 0
    sampling = threading.Event()

    def sample() -> None:
        nonlocal peak, pooler_peak
        while not sampling.is_set():
            peak = max(peak, backends(admin_url, str(database)))
            if pooler_url:
                pooler_peak = max(pooler_peak, pooler_servers(pooler_url))
            time.sleep(0.02)

    spawn_seconds = time.perf_counter() - spawning
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    start.set()
    result = StormResult(workers=workers, seconds=0.0, spawn_seconds=spawn_seconds)
    try:
        for _ in range(workers):
            statuses, messages, latencies = results.get(timeout=120)
            result.statuses += statuses
            result.messages += messages
            result.latencies_ms += latencies
        result.seconds = time.perf_counter() - started
    finally:
        sampling.set()
        sampler.join(5)
        done.set()
        for process in processes:
            process.join(10)
            if process.is_alive():
                process.kill()
    result.max_backends = peak
    result.max_pooler_servers = pooler_peak
    return result
