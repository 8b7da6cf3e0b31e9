"""Step 5 of the flow, while a revision waits for a table lock: how long each attempt may wait,
who was in the way, and what the locks cost.

Why short attempts: Postgres queues lock requests. While a migration waits for ACCESS EXCLUSIVE
behind a long transaction, every later query on the table waits behind the migration, so each
second of `lock_timeout` is a second of outage for that table (measured here: 5 s attempts gave
3,228 requests over 1 s at 150 req/s; docs/benchmarks.md). So each attempt waits briefly,
gives up, lets the queue drain during a jittered pause, and tries again, within a budget of
minutes: a blocker of a minute is ridden out without any request waiting longer than the cap.
Anchors: GitLab's `with_lock_retries` starts at 100 ms per attempt over many attempts; squawk
suggests ~2 s; strong_migrations warns above 10 s.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg

from .statements import UNKNOWN_LOCKS, Relation, Statement, strong_locks

# Locks that stop readers or writers of a table for as long as they are held.
STRONG_MODES = ("AccessExclusiveLock", "ExclusiveLock", "ShareRowExclusiveLock", "ShareLock")

# The strong locks this session holds on relations: each relation's name as `regclass` prints it
# (schema-qualified, quoted where needed, under the runner's pg_catalog-first search path) and
# the mode. No join with the catalog to plan: 90 µs of server time against 165 µs; indexes and
# sequences are told from tables by the caller (`HoldTracker.from_server`).
HELD_LOCKS_SQL = (
    "SELECT l.relation::pg_catalog.regclass::pg_catalog.text, l.mode FROM pg_catalog.pg_locks l "
    "WHERE l.pid OPERATOR(pg_catalog.=) pg_catalog.pg_backend_pid() AND l.granted "
    "AND l.locktype OPERATOR(pg_catalog.=) 'relation' "
    f"AND l.mode OPERATOR(pg_catalog.=) ANY (ARRAY[{', '.join(repr(m) for m in STRONG_MODES)}])")

# pid 0 is a prepared transaction (PREPARE TRANSACTION): it has no session to name, only gids.
BLOCKERS_SQL = """
    SELECT x.pid,
           CASE WHEN x.pid = 0 THEN 'prepared transaction ' || p.gids
                ELSE coalesce(b.application_name, '') END,
           CASE WHEN x.pid = 0 THEN 'prepared' ELSE coalesce(b.state, '') END,
           round(extract(epoch FROM now() - CASE WHEN x.pid = 0 THEN p.oldest
                                                 ELSE b.xact_start END)::numeric, 1),
           CASE WHEN x.pid = 0 THEN 'end it with COMMIT PREPARED or ROLLBACK PREPARED'
                ELSE left(coalesce(b.query, ''), 200) END
    FROM (SELECT DISTINCT unnest(pg_blocking_pids(%s))) AS x(pid)
    LEFT JOIN pg_stat_activity b ON b.pid = x.pid
    CROSS JOIN (SELECT string_agg(gid, ', ') AS gids, min(prepared) AS oldest
                FROM pg_prepared_xacts) AS p
    WHERE x.pid = 0 OR b.pid IS NOT NULL"""


MAX_TIMEOUT_MS = 2**31 - 1  # lock_timeout is a 32-bit count of milliseconds
MAX_BUDGET_SECONDS = 86_400.0  # a day: anything longer is a mistake, not a wait


@dataclass(frozen=True)
class LockPolicy:
    """How a revision waits for its locks.

    Attempt n (from 0) may wait `min(max_timeout_ms, first_timeout_ms * growth**n)` (so no
    request queued behind it waits longer than `max_timeout_ms`). After an attempt that gave up,
    the runner pauses `pause_ratio` × that attempt's timeout (at least `pause_ms`), × a random
    factor in [0.75, 1.25) so concurrent migrators do not retry in step: the queries that queued
    behind the attempt need about as long again to drain when the service runs at half its
    capacity, so a pause shorter than the attempt would let the queue grow from attempt to
    attempt (measured: bench/bench_traffic.py). Attempts continue until the revision has spent
    `budget_seconds` (the budget covers every attempt and pause of one revision)."""

    first_timeout_ms: int = 150
    max_timeout_ms: int = 500
    growth: float = 1.5
    pause_ratio: float = 2.0
    pause_ms: int = 250
    budget_seconds: float = 180.0

    def __post_init__(self) -> None:
        if not 0 < self.first_timeout_ms <= self.max_timeout_ms:
            raise ValueError("lock timeouts: 0 < first <= max")
        if not 0 < self.budget_seconds <= MAX_BUDGET_SECONDS or self.growth < 1 or \
                self.pause_ms < 0 or self.pause_ratio < 0:
            raise ValueError(f"lock policy: 0 < budget <= {MAX_BUDGET_SECONDS} s, growth >= 1, "
                             "pauses >= 0")
        if self.max_timeout_ms > MAX_TIMEOUT_MS:
            raise ValueError(f"lock timeouts: at most {MAX_TIMEOUT_MS} ms (PostgreSQL's limit)")

    def timeout_ms(self, attempt: int) -> int:
        return int(min(self.max_timeout_ms, self.first_timeout_ms * self.growth ** attempt))

    def pause_seconds(self, timeout_ms: int) -> float:
        """The pause after an attempt that waited `timeout_ms` in vain."""
        return max(self.pause_ms, self.pause_ratio * timeout_ms) / 1000 * \
            random.uniform(0.75, 1.25)

    def another_attempt(self, started: float, attempt: int, pause: float,
                        queues_traffic: bool = True) -> bool:
        """Whether, after attempt `attempt` (0-based) gave up and a pause of `pause` seconds,
        the budget leaves room for the next attempt's full wait (as `attempts` decides)."""
        spent = time.monotonic() - started + pause
        return queues_traffic and spent + self.timeout_ms(attempt + 1) / 1000 <= \
            self.budget_seconds

    def attempts(self, started: float, queues_traffic: bool = True) -> Iterator[tuple[int, int]]:
        """(attempt, timeout_ms) while the budget (counted from `started`, a monotonic time)
        leaves room for the attempt's full wait. Work that no query queues behind while it
        waits (`statements.queues_traffic`) gets one attempt with the whole budget."""
        if not queues_traffic:
            yield 0, max(1, int((self.budget_seconds - (time.monotonic() - started)) * 1000))
            return
        attempt = 0
        while True:
            timeout = self.timeout_ms(attempt)
            spent = time.monotonic() - started
            if attempt and spent + timeout / 1000 > self.budget_seconds:
                return
            yield attempt, timeout
            attempt += 1


