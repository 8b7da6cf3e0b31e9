"""Traffic during a migration: what live requests see while `svcmig migrate` changes their table.

An open-loop load generator drives the real users handlers through `svcmig dev` (several
handler instances, each with its own tiny pool, as Lambda scales out) at a fixed rate: 60 %
GET /users/{id}, 20 % GET /users?limit=20, 20 % POST /users with fresh idempotency keys.
Open loop: request i is due at t0 + i/rate whatever happened to earlier ones, and its latency
counts from when it was due, so a stall shows as the queue it builds (no coordinated omission).

While the load runs, each scenario applies revisions with the CLI, as a deploy would:

- no migration (the baseline);
- `ADD COLUMN` alone;
- `ADD COLUMN` while a 20 s read transaction is open on the table;
- the same, with a blocker longer than the lock budget (exit 1 expected, blocker named);
- `CREATE INDEX CONCURRENTLY` while a 20 s transaction is open (on any table);
- `ADD CONSTRAINT … CHECK … NOT VALID`, then `VALIDATE CONSTRAINT` (two revisions);
- `ADD COLUMN` and an `UPDATE` of every row in one revision (the unsafe pattern; ~1M rows);
- `ADD COLUMN`, then a throttled batched backfill (a no-transaction revision committing every
  5,000 rows and pausing 50 ms between batches).

The lock-bound scenarios run twice, side by side: with svcmig's lock policy (short attempts
growing to a 500 ms cap, jittered pauses, a per-revision budget) and with the attempt length
svcmig had before (`--lock-timeout-ms 5000 --lock-timeout-max-ms 5000`: 5 s attempts, with
today's pauses and budget rather than the old 0.5/1/2/4 s backoff and 5 attempts).

Usage:
    python bench/bench_traffic.py [--rate 150] [--users 1000000] [--only NAME ...]
                                  [--database-url URL]

By default the server is a private in-memory cluster from this machine's PostgreSQL
(`private_postgres.py`, needs `pg_config`); `--database-url` uses a server you give instead
(a database `bench_traffic_<pid>` is created and dropped). About 4 minutes on 2 cores.
Nothing asserts on timings: the table is for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_handlers import percentile, start_dev, with_database  # noqa: E402

NEW = ("svcmig", [])
OLD = ("5 s attempts (old)", ["--lock-timeout-ms", "5000", "--lock-timeout-max-ms", "5000"])
BLOCKER_SECONDS = 20.0
TIGHT_BUDGET = 15.0  # the "blocker longer than the budget" rows


@dataclass
class Scenario:
    """Revisions to apply (text with `{tag}` for unique names), an optional blocker, flags."""

    name: str
    revisions: list[str]
    blocker: str | None = None  # "reader": a read of users.users; "any": any old transaction
    blocker_seconds: float = BLOCKER_SECONDS
    budget: float | None = None
    policies: tuple[tuple[str, list[str]], ...] = (NEW, OLD)


SCENARIOS = [
    Scenario("no migration", [], policies=(("–", []),)),
    Scenario("ADD COLUMN alone", ["ALTER TABLE users ADD COLUMN {tag}_a text;\n"]),
    Scenario("ADD COLUMN behind a 20 s reader", ["ALTER TABLE users ADD COLUMN {tag}_b text;\n"],
             blocker="reader"),
    Scenario(f"ADD COLUMN, blocker 20 s > budget {TIGHT_BUDGET:g} s",
             ["ALTER TABLE users ADD COLUMN {tag}_c text;\n"], blocker="reader",
             budget=TIGHT_BUDGET),
    Scenario("CREATE INDEX CONCURRENTLY behind a 20 s transaction",
             ["-- migrate:no-transaction\n"
              "CREATE INDEX CONCURRENTLY {tag}_created ON users (created_at);\n"],
             blocker="any"),
    Scenario("CHECK NOT VALID, then VALIDATE",
             ["ALTER TABLE users ADD CONSTRAINT {tag}_email CHECK (length(email) < 500) "
              "NOT VALID;\n",
              "ALTER TABLE users VALIDATE CONSTRAINT {tag}_email;\n"]),
    Scenario("ADD COLUMN + UPDATE every row, one revision",
             ["ALTER TABLE users ADD COLUMN {tag}_score int;\n"
              "UPDATE users SET {tag}_score = 0 WHERE {tag}_score IS NULL;\n"],
             policies=(NEW,)),
    Scenario("ADD COLUMN, then a throttled batched backfill",
             ["ALTER TABLE users ADD COLUMN {tag}_rank int;\n",
              "-- migrate:no-transaction\n"
              "DO $$ DECLARE top bigint := (SELECT max(id) FROM users); BEGIN\n"
              "  FOR low IN 0..top BY 5000 LOOP\n"
              "    UPDATE users SET {tag}_rank = 0 WHERE id > low AND id <= low + 5000;\n"
              "    COMMIT;\n"
              "    PERFORM pg_sleep(0.05);  -- leave the server to live traffic between batches\n"
              "  END LOOP;\n"
              "END $$;\n"],
             policies=(NEW,)),
]


def environment_line(url: str, server: str) -> str:
    """`- date: …; 2 CPUs, Linux x86_64; Python …; PostgreSQL … on <server>`, for a results
    table's header."""
    with psycopg.connect(url) as conn:
        version = conn.execute("SHOW server_version").fetchone()
    return (f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
            f"{os.cpu_count()} CPUs, {platform.system()} {platform.machine()}; Python "
            f"{platform.python_version()}; PostgreSQL {version[0] if version else '?'} on "
            f"{server}")


