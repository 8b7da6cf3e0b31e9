"""The migrator's connection: URL forms libpq and SQLAlchemy accept, a redacted URL for messages,
and the direct session every run uses (step 5 of the flow, before the lock)."""

from __future__ import annotations

import os
import re
import socket

import psycopg
from psycopg.conninfo import conninfo_to_dict

from .errors import SvcmigError, UsageProblem

APPLICATION_NAME = "svcmig-migrator"


def libpq_url(url: str) -> str:
    """Accept SQLAlchemy-style URLs (`postgresql+psycopg://`) and hand libpq a plain one; a URL
    of another scheme (`mysql://`) is refused here, with a message, not by libpq."""
    scheme = re.match(r"^([A-Za-z][\w+.-]*)://", url)
    if scheme and not re.fullmatch(r"postgres(ql)?(\+\w+)?", scheme[1]):
        raise UsageProblem(f"{redact(url)} is not a PostgreSQL URL: expected "
                           "postgresql://user@host:port/database; check --database-url / "
                           "DATABASE_URL")
    if not url.strip():  # libpq would read an empty string as "every default": refuse it
        raise UsageProblem("the database URL is empty: write postgresql://user@host:port/"
                           "database; check --database-url / DATABASE_URL")
    plain = re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql://", url)
    try:
        conninfo_to_dict(plain)  # libpq's own parser, without connecting
    except psycopg.ProgrammingError as err:
        reason = redact(str(err).strip().splitlines()[0]) if str(err).strip() else "unparsable"
        raise UsageProblem(
            f"{redact(url)} is not a PostgreSQL URL or connection string ({reason}): write "
            "postgresql://user@host:port/database; check --database-url / DATABASE_URL") from err
    return plain


def sqlalchemy_url(url: str) -> str:
    return re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql+psycopg://", url)


def redact(url: str) -> str:
    """A URL or libpq connection string safe to print: every password replaced, whether it
    is written `user:password@host`, `?password=…` or `password=…` (quoted or not). An empty
    password hides nothing: `user:@host` is shown `user@host` (the embedded Postgres's URL),
    `password=` as it is."""
    url = re.sub(r"(://[^:/@]*):([^@]*)@",
                 lambda m: f"{m[1]}:***@" if m[2] else f"{m[1]}@", url)
    return re.sub(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|[^&\s]*)",
                  lambda m: m[0] if m[2] in ("", "''") else f"{m[1]}***", url,
                  flags=re.IGNORECASE)


# Dead peers are noticed within about a minute either way: the client's TCP keepalives (libpq)
# and the server's own (tcp_keepalives_*, set for this session) probe after 30 s idle, every
# 10 s, 3 times; unacknowledged data gives up after 60 s (tcp_user_timeout).
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10,
              "keepalives_count": 3, "tcp_user_timeout": 60_000}
DEFAULT_IDLE_IN_TRANSACTION_MS = 60_000


def session_options(idle_in_transaction_ms: int) -> str:
    """Server settings of every migrator and revision session (libpq `options`):
    - `standard_conforming_strings`: a backslash in a string literal is a backslash;
    - `client_connection_check_interval`: a killed migrator's backend notices within a second
      and ends, which frees its locks even mid-statement;
    - `idle_in_transaction_session_timeout`: a frozen migrator (a Lambda frozen, a stopped
      process) cannot hold a revision's locks longer than this;
    - the server's TCP keepalives, for a peer that vanished without closing the socket;
    - `search_path` of only the system catalog (and temporary objects last): every name svcmig
      sends is schema-qualified, and a function or operator a revision created in its schema (or
      anyone in `public`, or in a schema named like the login) cannot stand in for a built-in one
      in the migrator's queries. A revision's session sets its own search_path per revision."""
    settings = {
        "search_path": "pg_catalog,pg_temp",
        "standard_conforming_strings": "on",  # the ledger's literals rely on it
        "client_connection_check_interval": 1000,
        "idle_in_transaction_session_timeout": int(idle_in_transaction_ms),
        "tcp_keepalives_idle": KEEPALIVES["keepalives_idle"],
        "tcp_keepalives_interval": KEEPALIVES["keepalives_interval"],
        "tcp_keepalives_count": KEEPALIVES["keepalives_count"],
    }
    return " ".join(f"-c {name}={value}" for name, value in settings.items())


def connect(url: str, *, autocommit: bool = True, role: str = APPLICATION_NAME,
            idle_in_transaction_ms: int = DEFAULT_IDLE_IN_TRANSACTION_MS,
            cls: type[psycopg.Connection] = psycopg.Connection,  # type: ignore[type-arg]
            **overrides: str) -> psycopg.Connection:  # type: ignore[type-arg]
    """A direct session (never through RDS Proxy or a transaction pooler: the advisory lock and
    the per-revision session settings need a real, stable session), with the session settings
    above. `overrides` replace parts of the URL (`user`, `password` for a revision session)."""
    try:
        return cls.connect(
            libpq_url(url),
            autocommit=autocommit,
            application_name=f"{role}@{socket.gethostname()}:{os.getpid()}",
            connect_timeout=10,
            # Nothing svcmig sends repeats in a way worth a server-side prepared statement, and
            # a revision session's reset deallocates them all (DISCARD ALL's DEALLOCATE ALL).
            prepare_threshold=None,
            client_encoding="UTF8",  # what revision files are; pinned (statements.py)
            options=session_options(idle_in_transaction_ms),
            **KEEPALIVES,  # type: ignore[arg-type]
            **overrides,  # type: ignore[arg-type]
        )
    except psycopg.Error as err:  # unreachable, refused, or not a connection string at all
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
        raise SvcmigError(
            f"cannot connect to {redact(url)}: {redact(first_line)}; check --database-url / "
            "DATABASE_URL") from err


def refuse_pooler(conn: psycopg.Connection, url: str) -> None:
    """Refuse a session that is not a direct, stable server session.

    A pooler (PgBouncer, RDS Proxy) answers the startup with its own backend key, so the pid it
    reports differs from the server's `pg_backend_pid()`; in transaction mode two transactions
    may also reach different server backends. Either way a session advisory lock and session
    settings would mean nothing, so the run stops before it takes the lock."""
    first = conn.execute("SELECT pg_backend_pid()").fetchone()
    second = conn.execute("SELECT pg_backend_pid()").fetchone()
    server_pids = {row[0] for row in (first, second) if row}
    if server_pids != {conn.info.backend_pid}:
        raise SvcmigError(
            f"{redact(url)} is not a direct PostgreSQL session (the connection reports backend "
            f"pid {conn.info.backend_pid}, the server {sorted(server_pids)}): a connection "
            "pooler such as PgBouncer or RDS Proxy is in between. The migrator needs a real "
            "session for its lock; connect to the database's writer endpoint directly")