@dataclass(frozen=True)
class Blocker:
    """A session in the way of a lock request (`pg_blocking_pids`)."""

    pid: int
    application_name: str
    state: str
    transaction_seconds: float | None
    query: str

    def as_dict(self) -> dict[str, object]:
        return {"pid": self.pid, "application_name": self.application_name,
                "state": self.state, "transaction_seconds": self.transaction_seconds,
                "query": self.query}

    def describe(self) -> str:
        age = f", in a transaction for {self.transaction_seconds:g} s" \
            if self.transaction_seconds is not None else ""
        return (f"pid {self.pid} ({self.application_name or 'no application_name'}, "
                f"{self.state or '?'}{age}: {self.query!r})")


class BlockerWatch:
    """Finds out who blocks a waiting revision, and holds it to its attempt's timeout.

    The waiter cannot ask (it is waiting) and once its attempt times out nothing is blocked any
    more, so a thread asks from the migrator's own session while the attempt is still running:
    first after 60% of its timeout, when a quick statement would have finished long before,
    then every `POLL_SECONDS` until it ends. Costs nothing for attempts that finish quickly.

    A revision can change its own `lock_timeout` where no check sees it (in a DO block, in a
    function's SET clause, through a Python revision's raw connection): a session that has
    been waiting for one lock (`pg_locks.waitstart`) `CANCEL_MARGIN_MS` longer than its
    attempt's timeout is cancelled (`pg_cancel_backend`), however late in the attempt the wait
    began, and `cancelled` says so, so the runner treats it as a lock timeout. The lock policy
    is thus the runner's to enforce, not the revision's to keep."""

    CANCEL_MARGIN_MS = 250
    POLL_SECONDS = 0.1

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn
        self._cond = threading.Condition()
        # (pid, the attempt's timeout in ms, monotonic time of the first look)
        self._target: tuple[int, int, float] | None = None
        self._found: list[Blocker] = []
        self.cancelled = False
        self._closed = False
        self._wakes_at: float | None = None  # when the sleeping thread looks next, if it sleeps
        self._thread = threading.Thread(target=self._run, name="svcmig-blockers", daemon=True)
        self._thread.start()

    def watch(self, pid: int, timeout_ms: int) -> None:
        """Watch session `pid`'s attempt. The thread is woken only when it must look sooner
        than it will anyway (a wake-up per statement cost 6–20 µs): asleep until an earlier
        attempt's first look, it finds this one then, and starts on it at its own time."""
        first_look = time.monotonic() + timeout_ms * 0.6 / 1000
        with self._cond:
            self._target = (pid, timeout_ms, first_look)
            self._found = []
            self.cancelled = False
            if self._wakes_at is None or first_look < self._wakes_at:
                self._cond.notify()

    def done(self) -> list[Blocker]:
        """Stop watching; the blockers seen while the attempt waited (empty if none)."""
        with self._cond:
            self._target = None
            return self._found

    def _sleep_until(self, target: tuple[int, int, float], at: float) -> bool:
        """Wait (holding the condition) until `at`; False when the attempt ended first."""
        delay = at - time.monotonic()
        while delay > 0 and self._target == target and not self._closed:
            self._wakes_at = at
            self._cond.wait(delay)
            self._wakes_at = None
            delay = at - time.monotonic()
        return self._target == target and not self._closed

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and self._target is None:
                    self._cond.wait()
                if self._closed:
                    return
                target = self._target
                assert target is not None
                if not self._sleep_until(target, target[2]):
                    continue  # the attempt ended, or another one started
            self._follow(target)

    def _follow(self, target: tuple[int, int, float]) -> None:
        """Look at the attempt until it ends: who blocks it, and whether to cancel it."""
        pid, timeout_ms = target[0], target[1]
        while True:
            found = self._blockers(pid)
            overdue = self._waited_longer(pid, timeout_ms + self.CANCEL_MARGIN_MS)
            with self._cond:
                if self._target != target:
                    return
                if found:
                    self._found = found
                if not overdue:
                    if not self._sleep_until(target, time.monotonic() + self.POLL_SECONDS):
                        return
                    continue
                # said before the cancel is sent: the waiter may see its error (and ask)
                # before this thread hears back
                self.cancelled = True
            cancelled = self._cancel(pid)
            with self._cond:
                if self._target == target:
                    self.cancelled = cancelled
                    self._target = None  # one cancel per attempt
            return

    def _waited_longer(self, pid: int, milliseconds: int) -> bool:
        """Whether session `pid` has been waiting for one lock longer than `milliseconds`."""
        try:
            row = self.conn.execute(
                "SELECT EXISTS (SELECT FROM pg_catalog.pg_locks WHERE pid = %s AND NOT granted "
                "AND waitstart < pg_catalog.clock_timestamp() - %s * interval '1 millisecond')",
                (pid, milliseconds)).fetchone()
        except psycopg.Error:
            return False
        return bool(row and row[0])

    def _cancel(self, pid: int) -> bool:
        try:
            row = self.conn.execute("SELECT pg_catalog.pg_cancel_backend(%s)", (pid,)).fetchone()
        except psycopg.Error:
            return False
        return bool(row and row[0])

    def _blockers(self, pid: int) -> list[Blocker]:
        try:
            rows = self.conn.execute(BLOCKERS_SQL, (pid,)).fetchall()
        except psycopg.Error:
            return []
        return [Blocker(int(r[0]), r[1], r[2], float(r[3]) if r[3] is not None else None, r[4])
                for r in rows]

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()


