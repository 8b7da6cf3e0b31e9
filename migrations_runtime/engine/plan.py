"""Step 4 of the flow: graph + database state → the ordered steps of one phase, and anomalies.

Planning reads no migration file beyond what loading already did and touches the database only
through the `DatabaseState` it is given, so it is cheap and easy to test.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from typing import Literal

from .errors import UsageProblem
from .ledger import DatabaseState, LedgerRow
from .load import Revision, service_of_revision_id
from .validate import Graph, topological_order

PhaseChoice = Literal["expand", "contract", "all"]
PHASE_CHOICES: tuple[PhaseChoice, ...] = ("expand", "contract", "all")
AnomalyKind = Literal["tampered", "missing", "out_of_order", "dirty", "ahead",
                      "release_boundary", "expand_pending", "blocked", "invalid_revision",
                      "invalid_index", "stock_alembic", "waiting_backfill"]


@dataclass(frozen=True)
class Anomaly:
    kind: AnomalyKind
    service: str
    revision: str
    message: str
    fatal: bool = True

    def as_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "service": self.service, "revision": self.revision,
                "message": self.message, "severity": "error" if self.fatal else "warning"}


@dataclass(frozen=True)
class ServiceStatus:
    service: str
    applied_head: str | None
    code_head: str | None
    pending: tuple[str, ...]

    def as_dict(self) -> dict[str, object]:
        return {"service": self.service, "applied_head": self.applied_head,
                "code_head": self.code_head, "pending": list(self.pending)}


@dataclass(frozen=True)
class Plan:
    phase: PhaseChoice
    steps: tuple[Revision, ...]
    anomalies: tuple[Anomaly, ...]
    services: tuple[ServiceStatus, ...] = field(default=())
    # backfills a revision of this plan requires that need not run: their service is being
    # created from nothing in this run, so no row predates the revisions (`_hold_for_backfills`)
    waived_backfills: tuple[str, ...] = ()

    @property
    def errors(self) -> list[Anomaly]:
        return [a for a in self.anomalies if a.fatal]

    @property
    def warnings(self) -> list[Anomaly]:
        return [a for a in self.anomalies if not a.fatal]

    def with_anomalies(self, extra: list[Anomaly]) -> Plan:
        return replace(self, anomalies=self.anomalies + tuple(extra)) if extra else self


def _ledger_anomalies(graph: Graph, state: DatabaseState) -> list[Anomaly]:
    found: list[Anomaly] = []
    if state.settled:
        return found
    for row in sorted(state.ledger.values(), key=lambda r: r.revision):
        revision = graph.revisions.get(row.revision)
        if revision is None:
            found.append(_unknown_row(graph, row))
            continue
        if row.state == "dirty":
            found.append(Anomaly(
                "dirty", row.service, row.revision,
                f"{revision.path}: revision {row.revision} is dirty: a non-transactional revision "
                "stopped halfway. Check what it left behind (e.g. an INVALID index), fix it by "
                f"hand, then run `svcmig repair {row.revision} --applied` (or --rolled-back)"))
        if row.checksum != revision.checksum:
            found.append(Anomaly(
                "tampered", row.service, row.revision,
                f"{revision.path}: applied revision {row.revision} was edited (checksum "
                f"{row.checksum[:12]} applied, {revision.checksum[:12]} now). Applied migrations "
                "are append-only: revert the edit and put the change in a new revision; if the "
                f"edit is cosmetic, run `svcmig repair {row.revision} --accept-checksum`"))
    return found


def _unknown_row(graph: Graph, row: LedgerRow) -> Anomaly:
    """An applied revision the code does not have: newer than the code's head means the code was
    rolled back (a warning, never a downgrade); otherwise its file was deleted."""
    head = graph.head(row.service)
    parsed = service_of_revision_id(row.revision)
    if head is None or (parsed is not None and parsed[1] > head.timestamp):
        return Anomaly(
            "ahead", row.service, row.revision,
            f"the database has revision {row.revision} ({row.file}) that this code does not know: "
            "the code was rolled back to an older release. Nothing is downgraded; deploy the "
            "newer code to continue", fatal=False)
    return Anomaly(
        "missing", row.service, row.revision,
        f"revision {row.revision} ({row.file}) is applied but its file is gone; migrations are "
        "append-only: restore the file from git")


def _hold_for_backfills(selected: list[Revision], state: DatabaseState, fresh: bool,
                        phase: PhaseChoice, anomalies: list[Anomaly],
                        waived: list[str]) -> list[Revision]:
    """`selected` up to the first revision that requires a backfill that has not finished on
    this database: it and the revisions after it in its service wait (the model: GitLab's
    `ensure_batched_background_migration_is_finished`). A service created from nothing in this
    run has no rows from before its revisions, so its own backfills are not waited for
    (`waived`, recorded as finished by the run). A held expand revision in the expand phase is
    an error: the code about to go live may need it."""
    for index, rev in enumerate(selected):
        unfinished, pending, steps = [], [], []
        for name in rev.requires_backfill:
            progress = state.backfills.get(name)
            if progress is not None and progress.state == "finished":
                continue
            if fresh and name.partition(".")[0] == rev.service and progress is None:
                waived.append(name)
                continue
            pending.append(name)
            unfinished.append(f"{name} ({progress.describe() if progress else 'not started'})")
            steps.append(progress.next_step() if progress else f"`svcmig backfill run {name}`")
        if not unfinished:
            continue
        if not state.backfills_known:  # planned without a database: say so, hold nothing
            anomalies.append(Anomaly(
                "waiting_backfill", rev.service, rev.id,
                f"{rev.path}: revision {rev.id} requires backfill {', '.join(pending)}; "
                "planned without a database, svcmig cannot tell whether it has finished: run "
                "this only once `svcmig backfill status` says finished", fatal=False))
            continue
        later = len(selected) - index - 1
        anomalies.append(Anomaly(
            "waiting_backfill", rev.service, rev.id,
            f"{rev.path}: revision {rev.id} waits for backfill {'; and '.join(unfinished)}"
            + (f"; {later} later revision(s) of {rev.service} wait behind it" if later else "")
            + f". Next: {'; '.join(steps)} (a deploy starts pending backfills once the code is "
            "live; `svcmig backfill status` shows how far they are), then migrate again",
            fatal=phase == "expand" and rev.phase == "expand"))
        return selected[:index]
    return selected


def _service_plan(chain: tuple[Revision, ...], state: DatabaseState, phase: PhaseChoice,
                  anomalies: list[Anomaly]) -> tuple[list[Revision], ServiceStatus | None]:
    if not chain:
        return [], None
    service = chain[0].service
    applied = [r for r in chain if r.id in state.ledger]
    pending = [r for r in chain if r.id not in state.ledger]
    ahead = sorted(a.revision for a in anomalies if a.kind == "ahead" and a.service == service)
    if applied:
        latest = max(applied, key=lambda r: r.timestamp)
        for rev in pending:
            if rev.timestamp < latest.timestamp:
                anomalies.append(Anomaly(
                    "out_of_order", service, rev.id,
                    f"{rev.path}: revision {rev.id} is older than {latest.id}, which is already "
                    "applied, so it would run out of order (stock Alembic would skip it). Give it "
                    f"a timestamp after {latest.timestamp} (rename the file, or recreate it with "
                    "`svcmig revision`)"))
    # With nothing applied yet no code runs against the service, so contract revisions need not
    # wait for a deploy: a fresh database (a new stage, a preview stack) gets all in one phase.
    # Otherwise the pending revisions are releases one after another (expand revisions, then
    # the contract revisions that wait for that release's code): `expand` stops at the first
    # contract revision, `contract` takes the contract revisions at the front, `all` everything,
    # in order, from any state a database was left in.
    fresh = not applied
    boundary = None if fresh else next((r for r in pending if r.phase == "contract"), None)
    if phase == "all" or (phase == "expand" and boundary is None):
        selected = pending
    elif phase == "expand":
        assert boundary is not None
        selected = pending[: pending.index(boundary)]
        later = len(pending) - len(selected) - 1
        anomalies.append(Anomaly(
            "release_boundary", service, boundary.id,
            f"{boundary.path}: {service} stops before contract revision {boundary.id}, which "
            "waits for the code deploy: once the code that no longer needs what it removes is "
            "live, run `svcmig migrate --phase contract`"
            + (f" ({later} later revision(s) wait behind it; `--phase all` applies every "
               "pending revision in order)" if later else ""), fatal=False))
    elif fresh:
        selected = []
    else:
        selected = list(itertools.takewhile(lambda r: r.phase == "contract", pending))
        if not selected and boundary is not None:
            anomalies.append(Anomaly(
                "expand_pending", service, pending[0].id,
                f"{pending[0].path}: expand revision {pending[0].id} is still pending before "
                f"contract revision {boundary.id}; run `svcmig migrate --phase expand` before "
                "the contract phase"))
    status = ServiceStatus(
        service=service,
        applied_head=ahead[-1] if ahead else (applied[-1].id if applied else None),
        code_head=chain[-1].id,
        pending=tuple(r.id for r in pending),
    )
    return selected, status


def stock_alembic(graph: Graph, state: DatabaseState) -> Anomaly | None:
    """Stock Alembic's version table names revisions svcmig's ledger does not hold: stock
    Alembic migrated the database without svcmig, and running the revisions again would fail on
    what they created (or half-apply)."""
    unadopted = [v for v in state.stock_versions
                 if v not in state.ledger or state.ledger[v].state == "dirty"]
    if not unadopted:
        return None
    first = unadopted[0]
    return Anomaly(
        "stock_alembic", graph.revisions[first].service if first in graph.revisions else "",
        first, f"public.alembic_version says {', '.join(unadopted)} applied, and svcmig's "
        "ledger does not: stock Alembic migrated this database without svcmig. Adopt what it "
        "applied with `svcmig baseline` (it reads those rows), then run again")


def releases_behind(graph: Graph, plan: Plan) -> list[str]:
    """After an expand phase: one message per service whose pending revisions are a contract
    revision followed by expand revisions. The code about to go live may need those expand
    revisions, which cannot run before the contract one, which cannot run before the code that
    no longer needs what it removes: no single deploy can bring the service forward safely.
    Either the database lags more than one release, or one release orders a contract revision
    before its own expand revisions; the files cannot tell which."""
    found = []
    for status in plan.services:
        pending = [graph.revisions[rev_id] for rev_id in status.pending]
        later = [r for r in pending[1:] if r.phase == "expand"]
        if pending and pending[0].phase == "contract" and later:
            found.append(
                f"{status.service}: contract revision {pending[0].id} waits for the code "
                f"deploy, and {len(later)} expand revision(s) after it (first {later[0].id}) "
                "would run only after the new code is live. If the stage lags more than one "
                f"release, deploy the release whose code goes with {pending[0].id} first "
                "(each release one at a time), then this one, or apply everything in a "
                "maintenance window with `svcmig migrate --phase all`; if this one release "
                "puts the contract revision before its own expand revisions, give it a later "
                "timestamp (rename the file) or move it to the next release")
    return found


def up_to(graph: Graph, target: str) -> set[str]:
    """The ids of `target` (a revision id, or a service name meaning its code head), the
    revisions before it in its service, and everything those depend on, transitively: what
    `svcmig migrate --target` may apply. Raises `UsageProblem` (exit 2) for an unknown target."""
    chain = graph.upto(target)
    if chain is None:
        raise UsageProblem(f"--target {target}: neither a revision id nor a service of this "
                           "project (see `svcmig status`)")
    wanted: set[str] = set()
    stack = list(chain)
    while stack:
        revision = stack.pop()
        if revision.id not in wanted:
            wanted.add(revision.id)
            for dependency in revision.depends_on:
                stack.extend(graph.upto(dependency) or ())
    return wanted


def make_plan(graph: Graph, state: DatabaseState, phase: PhaseChoice = "all",
              target: str | None = None) -> Plan:
    """What `svcmig migrate --phase <phase> [--target REV]` would run, in order, and what
    stops it. With `target`, only what leads up to it (`up_to`), so a database that lags
    several releases can be moved forward one release at a time."""
    if phase not in PHASE_CHOICES:
        raise ValueError(f"unknown phase {phase!r}; use one of {', '.join(PHASE_CHOICES)}")
    allowed = up_to(graph, target) if target else None
    anomalies = _ledger_anomalies(graph, state)
    selected: list[Revision] = []
    statuses: list[ServiceStatus] = []
    waived: list[str] = []
    for service in graph.services:
        if state.settled:  # every revision is applied: no need to look at one
            summary = graph.summary(service.name)
            if summary is not None:
                statuses.append(ServiceStatus(service.name, summary.head, summary.head, ()))
            continue
        chain = graph.chains.get(service.name, ())
        steps, status = _service_plan(chain, state, phase, anomalies)
        steps = [r for r in steps if allowed is None or r.id in allowed]
        fresh = not any(r.id in state.ledger for r in chain)
        selected.extend(_hold_for_backfills(steps, state, fresh, phase, anomalies, waived))
        if status is not None:
            statuses.append(status)
    chosen = {r.id for r in selected}
    for rev in selected:
        for target in rev.depends_on:
            if target not in state.ledger and target not in chosen:
                anomalies.append(Anomaly(
                    "blocked", rev.service, rev.id,
                    f"{rev.path}: depends on {target}, which is neither applied nor part of the "
                    f"{phase} phase; apply {target} first (is it a contract revision?)"))
    stock = stock_alembic(graph, state)
    if stock is not None:
        anomalies.append(stock)
    for index in state.invalid_indexes:
        anomalies.append(Anomaly(
            "invalid_index", index.schema, index.name,
            f"index {index.schema}.{index.name} on {index.table} is INVALID: a concurrent build "
            "failed (or is running now); it slows every write and serves no read. Drop it with "
            f"DROP INDEX CONCURRENTLY {index.schema}.{index.name}, then apply (or repair) the "
            "revision that creates it", fatal=False))
    ordered = topological_order(selected, graph.revisions) if selected else []
    return Plan(phase, tuple(ordered), tuple(anomalies), tuple(statuses),
                tuple(dict.fromkeys(waived)))
