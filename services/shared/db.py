"""Database access for a service: a tiny `psycopg_pool` pool per Lambda instance, logging in as
the service's own `<service>_app` role.

Why it looks like this:
- min 0, max 1–2 connections: one Lambda instance serves one request at a time, and a thousand
  instances must not hold a thousand idle backends (RDS Proxy / PgBouncer multiplex them).
- `check=` on checkout: Lambda freezes the process between invocations; the server or the proxy
  may close the idle connection meanwhile, and the next invocation must not fail on it.
- `prepare_threshold=None`: psycopg prepares a statement after 5 runs, and prepared statements
  break through a transaction pooler (PgBouncer) and pin RDS Proxy sessions.
- No `SET` and no session state: queries name their schema (`users.users`) instead of relying on
  `search_path`, so any pooled backend will do.
- Credentials are pluggable (an environment URL locally, Secrets Manager in Lambda), cached, and
  refreshed once when the server rejects them (a rotated password).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import psycopg
from psycopg import conninfo as pg_conninfo
from psycopg_pool import ConnectionPool, PoolTimeout

from .http import ServiceUnavailable

# invalid_password, invalid_authorization_specification
AUTH_FAILURE_SQLSTATES = frozenset({"28P01", "28000"})
AUTH_FAILURE_TEXT = ("password authentication failed", "authentication failed")


class Credentials(Protocol):
    """Where a service's connection parameters come from."""

    def conninfo(self) -> str:
        """The current libpq connection string (cached by the implementation)."""
        ...

    def refresh(self) -> None:
        """Forget the cached value: the server rejected it (the password was rotated)."""
        ...


def is_auth_failure(err: psycopg.Error) -> bool:
    """Connection errors often carry no SQLSTATE in psycopg, hence the text fallback."""
    if err.sqlstate in AUTH_FAILURE_SQLSTATES:
        return True
    text = str(err).lower()
    return any(fragment in text for fragment in AUTH_FAILURE_TEXT)


def app_conninfo(url: str, service: str) -> str:
    """`url` (any user, e.g. the superuser of a local server) turned into a login as
    `<service>_app`, without a password: local servers trust local connections."""
    params = pg_conninfo.conninfo_to_dict(url)
    params.pop("password", None)
    params["user"] = f"{service}_app"
    return pg_conninfo.make_conninfo(**params)  # type: ignore[arg-type]


class UrlCredentials:
    """Local development and tests: `DATABASE_URL` (or an explicit URL) with the user replaced
    by the service's app role."""

    def __init__(self, service: str, url: str) -> None:
        self._conninfo = app_conninfo(url, service)

    def conninfo(self) -> str:
        return self._conninfo

    def refresh(self) -> None:
        """Nothing to refresh: the URL is all there is."""


class SecretsManagerCredentials:
    """Lambda: an RDS-style JSON secret (`username`, `password`, `host`, `port`, `dbname`) read
    through Powertools parameters, cached for `max_age` seconds, fetched again on refresh.

    `host_override` points the connection at RDS Proxy when the secret names the cluster."""

    def __init__(self, secret_id: str, *, max_age: int = 300, host_override: str | None = None,
                 dbname_override: str | None = None) -> None:
        self.secret_id = secret_id
        self.max_age = max_age
        self.host_override = host_override
        self.dbname_override = dbname_override
        self._force = False

    def conninfo(self) -> str:
        from aws_lambda_powertools.utilities import parameters

        secret: Any = parameters.get_secret(self.secret_id, transform="json",
                                            max_age=self.max_age, force_fetch=self._force)
        self._force = False
        return pg_conninfo.make_conninfo(
            host=self.host_override or secret["host"],
            port=str(secret.get("port", 5432)),
            dbname=self.dbname_override or secret.get("dbname", "postgres"),
            user=secret["username"],
            password=secret["password"],
        )

    def refresh(self) -> None:
        self._force = True


class IamTokenCredentials:
    """Lambda through RDS Proxy with IAM auth (what infra/ deploys): the password is a
    15-minute token signed with the function's own role, made afresh for every new connection
    (the pool asks on each connect), so nothing secret is cached and nothing needs refreshing."""

    def __init__(self, host: str, port: int, dbname: str, user: str,
                 sslmode: str = "require") -> None:
        self.host, self.port, self.dbname, self.user = host, port, dbname, user
        self.sslmode = sslmode

    def conninfo(self) -> str:
        import boto3

        token = boto3.client("rds").generate_db_auth_token(
            DBHostname=self.host, Port=self.port, DBUsername=self.user)
        return pg_conninfo.make_conninfo(host=self.host, port=str(self.port), dbname=self.dbname,
                                         user=self.user, password=token, sslmode=self.sslmode)

    def refresh(self) -> None:
        """Every connect signs a new token already."""


