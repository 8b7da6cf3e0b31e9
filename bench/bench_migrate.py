"""Migration-runner benchmark: `svcmig migrate` against a seed-style runner, side by side.

For each size SxM (S services x M revisions each) it generates a project in a temp folder
(mostly SQL revisions, every 10th a Python revision using `op.add_column`), then, in each of
`--runs` rounds (default 3), on freshly created databases and interleaved:

- svcmig full apply, then three no-ops from the files and three from the build-time manifest,
  each a subprocess `svcmig migrate --database-url URL` run in the generated project with
  SVCMIG_PROJECT_ROOT set, plus the no-op's peak RSS;
- a seed-style baseline (one `SELECT name FROM schema_migrations`, then each pending file in
  filename order in its own transaction with its ledger insert), also a subprocess, on a copy of
  the tree where the Python revisions are replaced by equivalent SQL files.

Every figure is a median over the rounds; both runners import from bytecode.

Usage:
    .venv/bin/python bench/bench_migrate.py [--sizes 2x10,10x100,50x200] [--runs 3]
        [--private-server | --database-url URL] [--profile]

`--private-server` runs on a private in-memory cluster of the machine's PostgreSQL
(`private_postgres.py`): what the runners cost, without the shared disk's noise. Otherwise the
database URL defaults to $SVCMIG_BENCH_DATABASE_URL, then postgresql://postgres@127.0.0.1:5432
/postgres when that port answers, then the project's embedded Postgres. The bench creates and
drops its own databases (`bench_*`) and the service roles (`svc<i>_owner`, `svc<i>_app`) it
caused to be created. Nothing here asserts on timings.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import pstats
import re
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg

REPO = Path(__file__).resolve().parent.parent
SVCMIG = Path(sys.executable).parent / "svcmig"
DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_SIZES = "2x10,10x100,50x200"
FIRST_TIMESTAMP = datetime(2026, 1, 5, 9, 0)
NOOP_RUNS = 3
PYTHON_EVERY = 10  # every 10th revision of a service is a Python revision
SERVICE_ROLE_RE = re.compile(r"svc\d+_(owner|app)")

BASELINE_RUNNER = '''\
"""Seed-style runner: one query for what ran, then each pending file in filename order, one
transaction each with its ledger insert."""
import sys
from pathlib import Path

import psycopg

root, url = Path(sys.argv[1]), sys.argv[2]
files = sorted(root.glob("services/*/migrations/*.sql"), key=lambda p: p.name)
applied = 0
with psycopg.connect(url, autocommit=True) as conn:
    conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations "
                 "(name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())")
    done = {row[0] for row in conn.execute("SELECT name FROM schema_migrations")}
    for path in files:
        if path.name in done:
            continue
        up = path.read_text(encoding="utf-8").split("-- migrate:down")[0]
        with conn.transaction():
            conn.execute(up)
            conn.execute("INSERT INTO schema_migrations (name) VALUES (%s)", (path.name,))
        applied += 1
print(f"applied {applied} revision(s)")
'''


@dataclass(frozen=True)
class Size:
    services: int
    revisions: int  # per service

    @property
    def label(self) -> str:
        return f"{self.services}x{self.revisions}"

    @property
    def total(self) -> int:
        return self.services * self.revisions


def parse_sizes(text: str) -> list[Size]:
    sizes = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)x(\d+)\s*", part)
        if not match or int(match[1]) < 1 or int(match[2]) < 1:
            raise argparse.ArgumentTypeError(f"size {part!r}: use SERVICESxREVISIONS, e.g. 10x100")
        sizes.append(Size(int(match[1]), int(match[2])))
    return sizes


# --- generating a project ---------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One generated revision. `added` is set for a Python revision: (table, column) it adds
    with `op.add_column`; `up`/`down` are then its SQL equivalent, for the baseline."""

    slug: str
    up: str
    down: str
    added: tuple[str, str] | None = None


