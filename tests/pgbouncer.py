"""A real PgBouncer (Debian package `pgbouncer`) for tests: the local stand-in for RDS Proxy.

Started per test on a free port in front of one database, in transaction mode unless told
otherwise; `pooler_servers` reads its own count of server connections."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg


def pooler_servers(pooler_url: str) -> int:
    """Server connections PgBouncer holds now, from its admin console (simple query protocol)."""
    info = psycopg.conninfo.conninfo_to_dict(pooler_url)
    info["dbname"] = "pgbouncer"
    with psycopg.connect(psycopg.conninfo.make_conninfo(**info), autocommit=True,  # type: ignore[arg-type]
                         cursor_factory=psycopg.ClientCursor) as conn:
        return len(conn.execute("SHOW SERVERS").fetchall())


def pgbouncer_binary() -> str | None:
    return shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if Path(p).exists()), None)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _unprivileged_user(host: str) -> str:
    """The owner of a Unix-socket server's socket folder (it can reach the socket), else
    postgres or nobody."""
    import pwd

    if host.startswith("/"):
        return pwd.getpwuid(Path(host).stat().st_uid).pw_name
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name).pw_name
        except KeyError:
            continue
    raise RuntimeError("no unprivileged user to run pgbouncer as")


@contextmanager
def pgbouncer(server_url: str, database: str, pool_size: int, users: tuple[str, ...] = (),
              settings: dict[str, str] | None = None) -> Iterator[str]:
    """PgBouncer in transaction mode in front of `server_url`/`database`, at most `pool_size`
    server connections for the database; yields the URL clients use (as postgres; `users` may
    log in too). `settings` adds or replaces lines of its `[pgbouncer]` section."""
    binary = pgbouncer_binary()
    assert binary, "pgbouncer is not installed"
    info = psycopg.conninfo.conninfo_to_dict(server_url)
    folder = Path(tempfile.mkdtemp(prefix="svcmig-pgbouncer-"))
    folder.chmod(0o777)
    port = _free_port()
    (folder / "users.txt").write_text("".join(f'"{role}" ""\n' for role in
                                              ("postgres", *users)))
    (folder / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"{database} = host={info.get('host') or '127.0.0.1'} port={info.get('port') or 5432} "
        f"dbname={database}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {folder / 'users.txt'}\n"
        + "".join(f"{key} = {value}\n" for key, value in {
            "pool_mode": "transaction", "default_pool_size": str(pool_size),
            "max_db_connections": str(pool_size), "max_client_conn": "2000",
            "server_login_retry": "1", "admin_users": "postgres",
            "logfile": str(folder / "pgbouncer.log"), "pidfile": str(folder / "pgbouncer.pid"),
            **(settings or {})}.items()))
    command = [binary, str(folder / "pgbouncer.ini")]
    if os.geteuid() == 0:  # PgBouncer refuses to run as root: run as a user that can reach
        command[1:1] = ["-u", _unprivileged_user(str(info.get("host") or ""))]  # the server
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    log = folder / "pgbouncer.log"
                    raise RuntimeError("pgbouncer did not start: " + (
                        process.stdout.read() if process.stdout else "") +
                        (log.read_text() if log.exists() else "")) from None
                time.sleep(0.05)
        url = psycopg.conninfo.make_conninfo(host="127.0.0.1", port=str(port), dbname=database,
                                            user="postgres")
        try:  # one real round trip, so a broken setup fails here with PgBouncer's own log
            with psycopg.connect(url, connect_timeout=5) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error as err:
            tail = (folder / "pgbouncer.log").read_text()[-2000:]
            raise RuntimeError(f"pgbouncer cannot reach the server: {err}\n{tail}") from err
        yield url
    finally:
        process.kill()  # a throwaway with no state; a "safe" shutdown may wait for clients
        process.wait(10)
        shutil.rmtree(folder, ignore_errors=True)
