"""Step 5 of the flow, per service: the sessions revisions run in.

Isolation is Postgres's, not a parser's: a service's revisions run in a session that logged in
as `<service>_owner`, a role that is neither a superuser nor a member of the migrator, so no
statement in a revision (`RESET ROLE`, `SET SESSION AUTHORIZATION`, dynamic SQL in a DO block, a
SECURITY DEFINER function it creates) can act with more privilege than the service's owner.
The migrator's own session only holds the advisory lock, bootstraps roles and reads the ledger.

The owner role is NOLOGIN at rest. When a run has revisions of a service to apply, the
migrator gives the owner a fresh random password (sent as a SCRAM verifier, never in clear
text), logs in with it, and puts the role back to NOLOGIN without a password at the end of the
run (roles are cluster-wide: another database's run using the role keeps its session and logs
in again when it needs to). Nothing is stored, and the login is VALID UNTIL two minutes after
it was granted: a crashed run leaves a password nobody knows, and one a revision set on its own
role expires. The next service's session is logged in while the current service's revisions run
(`prefetch`); a run that ends first closes it and puts its owner back to NOLOGIN as well.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import random
import secrets
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import psycopg
from psycopg import pq

from .database import connect
from .discover import Service
from .errors import SvcmigError
from .statements import quote_ident, sql_literal

REVISION_SESSION_NAME = "svcmig-revision"
LOGIN_ATTEMPTS = 5  # another run on the same cluster may set the password between two steps
# How long after the migrator sets it an owner's password logs in: the runner logs in at once,
# and open sessions outlive it. A role may change its own password (dynamic SQL in a revision
# can), but not its VALID UNTIL, so after a crashed run no password logs in for long.
LOGIN_WINDOW_SECONDS = 120
# Putting an owner back to NOLOGIN at the end: each attempt waits this long for the role's row.
CLOSE_ATTEMPTS = 3
CLOSE_LOCK_TIMEOUT_MS = 2000


# PBKDF2 rounds in the verifier. Key stretching protects passwords people choose; these are 256
# random bits used once, so a high count would only make every login slower (PostgreSQL's
# default is 4096: about 10 ms of hashing on each side per login).
SCRAM_ITERATIONS = 16


def scram_verifier(password: str, iterations: int = SCRAM_ITERATIONS) -> str:
    """A SCRAM-SHA-256 verifier for `password`, in the form PostgreSQL stores in
    `pg_authid.rolpassword`: `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`
    (base64). Source: RFC 5802 section 3 and RFC 7677; PostgreSQL's `scram_build_secret`."""
    salt = secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


class GuardedConnection(psycopg.Connection):  # type: ignore[type-arg]
    """A revision session. While a Python revision runs (`guarded`), `commit()` refuses: a
    commit from inside a revision would end the runner's transaction before its ledger row."""

    guarded = False

    def commit(self) -> None:
        if self.guarded:
            raise SvcmigError("a revision or backfill batch may not commit the runner's "
                              "transaction (connection.commit() / op.get_bind().commit()); mark "
                              "a revision transactional = False if it must commit in steps")
        super().commit()