@dataclass
class LockStats:
    """What a run's locks cost: its summary line, its `--json` and the Lambda's Data."""

    attempts: int = 0  # lock-timeout attempts that gave up
    waited_ms_total: int = 0
    waited_ms_max: int = 0
    longest_hold_ms: int = 0
    longest_hold_table: str | None = None
    longest_hold_mode: str | None = None
    longest_hold_revision: str | None = None
    long_holds: list[dict[str, Any]] = field(default_factory=list)

    def waited(self, milliseconds: int) -> None:
        self.attempts += 1
        self.waited_ms_total += milliseconds
        self.waited_ms_max = max(self.waited_ms_max, milliseconds)

    def held(self, revision: str, table: str, mode: str, milliseconds: int) -> None:
        if milliseconds > self.longest_hold_ms:
            self.longest_hold_ms = milliseconds
            self.longest_hold_table, self.longest_hold_mode = table, mode
            self.longest_hold_revision = revision

    @classmethod
    def combined(cls, parts: list[LockStats]) -> LockStats:
        """One run's figures from its lanes' (`lanes.py`)."""
        total = cls()
        for part in parts:
            total.attempts += part.attempts
            total.waited_ms_total += part.waited_ms_total
            total.waited_ms_max = max(total.waited_ms_max, part.waited_ms_max)
            if part.longest_hold_revision is not None:
                total.held(part.longest_hold_revision, part.longest_hold_table or "",
                           part.longest_hold_mode or "", part.longest_hold_ms)
            total.long_holds.extend(part.long_holds)
        return total

    def as_dict(self) -> dict[str, object]:
        return {"lock_timeouts": self.attempts, "lock_wait_ms_total": self.waited_ms_total,
                "lock_wait_ms_max": self.waited_ms_max,
                "longest_hold_ms": self.longest_hold_ms,
                "longest_hold_table": self.longest_hold_table,
                "longest_hold_mode": self.longest_hold_mode,
                "longest_hold_revision": self.longest_hold_revision,
                "long_holds": self.long_holds}


# Statements that scan or change rows, or run code: run while a strong lock is held, they make
# the hold as long as the table is big.
_SLOW_KINDS = frozenset({
    "UpdateStmt", "DeleteStmt", "InsertStmt", "MergeStmt", "SelectStmt", "DoStmt", "CallStmt",
    "IndexStmt", "ClusterStmt", "RefreshMatViewStmt", "CreateTableAsStmt", "VacuumStmt"})
