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
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

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


def pooler_servers(pooler_url: str) -> int:
    """Server connections PgBouncer holds now, from its admin console (simple query protocol)."""
    info = psycopg.conninfo.conninfo_to_dict(pooler_url)
    info["dbname"] = "pgbouncer"
    with psycopg.connect(psycopg.conninfo.make_conninfo(**info), autocommit=True,  # type: ignore[arg-type]
                         cursor_factory=psycopg.ClientCursor) as conn:
        return len(conn.execute("SHOW SERVERS").fetchall())


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


def pgbouncer_binary() -> str | None:
    return shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if Path(p).exists()), None)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _unprivileged_user(host: str) -> str:
    """The owner of a Unix-socket server's socket folder (it can reach the socket), else
    postgres or nobody."""
    import pwd

    if host.startswith("/"):
        return pwd.getpwuid(Path(host).stat().st_uid).pw_name
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name).pw_name
        except KeyError:
            continue
    raise RuntimeError("no unprivileged user to run pgbouncer as")


@contextmanager
def pgbouncer(server_url: str, database: str, pool_size: int) -> Iterator[str]:
    """PgBouncer in transaction mode in front of `server_url`/`database`, at most `pool_size`
    server connections for the database; yields the URL clients use (as postgres; the handlers
    replace the user with their app role)."""
    binary = pgbouncer_binary()
    assert binary, "pgbouncer is not installed"
    info = psycopg.conninfo.conninfo_to_dict(server_url)
    folder = Path(tempfile.mkdtemp(prefix="svcmig-pgbouncer-"))
    folder.chmod(0o777)
    port = _free_port()
    (folder / "users.txt").write_text("".join(f'"{role}" ""\n' for role in
                                              ("postgres", *APP_ROLES)))
    (folder / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"{database} = host={info.get('host') or '127.0.0.1'} port={info.get('port') or 5432} "
        f"dbname={database}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {folder / 'users.txt'}\n"
        "pool_mode = transaction\n"
        f"default_pool_size = {pool_size}\nmax_db_connections = {pool_size}\n"
        "max_client_conn = 2000\nserver_login_retry = 1\nadmin_users = postgres\n"
        f"logfile = {folder / 'pgbouncer.log'}\npidfile = {folder / 'pgbouncer.pid'}\n")
    command = [binary, str(folder / "pgbouncer.ini")]
    if os.geteuid() == 0:  # PgBouncer refuses to run as root: run as a user that can reach
        command[1:1] = ["-u", _unprivileged_user(str(info.get("host") or ""))]  # the server
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    log = folder / "pgbouncer.log"
                    raise RuntimeError("pgbouncer did not start: " + (
                        process.stdout.read() if process.stdout else "") +
                        (log.read_text() if log.exists() else "")) from None
                time.sleep(0.05)
        url = psycopg.conninfo.make_conninfo(host="127.0.0.1", port=str(port), dbname=database,
                                            user="postgres")
        try:  # one real round trip, so a broken setup fails here with PgBouncer's own log
            with psycopg.connect(url, connect_timeout=5) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error as err:
            tail = (folder / "pgbouncer.log").read_text()[-2000:]
            raise RuntimeError(f"pgbouncer cannot reach the server: {err}\n{tail}") from err
        yield url
    finally:
        process.kill()  # a throwaway with no state; a "safe" shutdown may wait for clients
        process.wait(10)
        shutil.rmtree(folder, ignore_errors=True)