class RevisionSessions:
    """One session per service, logged in as its owner, opened on first use in a run."""

    def __init__(self, migrator: psycopg.Connection, url: str, idle_in_transaction_ms: int,
                 log: Callable[[dict[str, object]], None] | None = None) -> None:
        self.migrator = migrator
        self.url = url
        self.idle_in_transaction_ms = idle_in_transaction_ms
        self.log = log or (lambda _line: None)
        self._open: dict[str, GuardedConnection] = {}
        self._pending: dict[str, Future[GuardedConnection]] = {}  # see `prefetch`
        self._logins: ThreadPoolExecutor | None = None

    def session(self, service: Service) -> GuardedConnection:
        conn = self._open.get(service.name)
        if conn is not None and not conn.closed:
            return conn
        pending = self._pending.pop(service.name, None)
        conn = self._prefetched(pending) if pending is not None else None
        if conn is None or conn.closed:
            conn = self._log_in(service)  # a failed prefetch fails again here, and says why
        self._open[service.name] = conn
        return conn

    def prefetch(self, service: Service,
                 ready: Callable[[GuardedConnection], None] | None = None) -> None:
        """Log in as `service`'s owner in the background, while the current service's
        revisions run, so its session is ready when its first revision is: a login (the
        migrator's ALTER ROLE, a new backend, SCRAM) costs 2–3 ms, 0.13 s of a run of 50
        services (`bench/bench_migrate.py`). `ready(session)` runs next, in the background
        too (the runner issues the service's tokens there). The migrator's session is shared
        with the main thread; psycopg serialises its use."""
        if service.name in self._pending or service.name in self._open:
            return
        if self._logins is None:
            self._logins = ThreadPoolExecutor(max_workers=1, thread_name_prefix="svcmig-login")
        self._pending[service.name] = self._logins.submit(self._log_in_ready, service, ready)

    def _log_in_ready(self, service: Service,
                      ready: Callable[[GuardedConnection], None] | None) -> GuardedConnection:
        conn = self._log_in(service)
        if ready is not None:
            try:
                ready(conn)
            except BaseException:
                conn.close()  # the service's first revision logs in again, and says why
                raise
        return conn

    def settle(self) -> None:
        """Wait for the logins still under way (`prefetch`): their sessions count as open, to
        be closed with the others."""
        for name, pending in self._pending.items():  # a session logged in for nothing
            conn = self._prefetched(pending)
            if conn is not None:
                self._open[name] = conn
        self._pending.clear()
        if self._logins is not None:
            self._logins.shutdown()
            self._logins = None

    @staticmethod
    def _prefetched(pending: Future[GuardedConnection]) -> GuardedConnection | None:
        try:
            return pending.result()
        except Exception:  # logged in again by the caller, which then says what went wrong
            return None

    def _log_in(self, service: Service) -> GuardedConnection:
        role = service.owner_role
        for attempt in range(1, LOGIN_ATTEMPTS + 1):
            password = secrets.token_urlsafe(32)
            verifier = scram_verifier(password)
            try:
                self.migrator.execute(
                    "DO $svcmig$ BEGIN EXECUTE format('ALTER ROLE %I WITH LOGIN PASSWORD %L "
                    f"VALID UNTIL %L', {sql_literal(role)}, {sql_literal(verifier)}, "
                    f"now() + interval '{LOGIN_WINDOW_SECONDS} seconds'); END $svcmig$; "
                    f"{_forget_settings(role)}")
            except psycopg.Error as err:
                raise SvcmigError(
                    f"the migrator cannot let {role} log in ({err.diag.message_primary}); it "
                    f"needs CREATEROLE and ADMIN OPTION on {role} (the login that created the "
                    "role has both)") from err
            try:
                conn = connect(self.url, role=REVISION_SESSION_NAME,
                               idle_in_transaction_ms=self.idle_in_transaction_ms,
                               user=role, password=password, cls=GuardedConnection)
            except SvcmigError:
                if attempt == LOGIN_ATTEMPTS:
                    raise
                time.sleep(random.uniform(0.05, 0.3))
                continue
            assert isinstance(conn, GuardedConnection)
            self._refuse_privileged(conn, role)
            return conn
        raise AssertionError("unreachable")

    @staticmethod
    def _refuse_privileged(conn: psycopg.Connection, role: str) -> None:
        """The session must be `role`, an ordinary role, unable to write large objects it was
        not granted (where the ledger's policies find the run's token digests)."""
        # PostgreSQL 15 and later can let an ordinary role SET a superuser-only parameter
        may_set = ("has_parameter_privilege('lo_compat_privileges', 'SET')"
                   if conn.info.server_version >= 150000 else "false")
        row = conn.execute("SELECT session_user, current_setting('is_superuser'), "
                           f"current_setting('lo_compat_privileges'), {may_set}").fetchone()
        if row is None or row[0] != role or row[1] != "off":
            conn.close()
            raise SvcmigError(
                f"the session for {role} is {row[0] if row else '?'} with superuser "
                f"{row[1] if row else '?'}: a service's owner must be an ordinary role; "
                f"ALTER ROLE {role} NOSUPERUSER")
        if row[2] != "off":
            conn.close()
            raise SvcmigError(
                f"lo_compat_privileges is on in {role}'s sessions: any role could then write "
                "the large objects that hold svcmig's revision token digests; turn it off "
                "(ALTER SYSTEM, ALTER DATABASE or ALTER ROLE ... SET lo_compat_privileges = off)")
        if row[3]:
            conn.close()
            raise SvcmigError(
                f"{role} may turn lo_compat_privileges on (and then write any large object, "
                "svcmig's revision token digests included): REVOKE SET ON PARAMETER "
                f"lo_compat_privileges FROM {role} (and from PUBLIC)")

    def release(self, service: str) -> None:
        """Close the service's session now; the owner goes back to NOLOGIN at `close`."""
        conn = self._open.get(service)
        if conn is not None and not conn.closed:
            conn.close()

    def close(self) -> None:
        """Close every revision session, and put each owner back to NOLOGIN with no password
        and no role-level settings, whatever a revision did to its own role (`ALTER ROLE` is
        refused in a revision's text, but dynamic SQL can still reach it). Another run on the
        same cluster that is using the role keeps its open session and logs in again if it
        needs another (`_log_in` retries)."""
        self.settle()
        for name in list(self._open):
            self.release(name)
        if self.migrator.closed:
            return
        for name in self._open:
            role = f"{name}_owner"
            # bounded: a session of the role holding its row (an uncommitted ALTER ROLE) must
            # not hold the migrator, and its lock, for ever; tried again once it let go
            for attempt in range(CLOSE_ATTEMPTS):
                try:
                    self.migrator.execute(
                        f"BEGIN; SET LOCAL lock_timeout = {CLOSE_LOCK_TIMEOUT_MS}; ALTER ROLE "
                        f"{quote_ident(role)} WITH NOLOGIN PASSWORD NULL; "
                        f"{_forget_settings(role)}; COMMIT")
                    break
                except psycopg.Error as err:  # the run's result stands; the next run resets it
                    if self.migrator.info.transaction_status != pq.TransactionStatus.IDLE:
                        self.migrator.execute("ROLLBACK")
                    if attempt == CLOSE_ATTEMPTS - 1:
                        self.log({"event": "warning", "kind": "owner_login",
                                  "message": f"{role} stays LOGIN until its VALID UNTIL (at "
                                  f"most {LOGIN_WINDOW_SECONDS} s): {err.diag.message_primary}"})
        self._open.clear()


def _forget_settings(role: str) -> str:
    """Drop settings stored on the role (`ALTER ROLE ... SET`), everywhere and in this
    database: they would apply to its every session, in any run."""
    return (f"ALTER ROLE {quote_ident(role)} RESET ALL; DO $$ BEGIN EXECUTE format("
            f"'ALTER ROLE %I IN DATABASE %I RESET ALL', {sql_literal(role)}, "
            "current_database()); END $$")
