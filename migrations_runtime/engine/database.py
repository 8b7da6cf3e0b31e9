"""The migrator's connection: URL forms libpq and SQLAlchemy accept, a redacted URL for messages,
and the direct session every run uses (step 5 of the flow, before the lock)."""

from __future__ import annotations

import os
import re
import socket

import psycopg

from .errors import SvcmigError

APPLICATION_NAME = "svcmig-migrator"


def libpq_url(url: str) -> str:
    """Accept SQLAlchemy-style URLs (`postgresql+psycopg://`) and hand libpq a plain one."""
    return re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql://", url)


def sqlalchemy_url(url: str) -> str:
    return re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql+psycopg://", url)


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