def service_steps(service: str, count: int) -> list[Step]:
    """Small realistic DDL: a new table every 5 revisions, columns added, indexes on them."""
    steps: list[Step] = []
    table, column = "", "name"
    for j in range(count):
        if j % PYTHON_EVERY == PYTHON_EVERY - 1:
            column = f"note_{j}"
            steps.append(Step(f"add_{column}", f"ALTER TABLE {table} ADD COLUMN {column} text;",
                              f"ALTER TABLE {table} DROP COLUMN {column};", (table, column)))
        elif j % 5 == 0:
            table, column = f"{service}_item_{j}", "name"
            steps.append(Step(
                f"create_item_{j}",
                f"CREATE TABLE {table} (\n"
                "    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,\n"
                "    name text NOT NULL,\n"
                "    created_at timestamptz NOT NULL DEFAULT now()\n);",
                f"DROP TABLE {table};"))
        elif j % 5 == 3:
            index = f"{table}_{column}_idx"
            steps.append(Step(f"index_{column}_{j}", f"CREATE INDEX {index} ON {table} ({column});",
                              f"DROP INDEX {index};"))
        else:
            column = f"attr_{j}"
            steps.append(Step(
                f"add_{column}",
                f"ALTER TABLE {table} ADD COLUMN {column} integer NOT NULL DEFAULT 0;",
                f"ALTER TABLE {table} DROP COLUMN {column};"))
    return steps


def sql_text(step: Step) -> str:
    return (f"-- Generated by bench/bench_migrate.py.\n-- migrate:up\n{step.up}\n\n"
            f"-- migrate:down\n{step.down}\n")


def python_text(step: Step, rev_id: str, previous: str | None, service: str) -> str:
    assert step.added is not None
    table, column = step.added
    labels = (service,) if previous is None else None
    return f'''"""{step.slug} (generated by bench/bench_migrate.py)"""

import sqlalchemy as sa
from alembic import op

revision = "{rev_id}"
down_revision = {previous!r}
branch_labels = {labels!r}
depends_on = None
phase = "expand"


def upgrade() -> None:
    op.add_column("{table}", sa.Column("{column}", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("{table}", "{column}")
'''


def alembic_ini(services: list[str]) -> str:
    text = (REPO / "alembic.ini").read_text(encoding="utf-8")
    locations = " ".join(f"%(here)s/services/{name}/migrations" for name in services)
    return re.sub(r"^version_locations\s*=.*$", f"version_locations = {locations}", text,
                  flags=re.M)


def generate(size: Size, svcmig_root: Path, baseline_root: Path) -> None:
    """The svcmig project, and the baseline's all-SQL copy of the same history."""
    names = [f"svc{i}" for i in range(size.services)]
    svcmig_root.mkdir(parents=True)
    (svcmig_root / "alembic.ini").write_text(alembic_ini(names), encoding="utf-8")
    for name in names:
        folders = [root / "services" / name / "migrations" for root in (svcmig_root, baseline_root)]
        for folder in folders:
            folder.mkdir(parents=True)
        previous: str | None = None
        for j, step in enumerate(service_steps(name, size.revisions)):
            stamp = (FIRST_TIMESTAMP + timedelta(minutes=j)).strftime("%Y-%m-%dT%H%M")
            rev_id = f"{name}_{stamp.replace('-', '').replace('T', '')}"
            stem = f"{stamp}__{name}__{step.slug}"
            if step.added is None:
                (folders[0] / f"{stem}.sql").write_text(sql_text(step), encoding="utf-8")
            else:
                (folders[0] / f"{stem}.py").write_text(
                    python_text(step, rev_id, previous, name), encoding="utf-8")
            (folders[1] / f"{stem}.sql").write_text(sql_text(step), encoding="utf-8")
            previous = rev_id


# --- running and measuring --------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    seconds: float
    max_rss_kb: int


def timed(command: list[str], cwd: Path, env: dict[str, str], log: Path) -> Run:
    """Wall time and peak RSS of one subprocess (its own rusage, via wait4)."""
    with log.open("wb") as out:
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        tail = log.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{shlex.join(command)} exited {process.returncode}:\n{tail}")
    return Run(seconds, usage.ru_maxrss)