_SLOW_ALTERS = frozenset({"AT_ValidateConstraint", "AT_SetNotNull", "AT_AlterColumnType",
                          "AT_AddConstraint", "AT_SetLogged", "AT_SetUnLogged"})


def is_slow(statement: Statement) -> bool:
    """Whether `statement` may take time in proportion to a table's rows."""
    if statement.kind in _SLOW_KINDS:
        return not (statement.kind == "IndexStmt" and (statement.node or {}).get("concurrent"))
    if statement.kind == "AlterTableStmt":
        return any(cmd.get("AlterTableCmd", {}).get("subtype") in _SLOW_ALTERS
                   for cmd in (statement.node or {}).get("cmds", []))
    return False


@dataclass
class Hold:
    table: str  # schema.name
    mode: str
    since: float  # monotonic start of the statement that took it
    line: int | None
    later_slow: list[tuple[str, int]] = field(default_factory=list)  # (kind, line) run after


class HoldTracker:
    """Which tables that existed before it one transactional revision locks in SHARE mode or
    stronger, and from when (the start of the statement that takes each lock; the lock is held
    until COMMIT). Read from the statements' parse trees (`statements.strong_locks`), a Python
    revision's as SQLAlchemy sends them; where the text cannot tell (DO, CALL, a function, and
    always for a Python revision, whose triggers, functions, bound parameters and raw driver
    connection no parse tree shows), also from `pg_locks` just before COMMIT, counted from the
    attempt's start.

    `existing` maps (schema, relation or index name) to its table, for every relation there
    before this revision: those of the run's start, plus what earlier revisions of the run
    created (`created`, merged in by the runner after COMMIT; from the parse trees too, so a
    table a Python revision created is not known to later revisions)."""

    def __init__(self, existing: dict[tuple[str, str], str], schema: str) -> None:
        self.existing = existing
        self.schema = schema
        self.holds: dict[str, Hold] = {}
        self.created: dict[tuple[str, str], str] = {}
        self.ask_server = False

    def statement(self, statement: Statement, started: float) -> None:
        for held in self.holds.values():
            if is_slow(statement):
                held.later_slow.append((statement.kind, statement.line))
        if statement.kind in UNKNOWN_LOCKS:
            self.ask_server = True
        for (schema, name), mode in strong_locks(statement):
            table = self.existing.get((schema or self.schema, name))
            if table is not None and table not in self.holds:
                self.holds[table] = Hold(table, mode, started, statement.line)
        for (schema, name), table in created_relations(statement):
            key = (schema or self.schema, name)
            self.created[key] = f"{key[0]}.{table}"

    def from_server(self, rows: list[tuple[str, str]], started: float) -> None:
        """`rows`: (relation as `regclass` prints it, mode) of the strong locks the transaction
        holds (`HELD_LOCKS_SQL`)."""
        for relation, mode in rows:
            schema, name = split_qualified(relation)
            table = self.existing.get((schema, name)) if schema else None
            if table == f"{schema}.{name}":  # a table that was there before the revision
                self.holds.setdefault(table, Hold(table, mode, started, None))


def split_qualified(text: str) -> tuple[str | None, str]:
    """`schema.name` as PostgreSQL prints a qualified name (each part quoted with `"` and `""`
    inside when it needs to be) → (schema, name); (None, name) when unqualified."""
    parts: list[str] = []
    current, quoted, index = "", False, 0
    while index < len(text):
        char = text[index]
        if quoted and char == '"' and text[index + 1:index + 2] == '"':
            current, index = current + '"', index + 2
            continue
        if char == '"':
            quoted = not quoted
        elif char == "." and not quoted:
            parts.append(current)
            current = ""
        else:
            current += char
        index += 1
    parts.append(current)
    return (parts[-2], parts[-1]) if len(parts) > 1 else (None, parts[-1])


def created_relations(statement: Statement) -> list[tuple[Relation, str]]:
    """(relation, its table's name) for the tables, materialized views and indexes a
    statement creates."""
    node = statement.node or {}
    if statement.kind == "CreateStmt" and node.get("relation"):
        relation = node["relation"]
        return [((relation.get("schemaname"), relation["relname"]), relation["relname"])]
    if statement.kind == "CreateTableAsStmt":
        into = node.get("into", {}).get("IntoClause", node.get("into", {})).get("rel", {})
        if "relname" in into:
            return [((into.get("schemaname"), into["relname"]), into["relname"])]
    if statement.kind == "IndexStmt" and node.get("idxname") and node.get("relation"):
        relation = node["relation"]
        return [((relation.get("schemaname"), node["idxname"]), relation["relname"])]
    return []