@dataclass
class Load:
    """An open-loop generator: `rate` requests per second until stopped."""

    port: int
    rate: float
    user_ids: int
    workers: int = 48
    results: list[tuple[float, float, int]] = field(default_factory=list)  # (due, ms, status)

    def __post_init__(self) -> None:
        self._next = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._run = uuid.uuid4().hex[:8]
        self.t0 = time.monotonic()
        self._threads = [threading.Thread(target=self._worker, daemon=True)
                         for _ in range(self.workers)]
        for thread in self._threads:
            thread.start()

    def _request(self, i: int) -> tuple[str, str, str | None, dict[str, str]]:
        pick = random.random()
        if pick < 0.6:
            return "GET", f"/users/{random.randint(1, self.user_ids)}", None, {}
        if pick < 0.8:
            return "GET", "/users?limit=20", None, {}
        body = json.dumps({"email": f"load-{self._run}-{i}@example.com"})
        return "POST", "/users", body, {"Idempotency-Key": f"{self._run}-{i}",
                                        "Content-Type": "application/json"}

    def _turns(self) -> Iterator[tuple[int, float]]:
        """Each (request number, when it is due) of this worker, waiting until it is due:
        open loop, so a slow answer never delays the requests after it. Ends when stopped."""
        while not self._stop.is_set():
            with self._lock:
                i = self._next
                self._next += 1
            due = self.t0 + i / self.rate
            delay = due - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                return
            yield i, due

    def _worker(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        for i, due in self._turns():
            method, path, body, headers = self._request(i)
            try:
                conn.request(method, path, body=body, headers=headers)
                response = conn.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
                status = 0
            self.results.append((due, (time.monotonic() - due) * 1000, status))

    def since(self, start: float, end: float,
              limit: float = 60.0) -> list[tuple[float, float, int]]:
        """The requests due in [start, end), once every one of them has completed (the slowest
        are the last to finish; leaving them out would flatter a stall)."""
        expected = int((end - self.t0) * self.rate) - int((start - self.t0) * self.rate)
        deadline = time.monotonic() + limit
        while True:
            found = [r for r in list(self.results) if start <= r[0] < end]
            if len(found) >= expected or time.monotonic() > deadline:
                return found
            time.sleep(0.2)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(70)


@contextmanager
def blocker(url: str, kind: str | None, seconds: float) -> Iterator[None]:
    """A transaction held open for `seconds`: a read of users.users (ACCESS SHARE, which an
    ALTER TABLE must wait for) or any transaction (which a concurrent index build waits for)."""
    if kind is None:
        yield
        return
    conn = psycopg.connect(url, autocommit=False, application_name="report-job")
    if kind == "reader":
        conn.execute("SELECT count(*) FROM users.users WHERE id < 10")

    def hold() -> None:
        if kind == "reader":
            time.sleep(seconds)
        else:  # a running statement holds a snapshot, which a concurrent build waits out
            conn.execute("SELECT txid_current(), pg_sleep(%s)", (seconds,))
        conn.rollback()
        conn.close()

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    try:
        yield
    finally:
        thread.join()


def run_migrate(root: Path, url: str, flags: list[str]) -> tuple[float, int, dict[str, object]]:
    env = {**os.environ, "SVCMIG_PROJECT_ROOT": str(root), "DATABASE_URL": url}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "migrations_runtime.cli", "migrate", "--json",
                           *flags], cwd=root, env=env, capture_output=True, text=True)
    seconds = time.monotonic() - started
    try:
        result = json.loads(done.stdout)
    except json.JSONDecodeError:
        result = {"outcome": "error", "error": done.stderr.strip().splitlines()[-1:]}
    return seconds, done.returncode, result


