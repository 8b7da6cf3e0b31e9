"""Running backfills (`backfill`): resumable, throttled batches outside the deploy.

Each backfill walks its key range `[key_min, key_end)` (its table's smallest key and largest
key + 1 when it first starts: rows inserted later are the new code's to fill) in batches, each
its own transaction in a session logged in as the service's owner (`sessions.RevisionSessions`:
a batch can do no more than a revision of its service). A batch locks its progress row
(`ledger.BACKFILLS_TABLE`), runs the statement for `[next_key, next_key + size)`, and moves
the cursor in the same transaction: a batch commits with its progress or not at all, so a
runner killed at any point resumes from the last committed batch and never does one twice.
Two runners of one backfill are kept apart by a session advisory lock, and, should a pooler
void that lock, by the row lock and the cursor check.

Between batches the runner sleeps, adapts the batch size to a target duration, and backs off
while the database is under pressure: a transaction older than a limit (it keeps vacuum from
removing the dead rows a backfill leaves), lock waits longer than a second (an application
request waits on something), replication lag. The model is GitLab's batched background
migrations and their health checks
(docs.gitlab.com/ee/development/database/batched_background_migrations.html).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import psycopg
from psycopg import errors as pg_errors

from . import ledger
from .backfill import Backfill, load_backfills
from .database import connect, redact, refuse_pooler
from .discover import Service, discover_services, find_project_root
from .errors import MigrationFileError, SvcmigError, UsageProblem
from .sessions import RevisionSessions
from .statements import quote_ident

LogLine = dict[str, object]
# The first key of the two-key advisory lock a backfill's runner holds (the second is the
# hash of its name); the migrator's own lock uses the one-key form, so they never meet.
BACKFILL_LOCK_CLASS = 0x5B_F1  # "svcmig backfill"
INTEGER_TYPES = ("int2", "int4", "int8")
BIGINT_MAX = 2**63 - 1
# SQLSTATEs a batch is retried for, unchanged, after a pause: someone else held a lock.
TRANSIENT = (pg_errors.LockNotAvailable, pg_errors.DeadlockDetected,
             pg_errors.SerializationFailure)


class BackfillError(SvcmigError):
    """A backfill could not run or failed (exit 1); the message says which and what to do."""


class BatchError(Exception):
    """A batch went wrong in a way that is not a database error (a Python backfill's return
    value, a transaction it ended); the backfill fails with this message."""


@dataclass(frozen=True)
class BackfillSettings:
    """How a runner paces itself. Durations in milliseconds unless named `_s` (seconds)."""

    target_batch_ms: int = 200  # batch sizes adapt towards this duration
    sleep_ms: int = 100  # pause after each batch
    max_batch_size: int = 1_000_000  # widest key range of one batch
    lock_timeout_ms: int = 2000  # a batch waiting longer for a lock is retried later
    statement_timeout_ms: int = 30_000  # a batch running longer is retried at half the size
    transient_retries: int = 10  # lock timeouts / deadlocks in a row before it counts as failed
    # pressure: back off while any of these holds
    max_transaction_age_s: float = 600.0
    max_lock_wait_s: float = 1.0
    max_replication_lag_s: float = 30.0
    max_backoff_s: float = 30.0
    health_interval_s: float = 1.0  # look at the pressure at most this often
    max_seconds: float | None = None  # stop (resumable) after this long
    idle_in_transaction_ms: int = 60_000


@dataclass(frozen=True)
class BackfillResult:
    """What one runner did for one backfill. `outcome`: finished, paused, failed, stopped (the
    time limit: resumable), busy (another runner has it), waiting (paused or failed before)."""

    name: str
    outcome: str
    rows: int = 0
    batches: int = 0
    seconds: float = 0.0
    message: str = ""

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "outcome": self.outcome, "rows": self.rows,
                "batches": self.batches, "seconds": round(self.seconds, 3),
                "message": self.message}


@dataclass(frozen=True)
class BackfillStatus:
    """A backfill file and its progress on one database (`progress` None: never started)."""

    backfill: Backfill
    progress: ledger.BackfillProgress | None
    batch_size: int | None = None
    batches: int = 0
    running_now: bool = False
    updated_at: str | None = None
    # seconds since its row last changed, by the database's clock (None: never started)
    idle_seconds: float | None = None
    note: str | None = None  # why it finished without running (`record_waived`)

    @property
    def state(self) -> str:
        if self.progress is None:
            return "pending"
        if self.progress.state == "running" and not self.running_now:
            return "interrupted"  # resumable: the next run continues from its cursor
        return self.progress.state

    def as_dict(self) -> dict[str, object]:
        p = self.progress
        return {"name": self.backfill.name, "service": self.backfill.service,
                "file": self.backfill.file, "state": self.state,
                "done": round(p.fraction, 4) if p else 0.0, "rows": p.rows_done if p else 0,
                "batches": self.batches, "batch_size": self.batch_size,
                "next_key": p.next_key if p else None, "key_end": p.key_end if p else None,
                "error": p.error if p else None, "updated_at": self.updated_at,
                "idle_seconds": round(self.idle_seconds, 1) if self.idle_seconds is not None
                else None, "note": self.note}


def project_backfills(root: Path | None = None,
                      problems: dict[str, MigrationFileError] | None = None
                      ) -> dict[str, Backfill]:
    """The project's backfills by name; files that cannot be loaded go to `problems` (when
    given), so one broken file stops no other backfill."""
    root = root or find_project_root()
    return load_backfills(discover_services(root), problems)


def _pick(backfills: dict[str, Backfill], names: Iterable[str],
          broken: Iterable[str] = ()) -> list[Backfill]:
    chosen = []
    for name in names:
        if name not in backfills and name not in broken:
            known = ", ".join(sorted(backfills)) or "none"
            raise UsageProblem(f"no backfill {name!r} in this project (known: {known}); a "
                               "backfill is named <service>.<slug> after its file")
        if name in backfills:
            chosen.append(backfills[name])
    return chosen


def _connect(url: str, settings: BackfillSettings) -> psycopg.Connection:
    conn = connect(url, role="svcmig-backfill",
                   idle_in_transaction_ms=settings.idle_in_transaction_ms)
    try:
        refuse_pooler(conn, url)
        ready = conn.execute(ledger.FRAMEWORK_READY_SQL).fetchone()
        if not ready or not ready[0]:
            raise BackfillError(f"{redact(url)} has no svcmig progress table for backfills yet: "
                                "run `svcmig migrate` (or deploy) with this svcmig first")
    except Exception:
        conn.close()
        raise
    return conn


def backfill_status(url: str, root: Path | None = None,
                    problems: dict[str, MigrationFileError] | None = None
                    ) -> list[BackfillStatus]:
    """Every backfill of the project with its progress on the database at `url`; files that
    cannot be loaded go to `problems` when given (else the first one's error is raised)."""
    backfills = project_backfills(root, problems)
    conn = connect(url, role="svcmig-backfill")
    try:
        exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL",
                              (ledger.BACKFILLS_TABLE,)).fetchone()
        rows: dict[str, tuple[Any, ...]] = {}
        if exists and exists[0]:
            for row in conn.execute(
                    f"""SELECT b.name, b.batch_size, b.batches, b.updated_at::text,
                           extract(epoch FROM now() - b.updated_at)::float8, b.note,
                           EXISTS (SELECT FROM pg_locks l WHERE l.locktype = 'advisory'
                                   AND l.granted AND l.classid = {BACKFILL_LOCK_CLASS}
                                   AND l.objid = hashtext(b.name)::oid
                                   AND l.database = (SELECT oid FROM pg_database
                                                     WHERE datname = current_database()))
                        FROM {ledger.BACKFILLS_TABLE} b"""):
                rows[row[0]] = row
        progress = ledger.read_backfills(conn)
    finally:
        conn.close()
    found = []
    for name, backfill in sorted(backfills.items()):
        mine = rows.get(name)
        found.append(BackfillStatus(backfill, progress.get(name),
                                    batch_size=mine[1] if mine else None,
                                    batches=mine[2] if mine else 0,
                                    running_now=bool(mine[6]) if mine else False,
                                    note=mine[5] if mine else None,
                                    updated_at=mine[3] if mine else None,
                                    idle_seconds=mine[4] if mine else None))
    return found