def credentials_from_environment(service: str) -> Credentials:
    """`DB_AUTH=iam` → IAM tokens for RDS Proxy (Lambda, as deployed); `DB_SECRET_ID` →
    Secrets Manager; else `DATABASE_URL` (local, tests)."""
    if os.environ.get("DB_AUTH") == "iam":
        missing = [n for n in ("DB_HOST", "DB_NAME", "DB_USER") if not os.environ.get(n)]
        if missing:
            raise ServiceUnavailable(f"DB_AUTH=iam needs {', '.join(missing)}")
        return IamTokenCredentials(os.environ["DB_HOST"], int(os.environ.get("DB_PORT", "5432")),
                                   os.environ["DB_NAME"], os.environ["DB_USER"],
                                   os.environ.get("DB_SSLMODE", "require"))
    secret_id = os.environ.get("DB_SECRET_ID")
    if secret_id:
        return SecretsManagerCredentials(secret_id, host_override=os.environ.get("DB_HOST"),
                                         dbname_override=os.environ.get("DB_NAME"))
    url = os.environ.get("DATABASE_URL")
    if not url:
        raise ServiceUnavailable("the database is not configured: set DB_SECRET_ID or "
                                 "DATABASE_URL")
    return UrlCredentials(service, url)


class Database:
    """One service's pool, created on first use (importing a handler opens nothing, so a cold
    start that fails validation never touches the database)."""

    def __init__(self, service: str, credentials: Credentials | None = None, *,
                 max_size: int | None = None, timeout: float | None = None) -> None:
        self.service = service
        self._credentials = credentials
        self.max_size = max_size or int(os.environ.get("DB_POOL_MAX", "1"))
        self.timeout = timeout or float(os.environ.get("DB_POOL_TIMEOUT", "5"))
        self.last_connect_error: str | None = None
        self._pool: ConnectionPool[psycopg.Connection[Any]] | None = None
        self._lock = threading.Lock()

    @property
    def credentials(self) -> Credentials:
        if self._credentials is None:
            self._credentials = credentials_from_environment(self.service)
        return self._credentials

    def _connect(self) -> str:
        """Conninfo for the pool's next connection; called by the pool on every connect."""
        return self.credentials.conninfo()

    def _connection_class(self) -> type[psycopg.Connection[Any]]:
        """A connection class whose `connect` retries once with refreshed credentials when
        the server rejects the cached ones, and remembers why a connect failed."""
        database = self

        class AppConnection(psycopg.Connection[Any]):
            @classmethod
            def connect(cls, conninfo: str = "", **kwargs: Any) -> Any:  # type: ignore[override]
                try:
                    return super().connect(conninfo, **kwargs)
                except psycopg.OperationalError as err:
                    database.last_connect_error = _first_line(err)
                    if not is_auth_failure(err):
                        raise
                    database.credentials.refresh()
                    return super().connect(database._connect(), **kwargs)

        return AppConnection

    def pool(self) -> ConnectionPool[psycopg.Connection[Any]]:
        with self._lock:
            if self._pool is None:
                self._pool = ConnectionPool(
                    conninfo=self._connect,
                    connection_class=self._connection_class(),
                    kwargs={"prepare_threshold": None, "connect_timeout": 5,
                            "application_name": f"{self.service}-lambda"},
                    min_size=0,
                    max_size=self.max_size,
                    check=ConnectionPool.check_connection,
                    timeout=self.timeout,
                    name=self.service,
                    open=True,
                )
            return self._pool

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection inside one transaction: committed when the block ends, rolled
        back when it raises. A database that cannot be reached becomes a 503, not a 500."""
        try:
            with self.pool().connection() as conn:
                yield conn
        except PoolTimeout as err:
            reason = self.last_connect_error or "no connection became available"
            raise ServiceUnavailable(f"the database is unavailable ({reason}); retry") from err
        except psycopg.OperationalError as err:
            raise ServiceUnavailable(f"the database connection failed ({_first_line(err)}); "
                                     "retry") from err

    def close(self, *, forget_credentials: bool = False) -> None:
        """Close the pool (the next transaction opens a new one); tests and `svcmig dev` also
        forget environment credentials so a new `DATABASE_URL` takes effect."""
        with self._lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None
            if forget_credentials:
                self._credentials = None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[-1].strip() if text else type(err).__name__
