"""Beside step 4 of the flow: the ways out of a refused plan, each explicit and recorded in the
ledger:

- `baseline`: a team adopting svcmig on a database whose schema already exists marks revisions
  as applied without running them;
- `repair --applied` / `--rolled-back`: settle a dirty non-transactional revision after checking
  the database by hand;
- `repair --accept-checksum`: record the current file after a cosmetic edit of an applied one;
- `stamp`: what stock `alembic stamp` means, in ledger terms.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import psycopg

from . import ledger
from .database import connect
from .errors import SvcmigError, UsageProblem
from .lock import migrator_lock
from .plan import up_to
from .validate import Graph, build_graph

RepairAction = Literal["applied", "rolled-back", "accept-checksum"]


def baseline(url: str, root: Path, targets: list[str],
             lock_wait_seconds: float = 60.0) -> list[str]:
    """Mark each target revision and everything before it in its service as `baselined`.

    `targets` are revision ids or service names (meaning the service's code head). The service's
    existing tables, views and sequences are handed to `<service>_owner`. Refuses a
    service that already has ledger rows: baselining is for adoption, not for skipping work."""
    graph = build_graph(root)
    conn = connect(url)
    marked: list[str] = []
    try:
        with migrator_lock(conn, lock_wait_seconds):
            targets = targets or _alembic_version_targets(conn, graph)
            chains = [graph.upto(target) for target in targets]
            for target, found in zip(targets, chains, strict=True):
                if found is None:  # before anything is written
                    raise UsageProblem(f"baseline target {target!r} is neither a service nor a "
                                       "revision id; `svcmig status` lists both")
            ledger.bootstrap(conn, graph.services)
            state = ledger.read_state(conn)
            for upto in chains:
                assert upto is not None
                head = upto[-1]
                if any(row.service == head.service for row in state.ledger.values()):
                    raise SvcmigError(
                        f"service {head.service!r} already has applied revisions; baseline only a "
                        "database svcmig has never migrated")
                service = next(s for s in graph.services if s.name == head.service)
                with conn.transaction():
                    ledger.adopt_relations(conn, service)
                    for revision in upto:
                        ledger.record(conn, revision, "baselined", None)
                marked.extend(r.id for r in upto)
    finally:
        conn.close()
    return marked


def _alembic_version_targets(conn: psycopg.Connection, graph: Graph) -> list[str]:
    """The targets a database stock Alembic migrated implies: each revision in its version
    table, and for each service what those depend on (Alembic leaves a head that another head
    depends on out of the table), the newest per service."""
    rows = ledger.stock_alembic_versions(conn)
    if not rows:
        raise SvcmigError(f"no TARGETS given and no version rows in {ledger.STOCK_VERSION_TABLE} "
                          "(a plain table with a text version_num column) to adopt: name the "
                          "revisions (or services) the database is at")
    unknown = sorted(r for r in rows if r not in graph.revisions)
    if unknown:
        raise SvcmigError(f"{ledger.STOCK_VERSION_TABLE} has revisions this code does not know: "
                          f"{', '.join(unknown)}; check out the code the database was "
                          "migrated with, or name TARGETS")
    newest: dict[str, str] = {}
    for row in rows:
        for rev_id in up_to(graph, row):
            service = graph.revisions[rev_id].service
            newest[service] = max(newest.get(service, rev_id), rev_id)
    return sorted(newest.values())


def repair(url: str, root: Path, revision_id: str, action: RepairAction,
           lock_wait_seconds: float = 60.0) -> str:
    """Settle one ledger row; returns a sentence saying what was done."""
    graph = build_graph(root)
    conn = connect(url)
    try:
        with migrator_lock(conn, lock_wait_seconds):
            row = ledger.read_row(conn, revision_id)
            if row is None:
                raise UsageProblem(f"revision {revision_id} has no ledger row; nothing to "
                                   "repair (`svcmig status` lists the revisions and anomalies)")
            revision = graph.revisions.get(revision_id)
            if revision is None:
                raise UsageProblem(f"revision {revision_id} is not in the code; restore its file "
                                   "before repairing it")
            with conn.transaction():
                if action == "accept-checksum":
                    ledger.record(conn, revision, row.state, row.duration_ms)
                    return f"{revision_id}: checksum updated to {revision.checksum[:12]}"
                if row.state != "dirty":
                    raise SvcmigError(f"revision {revision_id} is {row.state}, not dirty; "
                                      "--applied/--rolled-back settle dirty revisions only")
                if action == "applied":
                    ledger.record(conn, revision, "applied", row.duration_ms)
                    return f"{revision_id}: marked applied"
                ledger.forget(conn, revision_id)
                return f"{revision_id}: marked not applied; the next migrate runs it again"
    finally:
        conn.close()



def stamp_sql(graph: Graph, service: str, target: str | None,
              forget_later: bool = True) -> list[str]:
    """What `alembic stamp` means in ledger terms: `target` becomes the service's head without
    running anything. It and every revision before it in the service are applied (rows that are
    missing or dirty become `baselined`; applied ones stay), every revision after it is not
    (unless not `forget_later`: a service stamped only because another depends on it keeps
    what it has beyond). `target` None stamps the service to base. Statements only, so
    `alembic stamp --sql` can print them; they read nothing."""
    kept = {r.id for r in graph.upto(target) or ()} if target is not None else set()
    found = []
    for revision in graph.chains.get(service, ()):
        if revision.id in kept:
            found.append(ledger.record_sql(revision, "baselined", None, replace_state="dirty"))
        elif forget_later:
            found.append(ledger.forget_sql(revision.id))
    return found