def status_report(url: str, root: Path | None = None) -> dict[str, list[dict[str, object]]]:
    """`backfill_status` as `svcmig backfill status --json` prints it (and the deployed
    stage's operations function answers it): `backfills` (each `BackfillStatus.as_dict()`) and
    `invalid` (files that cannot be loaded: `name`, `error`)."""
    problems: dict[str, MigrationFileError] = {}
    found = backfill_status(url, root, problems)
    return {"backfills": [s.as_dict() for s in found],
            "invalid": [{"name": name, "error": str(err)}
                        for name, err in sorted(problems.items())]}


def set_state(url: str, name: str, action: str, root: Path | None = None) -> str:
    """`pause` a running (or not yet started) backfill, `resume` a paused one, `retry` a failed
    one (its failed batch runs again). Returns what it did, in one line; a running runner stops
    before its next batch once paused. Raises `BackfillError` when the state does not allow it."""
    transitions = {"pause": (("running",), "paused"), "resume": (("paused",), "running"),
                   "retry": (("failed",), "running")}
    allowed, new = transitions[action]
    problems: dict[str, MigrationFileError] = {}
    backfills = project_backfills(root, problems)  # another file's problem is not this one's
    if name in problems:
        raise BackfillError(str(problems[name]))
    backfill = _pick(backfills, [name], problems)[0]
    conn = _connect(url, BackfillSettings())
    try:
        row = conn.execute(f"SELECT state FROM {ledger.BACKFILLS_TABLE} WHERE name = %s",
                           (name,)).fetchone()
        if row is None and action == "pause":
            _insert_row(conn, backfill, "paused", None)
            return f"{name} paused before it started; `svcmig backfill resume {name}` lets it run"
        if row is None or row[0] not in allowed:
            state = row[0] if row else "pending (never started)"
            hint = {"pause": "only a running or a not yet started backfill can be paused",
                    "resume": "only a paused backfill can be resumed",
                    "retry": "only a failed backfill can be retried"}[action]
            raise BackfillError(f"{name} is {state}: {hint} (see `svcmig backfill status`)")
        conn.execute(f"UPDATE {ledger.BACKFILLS_TABLE} SET state = %s, error = CASE WHEN %s "
                     "THEN NULL ELSE error END, updated_at = now() WHERE name = %s",
                     (new, action == "retry", name))
    finally:
        conn.close()
    return f"{name} {'paused' if new == 'paused' else 'can run again'}"


