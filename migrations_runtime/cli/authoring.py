"""The authoring and verification commands: `new-service`, `revision`, `plan`, `check`,
`graph`. Like the rest of the CLI they only adapt arguments and output; the work is in
`migrations_runtime.tools`.

Exit codes: 0 ok; 1 a problem was found (refused plan, failed check, invalid project, two
heads); 2 a usage error (bad arguments, unknown service or revision, a name that is taken or
invalid, a message with no words, a non-empty database for `check --in-place`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..dev.embedded import resolve_url
from ..engine import ledger
from ..engine.apply import RunSettings, read_plan
from ..engine.database import connect
from ..engine.ledger import DatabaseState
from ..engine.plan import PHASE_CHOICES, Plan, make_plan
from ..engine.preflight import preflight
from ..engine.report import status_text
from ..engine.validate import Graph, build_graph
from ..guard.findings import Severity
from ..tools.authoring import new_revision, new_service
from ..tools.check import run_check
from ..tools.graph import FORMATS, format_for, render
from ..tools.plan_script import offline_state, plan_sql
from ..tools.progress import Progress
from ..tools.trace import trace_all
from .common import (
    EXIT_PROBLEM,
    EXIT_USAGE,
    echo_json,
    fail,
    json_option,
    project_root,
    run,
    write_output,
)


def _graph(root: Path) -> Graph:
    return run(lambda: build_graph(root))  # type: ignore[no-any-return]


# --- new-service / revision --------------------------------------------------------------------


@click.command("new-service")
@click.argument("name")
@json_option
def new_service_command(name: str, as_json: bool) -> None:
    """Create services/NAME/ (handler skeleton + root revision) and register its migrations in
    alembic.ini, so `alembic heads`, `svcmig plan` and `svcmig graph` see it at once."""
    root = project_root()
    created = run(lambda: new_service(root, name))
    if as_json:
        echo_json(created.as_dict(root))
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
@click.option("--no-transaction", "no_transaction", is_flag=True,
              help="Each statement commits on its own (for CREATE INDEX CONCURRENTLY and the "
              "like); the revision is marked dirty if it stops halfway.")
@click.option("--depends-on", "depends_on", multiple=True, metavar="REV",
              help="A revision (or a service, meaning its head) of another service that must "
              "be applied first. Repeatable.")
@json_option
def revision_command(service: str, message: str, sql: bool, contract: bool,
                     no_transaction: bool, depends_on: tuple[str, ...], as_json: bool) -> None:
    """Create SERVICE's next revision after its head, named
    YYYY-MM-DDThhmm__SERVICE__<slug of MESSAGE>.py (or .sql)."""
    root = project_root()
    created = run(lambda: new_revision(root, service, message, sql=sql, contract=contract,
                                        depends_on=depends_on, no_transaction=no_transaction))
    if as_json:
        echo_json(created.as_dict(root))
        return
    deps = f", depends on {', '.join(created.depends_on)}" if created.depends_on else ""
    click.echo(f"created {created.revision} ({created.kind}, {created.phase}{deps}): "
               f"{created.files[0].relative_to(root)}")


# --- plan --------------------------------------------------------------------------------------


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
    root = project_root()
    graph = _graph(root)
    if applied or offline:
        state: DatabaseState = run(lambda: offline_state(graph, applied))
        plan = preflight(graph, make_plan(graph, state, phase))[0]  # type: ignore[arg-type]
        against = ("a database at " + ", ".join(applied)) if applied else "an empty database"
    else:
        url = run(lambda: resolve_url(database_url, root))
        state = run(lambda: _read_state(url))
        plan = run(lambda: read_plan(url, root, phase, graph))  # type: ignore[arg-type]
        against = "the database"
    sql = run(lambda: plan_sql(plan, state)) if as_sql else None
    if as_json:
        data = _plan_dict(plan)
        if sql is not None:
            data["sql"] = sql
        echo_json(data)
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
              help="Fail (exit 1) when a service has irreversible revisions, or a revision holds "
              "a strong lock on a pre-existing table long or across work on rows.")
@click.option("--quiet", is_flag=True, help="No progress on stderr.")
@click.option("--trace/--no-trace", default=True, show_default=True,
              help="Also trace every revision (svcmig lint --trace) on another throwaway "
              "database of the same server; not with --in-place.")
@json_option
def check_command(database_url: str | None, in_place: bool, strict: bool, quiet: bool,
                  trace: bool, as_json: bool) -> None:
    """Upgrade heads on a throwaway database, then for every service downgrade to its base
    and upgrade back one revision at a time, comparing catalog snapshots at every step. Also
    checks one head per service and that every depends_on was honoured, and traces every
    revision's locks, rewrites and scans. Exit 1 on any problem; irreversible services,
    strong-lock holds and revisions that could not be traced are reported, and fail only with
    --strict."""
    root = project_root()
    progress = Progress(enabled=not quiet)
    report = run(lambda: run_check(root, database_url, in_place, progress, RunSettings()))
    progress.finish()
    if trace and not in_place and not report.all_problems:
        traced = run(lambda: trace_all(root, database_url))
        for finding in traced.findings:
            where = f"{finding.path.relative_to(root)}:{finding.line}"
            line = f"{where}: {finding.rule.name}: {finding.message}"
            (report.problems if finding.severity is Severity.ERROR else report.warnings
             ).append(line)
    if as_json:
        echo_json(report.as_dict(strict))
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
    root = project_root()
    chosen = format_for(output, fmt)
    if chosen is None:
        fail(f"cannot tell the format from {output}; pass --format "
              f"{'|'.join(FORMATS)}", EXIT_USAGE)
    if chosen == "png" and output is None and not as_json:
        fail("png is binary: pass --output FILE.png (or --format svg for stdout)", EXIT_USAGE)
    graph = _graph(root)
    if not graph.services:
        fail(f"no services under {root / 'services'}; create one with "
              "`svcmig new-service NAME`", EXIT_PROBLEM)
    state = run(lambda: _read_state(database_url)) if database_url else None
    if as_json:
        from ..tools.graph import layout

        data: dict[str, object] = layout(graph, state).as_dict()
        if output is not None:
            write_output(output, render(graph, chosen, state))
            data["output"] = str(output)
            data["format"] = chosen
        echo_json(data)
        return
    content = render(graph, chosen, state, title=f"{root.name}: svcmig revisions")
    if output is None:
        click.echo(content.decode(), nl=False)
    else:
        write_output(output, content)
        click.echo(f"wrote {output} ({chosen}, {len(graph.revisions)} revisions, "
                   f"{len(graph.services)} services)", err=True)