@dataclass
class Row:
    scenario: str
    policy: str
    migrate_s: float | None
    exit_code: int | None
    latencies: list[float]
    errors: int
    note: str = ""

    def cells(self) -> list[str]:
        ms = sorted(self.latencies)
        return [self.scenario, self.policy,
                "–" if self.migrate_s is None else f"{self.migrate_s:.1f} s, exit {self.exit_code}",
                str(len(ms)), f"{statistics.median(ms):.0f}" if ms else "–",
                f"{percentile(ms, 99):.0f}" if ms else "–", f"{ms[-1]:.0f}" if ms else "–",
                str(sum(1 for v in ms if v > 1000)), str(self.errors), self.note]


class Project:
    """A copy of the repository's services (handlers and migrations) that scenarios add
    revisions to, each later than the last."""

    def __init__(self, folder: Path) -> None:
        self.root = folder / "project"
        shutil.copytree(REPO / "services", self.root / "services",
                        ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(REPO / "alembic.ini", self.root / "alembic.ini")
        self._minute = 0

    def add(self, text: str) -> None:
        self._minute += 1
        stamp = time.strftime("%Y-%m-%dT%H%M", time.gmtime(1_893_456_000 + 60 * self._minute))
        path = self.root / "services" / "users" / "migrations" / f"{stamp}__users__bench.sql"
        path.write_text(text)


def seed(url: str, users: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        have = conn.execute("SELECT count(*) FROM users.users").fetchone()
        missing = users - (have[0] if have else 0)
        # email_domain: required (a validated CHECK) once its backfill's revisions are in
        domain = conn.execute("SELECT count(*) FROM information_schema.columns WHERE "
                              "table_schema = 'users' AND table_name = 'users' AND "
                              "column_name = 'email_domain'").fetchone()
        extra = ("", "") if not domain or not domain[0] else (", email_domain", ", 'example.com'")
        if missing > 0:
            conn.execute(f"INSERT INTO users.users (email{extra[0]}) SELECT 'seed-' || g || "
                         f"'@example.com'{extra[1]} FROM generate_series(1, %s) g", (missing,))
        conn.execute("VACUUM ANALYZE users.users")


def settle(load: Load, limit: float = 60.0) -> None:
    """Wait until the load has caught up with an earlier scenario's backlog: every request due
    in the last second was served within 100 ms."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        now = time.monotonic()
        recent = [r for r in list(load.results) if now - 1.5 <= r[0] < now - 0.5]
        if recent and max(ms for _, ms, _ in recent) < 100:
            return
        time.sleep(0.5)


def vacuum(url: str) -> None:
    """Vacuum users before a scenario, outside its window: after a scenario that rewrote every
    row, autovacuum would otherwise still hold SHARE UPDATE EXCLUSIVE on the table during the
    next one, and that scenario's ALTER would queue behind it (a manual VACUUM cancels an
    autovacuum in its way after deadlock_timeout, then finishes the work)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE) users.users")