def _insert_row(conn: psycopg.Connection, backfill: Backfill, state: str,
                note: str | None) -> None:
    conn.execute(
        f"""INSERT INTO {ledger.BACKFILLS_TABLE} (name, service, file, checksum, state,
                key_table, key_column, batch_size, note, finished_at)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s,
                    CASE WHEN %s = 'finished' THEN now() END)
            ON CONFLICT (name) DO NOTHING""",
        (backfill.name, backfill.service, backfill.file, backfill.checksum, state, backfill.table,
         backfill.key, backfill.batch_size, note, state))


def record_waived(conn: psycopg.Connection, root: Path, names: Iterable[str] | None,
                  why: str = "{service} was created from nothing by the run that applied the "
                             "revisions requiring it") -> None:
    """Mark `names` (None: every backfill of the project) finished without running them,
    noting `why` ("{service}" is replaced): by default the revisions that require them created
    their service from nothing in this run (`plan.Plan.waived_backfills`)."""
    names = None if names is None else list(names)
    if names == []:
        return
    backfills = project_backfills(root, problems={})  # a broken file is the runner's to say
    for name in backfills if names is None else names:
        if name in backfills:
            _insert_row(conn, backfills[name], "finished",
                        "not needed: " + why.replace("{service}", backfills[name].service))


def run_backfills(url: str, root: Path | None = None, names: Iterable[str] | None = None,
                  settings: BackfillSettings | None = None,
                  log: Callable[[LogLine], None] | None = None,
                  parallel: int = 1) -> list[BackfillResult]:
    """Run `names` (default: every backfill that is pending, interrupted or running; paused and
    failed ones wait for `resume`/`retry`), one after another unless `parallel` > 1. Results in
    the order asked; one that fails, cannot start (outcome `failed`), is busy or waits does not
    stop the others. Raises `UsageProblem` for an unknown name."""
    settings = settings or BackfillSettings()
    log = log or (lambda _line: None)
    problems: dict[str, MigrationFileError] = {}
    backfills = project_backfills(root, problems)
    chosen = _pick(backfills, names, problems) if names is not None else sorted(
        backfills.values(), key=lambda b: (b.timestamp, b.name))
    broken = [BackfillResult(name, "failed", message=str(err))
              for name, err in sorted(problems.items()) if names is None or name in names]
    for result in broken:
        log({"event": "backfill_failed", "backfill": result.name, "message": result.message})
    if parallel < 1:
        raise UsageProblem("--parallel must be at least 1")

    def one(backfill: Backfill) -> BackfillResult:
        run = BackfillRun(url, backfill, settings, log)
        try:
            return run.run()
        except (BackfillError, psycopg.Error) as err:  # it cannot start (an edited file, no
            message = str(err) if isinstance(err, BackfillError) else (  # usable key, …): the
                f"{backfill.path}: backfill {backfill.name} could not run: "  # others still run
                f"{_first_line(err)}")
            log({"event": "backfill_failed", "backfill": backfill.name, "message": message})
            return run.result("failed", message)

    if parallel == 1 or len(chosen) < 2:
        return broken + [one(b) for b in chosen]
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        return broken + list(pool.map(one, chosen))


