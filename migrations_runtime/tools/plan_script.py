"""`svcmig plan` without a database (`--from`, `--offline`) and as a script (`--sql`): the state
a database would be in, and the SQL `svcmig migrate` would run for a plan, in order."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from ..engine.errors import UsageProblem
from ..engine.ledger import (
    FRAMEWORK_DDL,
    DatabaseState,
    LedgerRow,
    service_bootstrap_sql,
    version_rows,
)
from ..engine.lock import LOCK_KEY
from ..engine.plan import Plan
from ..engine.statements import (
    SCRIPT_LOCK_TIMEOUT_MS,
    enter_service_sql,
    revision_statements,
    service_of,
)
from ..engine.validate import Graph


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
    return DatabaseState(rows, version_rows(rows.values()), backfills_known=False)


def _statement(sql: str) -> str:
    return sql.strip().rstrip(";").rstrip() + ";"


def plan_sql(plan: Plan, state: DatabaseState,
             lock_timeout_ms: int = SCRIPT_LOCK_TIMEOUT_MS) -> str:
    """The SQL `svcmig migrate` would run for `plan`, in order, as one reviewable script."""
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
        if rev.requires_backfill:
            out.append(f"-- requires backfill {', '.join(rev.requires_backfill)}: run this only "
                       "once it has finished (`svcmig backfill status`)")
        out.append(f"-- in a session logged in as {service.owner_role} (the service's own role)")
        if rev.transactional:
            out.append("BEGIN;")
        else:
            out.append("-- no transaction (migrate:no-transaction / transactional = False)")
        out.extend(_statement(s) for s in enter_service_sql(service, rev.transactional,
                                                           lock_timeout_ms))
        if rev.kind == "sql":
            out.extend(_statement(s.sql) for s in revision_statements(rev, upgrade=True))
        else:
            from ..guard.render import render_upgrade

            rendered, _ = render_upgrade(rev.path.read_text(encoding="utf-8"), rev.path)
            out.append(rendered.strip())
        previous = f" (replacing {rev.down_revision})" if rev.down_revision else ""
        out.append(f"-- ledger row for {rev.id}; alembic_version row {rev.id}{previous}")
        if rev.transactional:
            out.append("COMMIT;")
    return "\n".join(out) + "\n"