def database_url(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def choose_url(explicit: str | None) -> str:
    url = explicit or os.environ.get("SVCMIG_BENCH_DATABASE_URL")
    if url:
        return url
    if port_open("127.0.0.1", 5432):
        return DEFAULT_URL
    from migrations_runtime.dev.embedded import embedded_url

    return embedded_url(REPO)


@dataclass(frozen=True)
class Result:
    size: Size
    svcmig_full: float
    svcmig_noop: float
    svcmig_noop_rss_kb: int
    svcmig_manifest_noop: float
    baseline_full: float
    baseline_noop: float

    def row(self) -> str:
        def ms(full: float, noop: float) -> float:
            return (full - noop) * 1000 / self.size.total

        svcmig_ms = ms(self.svcmig_full, self.svcmig_noop)
        baseline_ms = ms(self.baseline_full, self.baseline_noop)
        cells = [
            self.size.label, str(self.size.total),
            f"{self.svcmig_full:.2f}", f"{self.baseline_full:.2f}",
            f"{self.svcmig_noop:.3f}", f"{self.baseline_noop:.3f}",
            f"{svcmig_ms:.2f}", f"{baseline_ms:.2f}", f"{svcmig_ms / baseline_ms:.2f}",
            f"{self.svcmig_noop_rss_kb / 1024:.0f}", f"{self.svcmig_manifest_noop:.3f}",
            f"{self.svcmig_manifest_noop / self.baseline_noop:.2f}",
        ]
        return "| " + " | ".join(cells) + " |"


TABLE_HEADER = (
    "| size | revisions | svcmig full apply (s) | baseline full apply (s) | svcmig no-op (s) "
    "| baseline no-op (s) | svcmig ms/revision | baseline ms/revision | ratio "
    "| svcmig no-op peak RSS (MiB) | svcmig no-op from manifest (s) | ratio to baseline no-op |\n"
    "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
)


class Bench:
    def __init__(self, admin_url: str, workdir: Path) -> None:
        self.admin_url = admin_url
        self.workdir = workdir
        # Both runners import their modules from bytecode, as an installed package does on a
        # developer's machine or in a Lambda bundle (a sandbox may set PYTHONDONTWRITEBYTECODE).
        self.env = {k: v for k, v in os.environ.items()
                    if k not in ("DATABASE_URL", "PYTHONDONTWRITEBYTECODE")}

    def admin(self) -> psycopg.Connection:
        return psycopg.connect(self.admin_url, autocommit=True)

    def fresh_database(self, name: str) -> str:
        with self.admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        return database_url(self.admin_url, name)

    def drop_databases(self, names: list[str]) -> None:
        with self.admin() as conn:
            for name in names:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def existing_roles(self) -> set[str]:
        with self.admin() as conn:
            return {row[0] for row in conn.execute("SELECT rolname FROM pg_roles")}

    def drop_roles(self, roles: list[str]) -> None:
        """The cluster-wide service roles svcmig created for the bench, once its databases are
        gone (a role that still owns something elsewhere is left alone)."""
        with self.admin() as conn:
            for role in roles:
                try:
                    conn.execute(f'DROP ROLE IF EXISTS "{role}"')
                except psycopg.errors.DependentObjectsStillExist:
                    print(f"note: role {role} still owns objects; left in place", file=sys.stderr)

    def count(self, url: str, table: str) -> int:
        with psycopg.connect(url) as conn:
            row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
            return int(row[0]) if row else 0

    def svcmig_command(self, url: str) -> list[str]:
        return [str(SVCMIG), "migrate", "--database-url", url]

    def measure(self, size: Size, profile: bool, runs: int) -> Result:
        """`runs` rounds, svcmig and the baseline interleaved in each (a fresh database each,
        full apply then the no-ops), so a slow moment of a shared machine hits both; medians."""
        folder = self.workdir / size.label
        svcmig_root, baseline_root = folder / "svcmig", folder / "baseline"
        generate(size, svcmig_root, baseline_root)
        runner = folder / "baseline_runner.py"
        runner.write_text(BASELINE_RUNNER, encoding="utf-8")
        env = {**self.env, "SVCMIG_PROJECT_ROOT": str(svcmig_root)}
        manifest = svcmig_root / "migrations.manifest.json"
        timed([str(SVCMIG), "manifest", "--output", str(manifest)], svcmig_root, env,
              folder / "manifest.log")
        roles_before = self.existing_roles()
        found: dict[str, list[Run]] = {key: [] for key in (
            "svcmig_full", "svcmig_noop", "manifest_noop", "baseline_full", "baseline_noop")}
        databases: list[str] = []
        try:
            for round_ in range(runs):
                names = [f"bench_svcmig_{size.label}_{round_}",
                         f"bench_baseline_{size.label}_{round_}"]
                databases += names
                svc_url, base_url = (self.fresh_database(name) for name in names)
                command = self.svcmig_command(svc_url)
                base_command = [sys.executable, str(runner), str(baseline_root), base_url]
                svc_log, base_log = folder / "svcmig.log", folder / "baseline.log"
                found["svcmig_full"].append(timed(command, svcmig_root, env, svc_log))
                found["baseline_full"].append(timed(base_command, baseline_root, self.env,
                                                    base_log))
                for _ in range(NOOP_RUNS):
                    found["svcmig_noop"].append(timed(command, svcmig_root, env, svc_log))
                    found["manifest_noop"].append(timed(
                        [*command, "--manifest", str(manifest)], svcmig_root, env, svc_log))
                    found["baseline_noop"].append(timed(base_command, baseline_root, self.env,
                                                        base_log))
                for url, table in ((svc_url, "svcmig.schema_migrations"),
                                   (base_url, "schema_migrations")):
                    applied = self.count(url, table)
                    if applied != size.total:
                        raise RuntimeError(f"{table} recorded {applied} of {size.total}")
                self.drop_databases(names)
            if profile:
                url = self.fresh_database(f"bench_profile_{size.label}")
                databases.append(f"bench_profile_{size.label}")
                timed(self.svcmig_command(url), svcmig_root, env, folder / "profile.log")
                self.profile_noop(self.svcmig_command(url), svcmig_root, env)
        finally:
            self.drop_databases(databases)
            new_roles = self.existing_roles() - roles_before
            self.drop_roles(sorted(r for r in new_roles if SERVICE_ROLE_RE.fullmatch(r)))

        def median(key: str) -> float:
            return statistics.median(r.seconds for r in found[key])

        return Result(
            size=size,
            svcmig_full=median("svcmig_full"),
            svcmig_noop=median("svcmig_noop"),
            svcmig_noop_rss_kb=max(r.max_rss_kb for r in found["svcmig_noop"]),
            svcmig_manifest_noop=median("manifest_noop"),
            baseline_full=median("baseline_full"),
            baseline_noop=median("baseline_noop"),
        )

    def profile_noop(self, command: list[str], cwd: Path, env: dict[str, str]) -> None:
        """Where a no-op's time goes: interpreter start, imports (-X importtime), and the rest
        (cProfile of the command, run in-process-style via `-m cProfile`)."""
        python = sys.executable
        args = command[1:]
        bare = statistics.median(
            timed([python, "-c", "pass"], cwd, env, cwd / "bare.log").seconds for _ in range(3))
        imports_log = cwd / "importtime.log"
        timed([python, "-X", "importtime", "-m", "migrations_runtime.cli", *args], cwd, env,
              imports_log)
        top_level: list[tuple[int, str]] = []
        for line in imports_log.read_text().splitlines():
            match = re.match(r"import time:\s+\d+ \|\s+(\d+) \| (\S.*)$", line)
            if match:  # no leading spaces in the name: imported at top level
                top_level.append((int(match[1]), match[2]))
        imports_s = sum(us for us, _ in top_level) / 1e6
        print(f"\n### No-op profile ({cwd.parent.name})\n")
        print(f"- interpreter start (`python -c pass`): {bare:.3f} s")
        print(f"- imports (sum of top-level `-X importtime` cumulative): {imports_s:.3f} s")
        for us, name in sorted(top_level, reverse=True)[:8]:
            print(f"  - {name}: {us / 1000:.0f} ms")
        stats_file = cwd / "noop.prof"
        timed([python, "-m", "cProfile", "-o", str(stats_file), "-m", "migrations_runtime.cli",
               *args], cwd, env, cwd / "cprofile.log")
        out = io.StringIO()
        stats = pstats.Stats(str(stats_file), stream=out)
        stats.sort_stats("cumulative").print_stats(r"migrations_runtime|psycopg/connection", 25)
        print("- cProfile, cumulative, svcmig and connection functions:\n")
        print("```")
        print("\n".join(line for line in out.getvalue().splitlines()
                        if re.match(r"\s*(ncalls|\d)", line)))
        print("```")


def environment(admin_url: str, argv: list[str]) -> str:
    with psycopg.connect(admin_url) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    server = row[0] if row else "?"
    versions = ", ".join(f"{name} {metadata.version(name)}"
                         for name in ("alembic", "sqlalchemy", "psycopg", "pglast"))
    command = shlex.join([".venv/bin/python", "bench/bench_migrate.py", *argv])
    return "\n".join([
        f"- command: `{command}`",
        f"- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {len(os.sched_getaffinity(0))} CPUs (`nproc`), {platform.platform()}",
        f"- Python {platform.python_version()}; {versions}",
        f"- PostgreSQL server {server}",
    ])


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", type=parse_sizes, default=parse_sizes(DEFAULT_SIZES),
                        help=f"comma-separated SERVICESxREVISIONS (default {DEFAULT_SIZES})")
    parser.add_argument("--database-url", default=None,
                        help="admin URL; default $SVCMIG_BENCH_DATABASE_URL, then "
                        f"{DEFAULT_URL} if it answers, then the embedded Postgres")
    parser.add_argument("--profile", action="store_true",
                        help="also profile the largest size's svcmig no-op")
    parser.add_argument("--runs", type=int, default=3,
                        help="rounds per size, svcmig and baseline interleaved (default 3)")
    parser.add_argument("--private-server", action="store_true",
                        help="run on a private in-memory cluster of the machine's PostgreSQL "
                        "(fsync off): what the runners cost, without the disk's noise")
    args = parser.parse_args(argv)
    if args.private_server:
        from private_postgres import private_postgres  # bench/ is on sys.path when run

        with private_postgres(durable=False) as url:
            run_all(args, argv, url, note="private in-memory cluster (fsync, synchronous_commit "
                    "and full_page_writes off)")
        return
    run_all(args, argv, choose_url(args.database_url))


def run_all(args: argparse.Namespace, argv: list[str], admin_url: str, note: str = "") -> None:
    largest = max(args.sizes, key=lambda s: s.total)
    # warm the file cache and write bytecode for what a run imports (Alembic and SQLAlchemy
    # only load when a Python revision runs)
    warm_env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run([sys.executable, "-c", "import migrations_runtime.cli.deploy, "
                    "migrations_runtime.engine.apply, sqlalchemy, alembic.operations, pglast"],
                   check=True, capture_output=True, env=warm_env)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_migrate_") as tmp:
        bench = Bench(admin_url, Path(tmp))
        for size in args.sizes:
            print(f"measuring {size.label} ...", file=sys.stderr, flush=True)
            results.append(bench.measure(size, args.profile and size == largest, args.runs))
    print()
    print(environment(admin_url, argv) + (f", {note}" if note else ""))
    print()
    print(TABLE_HEADER)
    for result in results:
        print(result.row())
    print("\nms/revision = (full apply − no-op) / revisions; every figure is the median of "
          f"{args.runs} rounds ({NOOP_RUNS} no-ops each), svcmig and baseline interleaved.")


if __name__ == "__main__":
    main()
