"""Step 5 of the flow, before anything runs: the migrator's session advisory lock, one migrator per
database at a time.

Acquired by polling `pg_try_advisory_lock` until a deadline (never a blocking
`pg_advisory_lock`, which could wait forever and cannot name who holds it), on a connection in
autocommit mode so the lock query leaves no transaction open, and before `lock_timeout` is set.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psycopg

from .errors import LockTimeout

# "svcmig" in ASCII: one key for the whole framework in each database.
LOCK_KEY = int.from_bytes(b"svcmig", "big")
POLL_SECONDS = 0.1
WAIT_REPORT_SECONDS = 5.0  # a migrator waiting for the lock says who holds it this often


def lock_holders(conn: psycopg.Connection) -> list[tuple[int, str, str]]:
    """(pid, application_name, state) of sessions holding the migrator lock."""
    return conn.execute(
        """SELECT a.pid, coalesce(a.application_name, ''), coalesce(a.state, '')
           FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
           WHERE l.locktype = 'advisory' AND l.granted AND l.database = (
                 SELECT oid FROM pg_database WHERE datname = current_database())
             AND l.classid = (%s >> 32)::oid AND l.objid = (%s & 4294967295)::oid
             AND l.objsubid = 1""",
        (LOCK_KEY, LOCK_KEY),
    ).fetchall()


ALIVE_MARKER = "svcmig_migrator_alive"


def alive_marker(conn: psycopg.Connection) -> int:
    """A temporary table of the migrator's session (created once; its oid returned): it exists
    exactly as long as the session does, and with the session its advisory lock (PostgreSQL
    drops a session's temporary tables at its exit before it releases its locks, and no
    other session can make a relation with that oid)."""
    conn.execute(f"CREATE TEMPORARY TABLE IF NOT EXISTS {ALIVE_MARKER} ()")
    row = conn.execute(f"SELECT 'pg_temp.{ALIVE_MARKER}'::regclass::oid").fetchone()
    assert row is not None
    return int(row[0])


def session_alive_sql(marker: int) -> str:
    """SQL, for another session, that is true while the migrator's session (whose
    `alive_marker` is `marker`) still exists, so still holds the lock: a session-level advisory
    lock ends only with its session, or when the runner releases it at the end.

    `pg_relation_size` opens the marker under an ACCESS SHARE lock (released again when it
    returns). Taking a lock makes the session read the catalog's invalidations first, so a
    marker dropped by then is seen gone (NULL), not found in a stale catalog cache (as
    `pg_relation_filenode`, which takes no lock, was: a breaker's finding). The check is as of
    that statement, like the scan of pg_class it replaced: the few statements after it in
    the same batch (the token, the ledger row, COMMIT) are not covered. No subquery to plan:
    3–5 µs of server time against 15–20 µs for an index scan of pg_class in an EXISTS
    (reading the session's entry in pg_stat_activity costs 45 µs, a scan of pg_locks 90 µs;
    an advisory key of the migrator's own can be queued on, and then held, by any login)."""
    return f"pg_catalog.pg_relation_size({int(marker)}::pg_catalog.oid) IS NOT NULL"


def holders_text(conn: psycopg.Connection) -> str:
    """Who holds the migrator lock, for a person: `pid 123 (svcmig-migrator@host:77, idle)`."""
    return ", ".join(f"pid {pid} ({app or 'no application_name'}, {state})"
                     for pid, app, state in lock_holders(conn)) or "a session that just ended"


def acquire(conn: psycopg.Connection, wait_seconds: float,
            waiting: Callable[[float, str], None] | None = None) -> None:
    """Take the lock within `wait_seconds`; while waiting, `waiting(seconds waited, holders)`
    is called every WAIT_REPORT_SECONDS, so a second migrator is never silent."""
    if not conn.autocommit:
        raise ValueError("the migrator lock needs a connection in autocommit mode")
    started = time.monotonic()
    deadline, next_report = started + wait_seconds, started + WAIT_REPORT_SECONDS
    while True:
        row = conn.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,)).fetchone()
        if row is not None and row[0]:
            return
        now = time.monotonic()
        if waiting is not None and now >= next_report and now < deadline:
            waiting(now - started, holders_text(conn))
            next_report = now + WAIT_REPORT_SECONDS
        if now >= deadline:
            who = holders_text(conn)
            raise LockTimeout(
                f"another migrator holds the svcmig lock after waiting {wait_seconds:g}s: {who}. "
                "Wait for it to finish, or if it is stuck, end it with "
                "SELECT pg_terminate_backend(<pid>) and run again")
        time.sleep(POLL_SECONDS)


def release(conn: psycopg.Connection) -> None:
    if not conn.closed:
        conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))


class Heartbeat:
    """Keeps the lock session alive while revisions run in other sessions, and lets it die when
    the migrator cannot speak any more.

    The lock session sits idle (no transaction) for as long as a revision takes, so
    `idle_in_transaction_session_timeout` never ends it. With `idle_session_timeout` (PostgreSQL
    14 and later) set on it and a `SELECT 1` every quarter of that time from this thread, a
    frozen migrator (a stopped process, a frozen Lambda) loses its session, and with it the
    advisory lock, within the timeout; a live one never does."""

    def __init__(self, conn: psycopg.Connection, idle_timeout_ms: int) -> None:
        self.conn = conn
        self.interval = idle_timeout_ms / 4000
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if conn.info.server_version >= 140000:
            conn.execute(f"SET idle_session_timeout = {int(idle_timeout_ms)}")
            self._thread = threading.Thread(target=self._beat, name="svcmig-heartbeat",
                                            daemon=True)
            self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.conn.execute("SELECT 1")
            except psycopg.Error:
                return  # the run notices on its own next use of the session

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


@contextmanager
def migrator_lock(conn: psycopg.Connection, wait_seconds: float,
                  idle_timeout_ms: int | None = None,
                  waiting: Callable[[float, str], None] | None = None) -> Iterator[None]:
    """Hold the lock for the block; with `idle_timeout_ms`, a `Heartbeat` keeps it."""
    acquire(conn, wait_seconds, waiting)
    heartbeat = Heartbeat(conn, idle_timeout_ms) if idle_timeout_ms else None
    try:
        yield
    finally:
        if heartbeat is not None:
            heartbeat.stop()
        if not conn.closed and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
            release(conn)
        # Otherwise the connection is broken or mid-transaction; closing it releases the lock.