@dataclass
class BackfillRun:
    """One runner of one backfill; `run` does the work (see the module docstring)."""

    url: str
    backfill: Backfill
    settings: BackfillSettings
    log: Callable[[LogLine], None]
    rows: int = 0
    batches: int = 0
    started: float = field(default_factory=time.monotonic)
    _own_pids: list[int] = field(default_factory=list)
    _range: tuple[int, int] = (0, 0)  # [key_min, key_end), for the share done
    _health_checked: float = float("-inf")  # when `_pressure` last looked (monotonic)
    _current: tuple[int, int] | None = None  # the key range of the batch running now

    def result(self, outcome: str, message: str = "") -> BackfillResult:
        return BackfillResult(self.backfill.name, outcome, self.rows, self.batches,
                              time.monotonic() - self.started, message)

    def _emit(self, event: str, **facts: object) -> None:
        self.log({"event": event, "backfill": self.backfill.name, **facts})

    def run(self) -> BackfillResult:
        name = self.backfill.name
        conn = _connect(self.url, self.settings)
        try:
            got = conn.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s))",
                               (BACKFILL_LOCK_CLASS, name)).fetchone()
            if not got or not got[0]:
                holder = conn.execute(
                    """SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a
                       USING (pid) WHERE l.locktype = 'advisory' AND l.classid = %s
                       AND l.objid = hashtext(%s)::oid AND l.granted LIMIT 1""",
                    (BACKFILL_LOCK_CLASS, name)).fetchone()
                message = f"{name} is being run by {holder[0] if holder else 'another runner'}"
                self._emit("backfill_busy", message=message)
                return self.result("busy", message)
            try:
                return self._run_locked(conn)
            except BackfillError as err:  # recorded, so status and the planner say why
                self._record_failure(conn, str(err))
                raise
        finally:
            conn.close()  # ends the advisory lock with the session

    def _run_locked(self, conn: psycopg.Connection) -> BackfillResult:
        """`run`, once the backfill's advisory lock is held."""
        name = self.backfill.name
        progress = self._prepare(conn)
        if isinstance(progress, BackfillResult):
            return progress
        sessions = RevisionSessions(conn, self.url, self.settings.idle_in_transaction_ms,
                                    self.log)
        try:
            owner = sessions.session(
                Service(self.backfill.service,
                        self.backfill.root / "services" / self.backfill.service))
            self._own_pids = [conn.info.backend_pid, owner.info.backend_pid]
            self._claim(conn, owner.info.backend_pid)
            return self._loop(conn, owner, progress)
        finally:
            if not conn.closed:
                conn.execute(f"UPDATE {ledger.BACKFILLS_TABLE} SET runner_pid = NULL "
                             "WHERE name = %s", (name,))
            sessions.close()

    def _record_failure(self, conn: psycopg.Connection, message: str) -> None:
        """The backfill cannot start (or go on): failed, with why, until `retry`."""
        b = self.backfill
        _insert_row(conn, b, "failed", None)
        conn.execute(f"UPDATE {ledger.BACKFILLS_TABLE} SET state = 'failed', error = %s, "
                     "updated_at = now() WHERE name = %s AND state <> 'finished'",
                     (message, b.name))

    def _claim(self, conn: psycopg.Connection, owner_pid: int) -> None:
        """Let the owner session `owner_pid` (and no other) move this backfill's progress
        (the `backfill_progress_of_runner` policy); a row left naming that pid by a runner
        that died is cleared first, so the pid names one row."""
        conn.execute(f"UPDATE {ledger.BACKFILLS_TABLE} SET runner_pid = NULL "
                     "WHERE runner_pid = %s", (owner_pid,))
        conn.execute(f"UPDATE {ledger.BACKFILLS_TABLE} SET runner_pid = %s WHERE name = %s",
                     (owner_pid, self.backfill.name))

    def _prepare(self, conn: psycopg.Connection) -> int | BackfillResult:
        """The backfill's row, created (with its key range) on the first run; checks the file
        was not edited since it started."""
        b = self.backfill
        row = conn.execute(
            f"""SELECT state, checksum, key_min, key_end, next_key, batch_size, error, batches
                FROM {ledger.BACKFILLS_TABLE} WHERE name = %s""", (b.name,)).fetchone()
        if row is not None and row[0] == "finished":  # an edit now changes nothing: no error
            return self.result("finished", f"{b.name} had already finished")
        if row is not None and row[1] != b.checksum:
            if row[7]:
                message = (f"{b.path}: backfill {b.name} was edited after it started on this "
                           f"database ({row[7]} batch(es) ran with checksum {row[1][:12]}, the "
                           f"file is {b.checksum[:12]} now); backfills are append-only like "
                           "revisions: revert the edit and write a new backfill")
                conn.execute(f"UPDATE {ledger.BACKFILLS_TABLE} SET state = 'failed', "
                             "error = %s, updated_at = now() WHERE name = %s", (message, b.name))
                raise BackfillError(message)
            # paused before its first batch: the file may still change
            conn.execute(f"UPDATE {ledger.BACKFILLS_TABLE} SET checksum = %s, key_table = %s, "
                         "key_column = %s, batch_size = %s WHERE name = %s",
                         (b.checksum, b.table, b.key, b.batch_size, b.name))
        if row is not None and row[0] in ("paused", "failed"):
            hint = "resume" if row[0] == "paused" else "retry"
            message = (f"{b.name} is {row[0]}" + (f": {row[6]}" if row[6] else "")
                       + f"; `svcmig backfill {hint} {b.name}` runs it again")
            self._emit("backfill_waiting", state=row[0], message=message)
            return self.result("waiting", message)
        if row is None or row[2] is None:
            key_min, key_end = self._key_range(conn)
            if row is None:
                _insert_row(conn, b, "running", None)
            conn.execute(f"""UPDATE {ledger.BACKFILLS_TABLE} SET key_min = %s, key_end = %s,
                             next_key = %s, state = 'running', updated_at = now()
                             WHERE name = %s""", (key_min, key_end, key_min, b.name))
            self._emit("backfill_started", table=f"{b.schema}.{b.table}", key=b.key,
                       key_min=key_min, key_end=key_end)
            return b.batch_size
        self._emit("backfill_resumed", next_key=row[4], key_end=row[3])
        return int(row[5])

    def _key_indexed(self, conn: psycopg.Connection) -> bool:
        """A valid index starts with the key column (checked when it starts, and with the
        health while it runs: a batch without it scans the whole table)."""
        b = self.backfill
        found = conn.execute(
            """SELECT EXISTS (SELECT FROM pg_index i JOIN pg_attribute a ON a.attrelid =
                   i.indrelid AND a.attnum = i.indkey[0] WHERE i.indrelid = to_regclass(%s)
                   AND a.attname = %s AND i.indisvalid)""",
            (f"{quote_ident(b.schema)}.{quote_ident(b.table)}", b.key)).fetchone()
        return bool(found and found[0])

    def _key_range(self, conn: psycopg.Connection) -> tuple[int, int]:
        """`[min(key), max(key) + 1)`, after checking the key is an indexed integer column
        (each batch must find its rows by the index, not by scanning the table)."""
        b = self.backfill
        where = f"{b.schema}.{b.table}.{b.key}"
        found = conn.execute(
            """SELECT t.typname, c.relkind
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               JOIN pg_attribute a ON a.attrelid = c.oid AND NOT a.attisdropped
               JOIN pg_type t ON t.oid = a.atttypid
               WHERE n.nspname = %s AND c.relname = %s AND a.attname = %s""",
            (b.schema, b.table, b.key)).fetchone()
        if found is None:
            raise BackfillError(f"{b.path}: {where} does not exist on this database; apply the "
                                "revision that creates it first (`svcmig migrate`)")
        if found[1] not in ("r", "p"):
            raise BackfillError(f"{b.path}: {b.schema}.{b.table} is not a table (a view, or a "
                                "materialized view): a backfill walks the key of a table")
        if found[0] not in INTEGER_TYPES:
            raise BackfillError(f"{b.path}: the key {where} is {found[0]}; batches walk an "
                                "integer key (smallint, integer, bigint): name one with "
                                "'-- key: <table>.<column>'")
        if not self._key_indexed(conn):
            raise BackfillError(f"{b.path}: no valid index starts with {where}, so every batch "
                                "would scan the whole table; index the key first (CREATE INDEX "
                                "CONCURRENTLY in a revision) or walk another key")
        table = f"{quote_ident(b.schema)}.{quote_ident(b.table)}"
        low, high = conn.execute(f"SELECT min({quote_ident(b.key)}), max({quote_ident(b.key)}) "
                                 f"FROM {table}").fetchone() or (None, None)
        if low is None:
            return 0, 0  # an empty table: nothing to do
        nulls = conn.execute(f"SELECT EXISTS (SELECT FROM {table} WHERE "
                             f"{quote_ident(b.key)} IS NULL)").fetchone()
        if nulls and nulls[0]:
            self._emit("backfill_warning", message=f"{where} is NULL in some rows: a backfill "
                       "walks key values, so those rows are never visited; change them in a "
                       "revision, or walk a key without NULLs")
        if int(high) >= BIGINT_MAX:
            raise BackfillError(f"{b.path}: {where} reaches {BIGINT_MAX}, the largest bigint, so "
                                "the last batch's exclusive end (:end) cannot be passed; walk "
                                "another key, or handle that row in a revision")
        return int(low), int(high) + 1

    def _loop(self, conn: psycopg.Connection, owner: psycopg.Connection,
              first_size: int) -> BackfillResult:
        s = self.settings
        size = max(1, min(first_size, s.max_batch_size))
        attempts = 0
        run = self.backfill.batch_function() if self.backfill.kind == "python" else None
        while True:
            if s.max_seconds is not None and time.monotonic() - self.started >= s.max_seconds:
                self._emit("backfill_stopped", reason="time limit", rows=self.rows)
                return self.result("stopped", f"{self.backfill.name} stopped after "
                                    f"{s.max_seconds:g} s (the time limit); the next run "
                                    "resumes it")
            self._wait_for_health(conn)
            try:
                outcome = self._batch(owner, size, run)
            except TRANSIENT as err:
                attempts += 1
                if attempts > s.transient_retries:
                    return self._fail(conn, err)
                delay = min(s.max_backoff_s, 0.1 * 2 ** attempts) * random.uniform(0.5, 1.0)
                self._emit("backfill_retry", reason=_first_line(err), attempt=attempts,
                           sleep_s=round(delay, 2))
                time.sleep(delay)
                continue
            except pg_errors.QueryCanceled as err:
                if size == 1:
                    return self._fail(conn, BatchError(
                        f"{_first_line(err)}: one key's rows take longer than the statement "
                        f"timeout ({s.statement_timeout_ms} ms); raise it with "
                        "--statement-timeout-ms, or make the statement cheaper"))
                size = max(1, size // 2)
                self._emit("backfill_retry", reason="statement timeout", batch_size=size)
                continue
            except psycopg.OperationalError:
                raise  # the connection is gone: the row stays running, the next run resumes
            except (psycopg.Error, BatchError) as err:
                return self._fail(conn, err)
            except Exception as err:  # a Python backfill's own code: its error, in one line
                return self._fail(conn, BatchError(f"batch() raised {err!r}"))
            attempts = 0
            if outcome is None:  # paused, or finished
                return self._finish(conn)
            start, end, rows, elapsed_ms = outcome
            self.rows += rows
            self.batches += 1
            factor = s.target_batch_ms / max(elapsed_ms, 1.0)
            size = max(1, min(s.max_batch_size, int(size * min(2.0, max(0.5, factor)))))
            self._emit("backfill_batch", start=start, end=end, rows=rows,
                       ms=round(elapsed_ms, 1), next_batch_size=size,
                       done=self._done_fraction(end))
            time.sleep(s.sleep_ms / 1000)

    def _done_fraction(self, end: int) -> float:
        low, high = self._range
        return round(1.0 if high <= low else (end - low) / (high - low), 4)

    def _batch(self, owner: psycopg.Connection, size: int,
               run: Callable[[Any, int, int], int | None] | None,
               ) -> tuple[int, int, int, float] | None:
        """One batch in one transaction; None when there is nothing left or the backfill is no
        longer running (paused)."""
        b, s = self.backfill, self.settings
        with owner.transaction():
            owner.execute(
                "SELECT set_config('search_path', %s, true), set_config('lock_timeout', %s, "
                "true), set_config('statement_timeout', %s, true)",
                (quote_ident(b.schema), f"{s.lock_timeout_ms}ms", f"{s.statement_timeout_ms}ms"))
            row = owner.execute(
                f"SELECT next_key, key_end, key_min, pg_current_xact_id()::text, rows_done, "
                f"batches, batch_size FROM {ledger.BACKFILLS_TABLE} WHERE name = %s "
                "AND state = 'running' FOR UPDATE", (b.name,)).fetchone()
            if row is None or row[0] >= row[1]:
                return None
            cursor, key_end, self._range, xid = row[0], row[1], (row[2], row[1]), row[3]
            # the next key that exists (one index probe): gaps in the keys cost no batches
            found = owner.execute(
                f"SELECT min({quote_ident(b.key)}) FROM {quote_ident(b.schema)}."
                f"{quote_ident(b.table)} WHERE {quote_ident(b.key)} >= %s", (cursor,)).fetchone()
            start = key_end if found is None or found[0] is None else min(max(cursor, found[0]),
                                                                          key_end)
            end = min(start + size, key_end)
            self._current = (start, end)
            began = time.perf_counter()
            if start >= key_end:
                pass  # no key left in the range: only the cursor moves
            elif run is not None:
                guarded = getattr(owner, "guarded", False)
                owner.guarded = True  # type: ignore[attr-defined]
                try:
                    counted = run(owner, start, end)
                except SystemExit as err:  # not the runner's exit: the batch failed
                    raise BatchError(f"batch() called sys.exit({err.code!r})") from err
                finally:
                    owner.guarded = guarded  # type: ignore[attr-defined]
                if not isinstance(counted, int) or isinstance(counted, bool) or counted < 0:
                    raise BatchError(f"batch() returned {counted!r}; return the number of rows "
                                     "it changed, an int of 0 or more (e.g. cursor.rowcount)")
                rows = counted
            else:
                with psycopg.RawCursor(owner) as cur:
                    cur.execute(b.statement, (start, end))
                    rows = max(cur.rowcount, 0)
            if start >= key_end:
                rows, end = 0, key_end
            elapsed_ms = (time.perf_counter() - began) * 1000
            # the row was locked before the batch ran: if it changed, the batch changed it
            now = owner.execute(
                f"SELECT next_key, rows_done, batches, batch_size FROM {ledger.BACKFILLS_TABLE} "
                "WHERE name = %s", (b.name,)).fetchone()
            if now is None or tuple(now) != (cursor, row[4], row[5], row[6]):
                raise BatchError(
                    f"the batch of keys [{start}, {end}) changed its own progress row in "
                    f"{ledger.BACKFILLS_TABLE}; a backfill changes its service's rows, never "
                    "the runner's: remove that write (nothing of the batch was kept)")
            # The batch must still be in the transaction that locked the progress row: one
            # that committed on its own (`conn.execute("COMMIT")` in a Python batch) would
            # leave its rows changed with the cursor unmoved, to be done again
            moved = owner.execute(
                f"""UPDATE {ledger.BACKFILLS_TABLE} SET next_key = %s, batch_size = %s,
                    batches = batches + 1, rows_done = rows_done + %s, updated_at = now()
                    WHERE name = %s AND pg_current_xact_id()::text = %s""",
                (end, size, rows, b.name, xid)).rowcount
            if moved != 1:
                raise BatchError(
                    f"the batch of keys [{start}, {end}) ended its transaction itself (a COMMIT "
                    "or ROLLBACK in the backfill): its changes may be committed while the "
                    "cursor did not move; a batch must leave its transaction to the runner. "
                    "Remove the COMMIT, check those rows")
        return start, end, rows, elapsed_ms

    def _finish(self, conn: psycopg.Connection) -> BackfillResult:
        name = self.backfill.name
        done = conn.execute(
            f"""UPDATE {ledger.BACKFILLS_TABLE} SET state = 'finished', finished_at = now(),
                updated_at = now() WHERE name = %s AND state = 'running' AND next_key >= key_end
                RETURNING rows_done""", (name,)).fetchone()
        if done is not None:
            self._emit("backfill_finished", rows=self.rows, batches=self.batches,
                       rows_in_all=done[0])
            return self.result("finished", f"{name} finished: {done[0]:,} rows in all")
        state = conn.execute(f"SELECT state FROM {ledger.BACKFILLS_TABLE} WHERE name = %s",
                             (name,)).fetchone()
        self._emit("backfill_paused", state=state[0] if state else None)
        return self.result("paused", f"{name} is {state[0] if state else 'gone'}; "
                            f"`svcmig backfill resume {name}` continues it")

    def _fail(self, conn: psycopg.Connection, err: psycopg.Error | BatchError) -> BackfillResult:
        b = self.backfill
        where = (f"keys {b.key} >= {self._current[0]} and < {self._current[1]} of "
                 f"{b.schema}.{b.table}" if self._current else f"{b.schema}.{b.table}")
        line = f" (line {b.statement_line})" if b.kind == "sql" else ""
        message = (f"{b.path}{line}: backfill {b.name} failed on the batch of {where}: "
                   f"{_first_line(err)}; earlier batches stay done. Fix the data or the "
                   f"backfill, then `svcmig backfill retry {b.name}`")
        conn.execute(f"UPDATE {ledger.BACKFILLS_TABLE} SET state = 'failed', error = %s, "
                     "updated_at = now() WHERE name = %s", (message, b.name))
        self._emit("backfill_failed", message=message)
        return self.result("failed", message)

    def _wait_for_health(self, conn: psycopg.Connection) -> None:
        """Sleep, doubling up to `max_backoff_s`, while the database is under pressure. Looked
        at once per `health_interval_s` at most: the query costs a few ms, a batch ~200."""
        now = time.monotonic()
        if now - self._health_checked < self.settings.health_interval_s:
            return
        b = self.backfill
        if not self._key_indexed(conn):
            raise BackfillError(f"{b.path}: the index on {b.schema}.{b.table}.{b.key} is gone "
                                "(or invalid): every batch would scan the whole table. "
                                f"Index the key again, then `svcmig backfill retry {b.name}`")
        delay = max(self.settings.sleep_ms / 1000, 0.1)
        while True:
            reason = self._pressure(conn)
            self._health_checked = time.monotonic()
            if reason is None:
                return
            self._emit("backfill_throttled", reason=reason, sleep_s=round(delay, 2))
            time.sleep(delay)
            delay = min(self.settings.max_backoff_s, delay * 2)
            if self.settings.max_seconds is not None and \
                    time.monotonic() - self.started >= self.settings.max_seconds:
                return

    def _pressure(self, conn: psycopg.Connection) -> str | None:
        s = self.settings
        row = conn.execute(
            """SELECT
                 (SELECT coalesce(max(extract(epoch FROM now() - xact_start)), 0)
                    FROM pg_stat_activity WHERE datname = current_database()
                    AND backend_type = 'client backend' AND xact_start IS NOT NULL
                    AND pid <> ALL(%(own)s)),
                 (SELECT count(*) FROM pg_locks l WHERE NOT l.granted AND l.pid <> ALL(%(own)s)
                    AND l.waitstart < now() - make_interval(secs => %(wait)s)),
                 (SELECT coalesce(max(extract(epoch FROM replay_lag)), 0)
                    FROM pg_stat_replication)""",
            {"own": self._own_pids, "wait": s.max_lock_wait_s}).fetchone()
        if row is None:
            return None
        age, waits, lag = float(row[0]), int(row[1]), float(row[2])
        if age > s.max_transaction_age_s:
            return (f"a transaction has been open {age:.0f} s (limit "
                    f"{s.max_transaction_age_s:g} s): vacuum cannot remove dead rows meanwhile")
        if waits:
            return f"{waits} session(s) waiting on a lock for over {s.max_lock_wait_s:g} s"
        if lag > s.max_replication_lag_s:
            return f"replication lag {lag:.1f} s (limit {s.max_replication_lag_s:g} s)"
        return None


def _first_line(err: BaseException) -> str:
    diag = getattr(err, "diag", None)
    message = getattr(diag, "message_primary", None) or str(err).strip()
    return redact(message.splitlines()[0] if message else repr(err))


def with_overrides(settings: BackfillSettings, **values: Any) -> BackfillSettings:
    """`settings` with the given fields replaced (None values are ignored)."""
    return replace(settings, **{k: v for k, v in values.items() if v is not None})