def run_scenario(scenario: Scenario, policy: tuple[str, list[str]], project: Project,
                 url: str, load: Load) -> Row:
    lead, tail = 2.0, 2.0
    vacuum(url)
    settle(load)
    start = time.monotonic()
    if not scenario.revisions:
        time.sleep(8.0)
        end = time.monotonic()
        return Row(scenario.name, policy[0], None, None,
                   [ms for _, ms, _ in load.since(start, end)],
                   sum(1 for *_, s in load.since(start, end) if s == 0 or s >= 500))
    tag = f"{policy[0][:1]}{len(load.results)}".replace(" ", "").replace("–", "n").lower()
    tag = "s" + "".join(ch for ch in tag if ch.isalnum())
    for text in scenario.revisions:
        project.add(text.format(tag=tag))
    flags = list(policy[1])
    if scenario.budget is not None:
        flags += ["--lock-budget", str(scenario.budget)]
    with blocker(url, scenario.blocker, scenario.blocker_seconds):
        time.sleep(lead)
        seconds, code, result = run_migrate(project.root, url, flags)
    time.sleep(tail)
    end = time.monotonic()
    window = load.since(start, end)
    locks = result.get("locks") or {}
    note = ""
    if isinstance(locks, dict) and locks:
        note = (f"{locks.get('lock_timeouts', 0)} attempts gave up; longest hold "
                f"{locks.get('longest_hold_ms', 0)} ms")
    if code and result.get("outcome") != "applied":
        error = str(result.get("error", ""))
        note += "; " + ("blocker named" if "report-job" in error else error[:80])
    if code:  # a failed revision stays in the folder; take it out so later scenarios run
        for path in sorted((project.root / "services/users/migrations").glob("*bench.sql"))[
                -len(scenario.revisions):]:
            path.unlink()
    return Row(scenario.name, policy[0], seconds, code, [ms for _, ms, _ in window],
               sum(1 for *_, s in window if s == 0 or s >= 500), note)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rate", type=float, default=150.0, help="requests per second")
    parser.add_argument("--users", type=int, default=1_000_000, help="rows in users.users")
    parser.add_argument("--concurrency", type=int, default=8,
                        help="handler instances per service in svcmig dev")
    parser.add_argument("--only", nargs="*", default=None,
                        help="scenario names (substrings) to run; default all")
    parser.add_argument("--database-url", help="use this server instead of a private one")
    args = parser.parse_args(argv)
    chosen = [s for s in SCENARIOS if not args.only or s.name == "no migration"
              or any(part.lower() in s.name.lower() for part in args.only)]
    with bench_server(args.database_url, "bench_traffic") as (url, server):
        run_all(args, chosen, url, server)


@contextmanager
def bench_server(database_url: str | None, prefix: str) -> Iterator[tuple[str, str]]:
    """(url, what it is): a database `<prefix>_<pid>` created on `database_url` and dropped
    afterwards, or, without one, a private in-memory cluster (`private_postgres.py`)."""
    if database_url:
        name = f"{prefix}_{os.getpid()}"
        with psycopg.connect(database_url, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield with_database(database_url, name), "the given server"
        finally:
            with psycopg.connect(database_url, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        return
    from private_postgres import private_postgres

    with private_postgres(durable=False) as url:
        yield url, ("a private in-memory cluster (fsync, synchronous_commit and "
                    "full_page_writes off)")


def run_all(args: argparse.Namespace, chosen: list[Scenario], url: str, server: str) -> None:
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="svcmig-traffic-") as folder:
        project = Project(Path(folder))
        dev, port = start_dev(url, project.root, args.concurrency)
        rows: list[Row] = []
        try:
            seed(url, args.users)
            load = Load(port, args.rate, args.users)
            time.sleep(3.0)  # warm every handler instance and pool
            for scenario in chosen:
                for policy in scenario.policies:
                    rows.append(run_scenario(scenario, policy, project, url, load))
                    print(" | ".join(rows[-1].cells()), file=sys.stderr, flush=True)
            load.stop()
        finally:
            dev.terminate()
            dev.wait(20)
        machine = environment_line(url, server)
    print(machine)
    print(f"- {args.rate:g} req/s open loop (60 % GET /users/{{id}}, 20 % GET /users?limit=20, "
          f"20 % POST /users), `svcmig dev --concurrency {args.concurrency}`, "
          f"{args.users:,} users; blockers hold {BLOCKER_SECONDS:g} s; whole run "
          f"{time.monotonic() - began:.0f} s")
    print("- latency counts from when a request was due (open loop); each row covers 2 s before "
          "the migration to 2 s after it\n")
    print("| scenario | lock policy | migrate | requests | p50 ms | p99 ms | max ms | > 1 s | "
          "errors | locks |")
    print("|---|---|--:|--:|--:|--:|--:|--:|--:|---|")
    for row in rows:
        print("| " + " | ".join(row.cells()) + " |")


if __name__ == "__main__":
    main()
