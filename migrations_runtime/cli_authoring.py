"""The authoring and verification commands: `new-service`, `revision`, `plan`, `check`,
`graph`. Registered on the `svcmig` group in `cli.py`; like the rest of the CLI they only
adapt arguments and output.

Exit codes: 0 ok; 1 a problem was found (refused plan, failed check, invalid project, two
heads); 2 a usage error (bad arguments, unknown service or revision, a name that is taken or
invalid, a message with no words, a non-empty database for `check --in-place`).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import click

from . import ledger
from .apply import RunSettings, read_plan
from .authoring import UsageProblem, new_revision, new_service
from .check import run_check
from .database import connect, resolve_url
from .discover import find_project_root
from .errors import SvcmigError
from .graph_render import FORMATS, format_for, render
from .ledger import DatabaseState, LedgerRow
from .lock import LOCK_KEY
from .plan import PHASE_CHOICES, Plan, make_plan
from .progress import Progress
from .report import status_text
from .statements import (
    DEFAULT_LOCK_TIMEOUT_MS,
    enter_service_sql,
    leave_service_sql,
    revision_statements,
    service_of,
)
from .validate import Graph, build_graph

EXIT_PROBLEM = 1
EXIT_USAGE = 2


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _run(action: Callable[[], Any]) -> Any:
    """Run `action`, turning svcmig errors into a one-line message and the right exit code."""
    try:
        return action()
    except UsageProblem as err:
        _fail(str(err), EXIT_USAGE)
    except SvcmigError as err:
        _fail(str(err), EXIT_PROBLEM)


def _root() -> Path:
    return _run(find_project_root)  # type: ignore[no-any-return]


def _graph(root: Path) -> Graph:
    return _run(lambda: build_graph(root))  # type: ignore[no-any-return]


def _echo_json(data: object) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")


# --- new-service / revision --------------------------------------------------------------------


@click.command("new-service")
@click.argument("name")
@json_option
def new_service_command(name: str, as_json: bool) -> None:
    """Create services/NAME/ (handler skeleton + root revision) and register its migrations in
    alembic.ini, so `alembic heads`, `svcmig plan` and `svcmig graph` see it at once."""
    root = _root()
    created = _run(lambda: new_service(root, name))
    if as_json:
        _echo_json(created.as_dict(root))
        return
    click.echo(f"created service {name} (root revision {created.revision}):")
    for path in created.files:
        click.echo(f"  {path.relative_to(root)}")
    click.echo(f"next: edit the root revision, then `svcmig revision {name} -m \"...\"`")


@click.command("revision")
@click.argument("service")
@click.option("-m", "--message", required=True, help="What the revision does; names the file.")
@click.option("--sql", is_flag=True, help="A SQL file (-- migrate:up / -- migrate:down) "
              "instead of an Alembic Python revision.")
@click.option("--contract", is_flag=True, help="Contract phase: runs after the new code is "
              "live (drops, renames).")
@click.option("--depends-on", "depends_on", multiple=True, metavar="REV",
              help="A revision (or a service, meaning its head) of another service that must "
              "be applied first. Repeatable.")
@json_option
def revision_command(service: str, message: str, sql: bool, contract: bool,
                     depends_on: tuple[str, ...], as_json: bool) -> None:
    """Create SERVICE's next revision after its head, named
    YYYY-MM-DDThhmm__SERVICE__<slug of MESSAGE>.py (or .sql)."""
    root = _root()
    created = _run(lambda: new_revision(root, service, message, sql=sql, contract=contract,
                                        depends_on=depends_on))
    if as_json:
        _echo_json(created.as_dict(root))
        return
    deps = f", depends on {', '.join(created.depends_on)}" if created.depends_on else ""
    click.echo(f"created {created.revision} ({created.kind}, {created.phase}{deps}): "
               f"{created.files[0].relative_to(root)}")


# --- plan --------------------------------------------------------------------------------------


def offline_state(graph: Graph, applied: Sequence[str]) -> DatabaseState:
    """The state of a database on which `applied` (revision ids, or service names meaning their
    head) and everything before them in their service were applied: planning without a
    database."""
    rows: dict[str, LedgerRow] = {}
    now = datetime.now(UTC)
    for target in applied:
        upto = graph.upto(target)
        if upto is None:
            raise UsageProblem(f"--from {target!r} is neither a revision id nor a service; "
                               "`svcmig plan --offline` lists the revision ids")
        for rev in upto:
            rows[rev.id] = LedgerRow(rev.id, rev.service, rev.file, rev.checksum, rev.phase,
                                     "applied", now, None, "svcmig plan --from")
    heads = frozenset(max((r for r in rows.values() if r.service == s), key=lambda r: r.revision)
                      .revision for s in {r.service for r in rows.values()})
    return DatabaseState(rows, heads)


def _statement(sql: str) -> str:
    return sql.strip().rstrip(";").rstrip() + ";"


def plan_sql(plan: Plan, state: DatabaseState,
             lock_timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS) -> str:
    """The SQL `svcmig migrate` would run for `plan`, in order, as one reviewable script."""
    from .ledger import FRAMEWORK_DDL, service_bootstrap_sql

    out = [f"-- svcmig plan --sql: {len(plan.steps)} revision(s), phase {plan.phase}",
           f"-- svcmig migrate holds the advisory lock {LOCK_KEY} (pg_try_advisory_lock) "
           "throughout and writes a ledger row in each revision's transaction."]
    if not state.ledger:
        out.append("\n-- bootstrap (idempotent): the framework schema")
        out.extend(_statement(sql) for sql in FRAMEWORK_DDL)
    with_rows = {row.service for row in state.ledger.values()}
    for name in sorted({rev.service for rev in plan.steps} - with_rows):
        out.append(f"\n-- bootstrap (idempotent): schema and roles of {name}")
        first = next(rev for rev in plan.steps if rev.service == name)
        out.extend(_statement(sql) for sql in service_bootstrap_sql(service_of(first)))
    for rev in plan.steps:
        service = service_of(rev)
        out.append(f"\n-- {rev.id} ({rev.phase}): {rev.file}")
        if rev.depends_on:
            out.append(f"-- depends on {', '.join(rev.depends_on)}")
        if rev.transactional:
            out.append("BEGIN;")
        else:
            out.append("-- no transaction (migrate:no-transaction / transactional = False)")
        out.extend(_statement(s) for s in enter_service_sql(service, rev.transactional,
                                                           lock_timeout_ms))
        if rev.kind == "sql":
            out.extend(_statement(s.sql) for s in revision_statements(rev, upgrade=True))
        else:
            from .guard.render import render_upgrade

            rendered, _ = render_upgrade(rev.path.read_text(encoding="utf-8"), rev.path)
            out.append(rendered.strip())
        out.extend(_statement(s) for s in leave_service_sql())
        previous = f" (replacing {rev.down_revision})" if rev.down_revision else ""
        out.append(f"-- ledger row for {rev.id}; alembic_version row {rev.id}{previous}")
        if rev.transactional:
            out.append("COMMIT;")
    return "\n".join(out) + "\n"


def _plan_dict(plan: Plan) -> dict[str, object]:
    return {
        "phase": plan.phase,
        "steps": [{"revision": r.id, "service": r.service, "phase": r.phase, "file": r.file,
                   "kind": r.kind, "transactional": r.transactional,
                   "depends_on": list(r.depends_on)} for r in plan.steps],
        "anomalies": [a.as_dict() for a in plan.anomalies],
        "services": [s.as_dict() for s in plan.services],
    }


def _plan_text(plan: Plan, against: str) -> str:
    lines = [f"plan: {len(plan.steps)} revision(s) to apply ({plan.phase} phase) against "
             f"{against}"]
    for number, rev in enumerate(plan.steps, 1):
        deps = f"  after {', '.join(rev.depends_on)}" if rev.depends_on else ""
        lines.append(f"{number:4}. {rev.id:<28} {rev.phase:<8} {rev.file}{deps}")
    lines.append("")
    lines.append(status_text(plan))
    return "\n".join(lines)


@click.command("plan")
@click.option("--phase", type=click.Choice(PHASE_CHOICES), default="all", show_default=True,
              help="expand: before new code goes live; contract: after it; all: both.")
@click.option("--database-url", default=None,
              help="Postgres URL; default: $DATABASE_URL, else the embedded Postgres.")
@click.option("--from", "applied", multiple=True, metavar="REV",
              help="Plan without a database, as if REV (a revision id, or a service meaning "
              "its head) and everything before it were applied. Repeatable.")
@click.option("--offline", is_flag=True,
              help="Plan without a database, against an empty one (implied by --from).")
@click.option("--sql", "as_sql", is_flag=True, help="Print the SQL that would run, in order.")
@json_option
def plan_command(phase: str, database_url: str | None, applied: tuple[str, ...], offline: bool,
                 as_sql: bool, as_json: bool) -> None:
    """What `svcmig migrate` would run, in order, and the anomalies that would stop it.
    Exit 1 when the plan would be refused."""
    root = _root()
    graph = _graph(root)
    if applied or offline:
        state: DatabaseState = _run(lambda: offline_state(graph, applied))
        plan = make_plan(graph, state, phase)  # type: ignore[arg-type]
        against = ("a database at " + ", ".join(applied)) if applied else "an empty database"
    else:
        url = _run(lambda: resolve_url(database_url, root))
        state = _run(lambda: _read_state(url))
        plan = _run(lambda: read_plan(url, root, phase, graph))  # type: ignore[arg-type]
        against = "the database"
    sql = _run(lambda: plan_sql(plan, state)) if as_sql else None
    if as_json:
        data = _plan_dict(plan)
        if sql is not None:
            data["sql"] = sql
        _echo_json(data)
    elif sql is not None:
        click.echo(sql, nl=False)
        for anomaly in plan.anomalies:
            click.echo(f"{'error' if anomaly.fatal else 'warning'}: {anomaly.message}", err=True)
    else:
        click.echo(_plan_text(plan, against))
    if plan.errors:
        sys.exit(EXIT_PROBLEM)


def _read_state(url: str) -> DatabaseState:
    conn = connect(url)
    try:
        return ledger.read_state(conn)
    finally:
        conn.close()


# --- check -------------------------------------------------------------------------------------


@click.command("check")
@click.option("--database-url", default=None,
              help="A server to use, through any database on it (e.g. .../postgres): check "
              "creates svcmig_check_<random> there and drops it. Default: the project's "
              "embedded Postgres. $DATABASE_URL is never used.")
@click.option("--in-place", is_flag=True,
              help="Run in the --database-url database itself; it must be empty, and is left "
              "at heads.")
@click.option("--strict", is_flag=True,
              help="Fail (exit 1) when a service has irreversible revisions.")
@click.option("--quiet", is_flag=True, help="No progress on stderr.")
@json_option
def check_command(database_url: str | None, in_place: bool, strict: bool, quiet: bool,
                  as_json: bool) -> None:
    """Upgrade heads on a throwaway database, then for every service downgrade to its base
    and upgrade back one revision at a time, comparing catalog snapshots at every step. Also
    checks one head per service and that every depends_on was honoured. Exit 1 on any
    problem; irreversible services are reported, and fail only with --strict."""
    root = _root()
    progress = Progress(enabled=not quiet)
    report = _run(lambda: run_check(root, database_url, in_place, progress, RunSettings()))
    progress.finish()
    if as_json:
        _echo_json(report.as_dict(strict))
    else:
        click.echo(report.text(strict))
    if not report.passed(strict):
        sys.exit(EXIT_PROBLEM)


# --- graph -------------------------------------------------------------------------------------


@click.command("graph")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default=None,
              help="Default: from --output's extension (.mmd .dot .svg .png), else mermaid.")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write to FILE instead of stdout (required for png).")
@click.option("--database-url", default=None,
              help="Mark revisions applied/pending in this database (only when given).")
@json_option
def graph_command(fmt: str | None, output: Path | None, database_url: str | None,
                  as_json: bool) -> None:
    """Draw the revision graph: a lane per service, revisions in order, cross-service
    depends_on as dashed edges, applied/pending when --database-url is given."""
    root = _root()
    chosen = format_for(output, fmt)
    if chosen is None:
        _fail(f"cannot tell the format from {output}; pass --format "
              f"{'|'.join(FORMATS)}", EXIT_USAGE)
    if chosen == "png" and output is None and not as_json:
        _fail("png is binary: pass --output FILE.png (or --format svg for stdout)", EXIT_USAGE)
    graph = _graph(root)
    if not graph.services:
        _fail(f"no services under {root / 'services'}; create one with "
              "`svcmig new-service NAME`", EXIT_PROBLEM)
    state = _run(lambda: _read_state(database_url)) if database_url else None
    if as_json:
        from .graph_render import layout

        data: dict[str, object] = layout(graph, state).as_dict()
        if output is not None:
            output.write_bytes(render(graph, chosen, state))
            data["output"] = str(output)
            data["format"] = chosen
        _echo_json(data)
        return
    content = render(graph, chosen, state, title=f"{root.name}: svcmig revisions")
    if output is None:
        click.echo(content.decode(), nl=False)
    else:
        output.write_bytes(content)
        click.echo(f"wrote {output} ({chosen}, {len(graph.revisions)} revisions, "
                   f"{len(graph.services)} services)", err=True)


COMMANDS = (new_service_command, revision_command, plan_command, check_command, graph_command)
