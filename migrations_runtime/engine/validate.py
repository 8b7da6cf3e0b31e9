"""Step 3 of the flow: check the loaded revisions form one linear branch per service, and build
the `Graph` the planner works on.

Each problem is one line naming the file and what to do; all problems are collected, not just
the first, so a CI run shows everything at once.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from .backfill import backfill_files, backfill_name
from .discover import Service, discover_services
from .errors import MigrationFileError, ProjectError, SvcmigError
from .load import FILENAME_RE, Revision, load_service


class ChainSummary(NamedTuple):
    """A service's chain in brief: what `ledger.SUMMARY_SQL` reads back from a ledger that
    holds exactly its revisions (`revisions`, how many, and `digest`), and its last revision
    (`head`)."""

    revisions: int
    digest: str
    head: str


def chain_digest(pairs: Iterable[tuple[str, str]]) -> str:
    """md5 of `id:checksum` for each (revision id, checksum), by id, comma-separated: what
    `ledger.SUMMARY_SQL` computes over a service's settled ledger rows."""
    text = ",".join(f"{rev_id}:{digest}" for rev_id, digest in sorted(pairs))
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


@dataclass(frozen=True)
class Graph:
    """Every service's revisions in order, plus the cross-service dependencies."""

    root: Path
    services: tuple[Service, ...]
    chains: dict[str, tuple[Revision, ...]]  # service → revisions, root first
    revisions: dict[str, Revision]  # id → revision

    def head(self, service: str) -> Revision | None:
        chain = self.chains.get(service, ())
        return chain[-1] if chain else None

    def summary(self, service: str) -> ChainSummary | None:
        """The service's chain in brief (None when it has no revisions)."""
        chain = self.chains.get(service, ())
        if not chain:
            return None
        return ChainSummary(len(chain), chain_digest((r.id, r.checksum) for r in chain),
                            chain[-1].id)

    def upto(self, target: str) -> tuple[Revision, ...] | None:
        """`target` (a revision id, or a service name meaning its code head) and everything
        before it in its service; None when it is neither."""
        head = self.head(target) if target in self.chains else self.revisions.get(target)
        if head is None:
            return None
        chain = self.chains[head.service]
        return chain[: chain.index(head) + 1]

    def ordered(self) -> list[Revision]:
        """All revisions in an order that honours parents and `depends_on`, oldest first."""
        return topological_order(self.revisions.values(), self.revisions)


class GraphError(ProjectError):
    """One or more validation problems, each on its own line."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


def parents(revision: Revision) -> tuple[str, ...]:
    own = (revision.down_revision,) if revision.down_revision else ()
    return own + revision.depends_on


def topological_order(selected: Iterable[Revision], known: dict[str, Revision]) -> list[Revision]:
    """Kahn's algorithm over `selected`. A service's revisions come back to back wherever the
    dependencies allow (each service runs in its own session, so fewer switches between
    services is less work for the server); otherwise the earliest (timestamp, service) comes
    next, so the order is stable. Parents outside `selected` count as already satisfied."""
    chosen = {r.id: r for r in selected}
    waiting: dict[str, int] = {}
    children: dict[str, list[str]] = {}
    for rev in chosen.values():
        inside = [p for p in parents(rev) if p in chosen]
        waiting[rev.id] = len(inside)
        for parent in inside:
            children.setdefault(parent, []).append(rev.id)
    ready = [(r.timestamp, r.service, r.id) for r in chosen.values() if waiting[r.id] == 0]
    heapq.heapify(ready)
    ready_by_service: dict[str, list[tuple[str, str, str]]] = {}
    for entry in ready:
        heapq.heappush(ready_by_service.setdefault(entry[1], []), entry)
    ordered: list[Revision] = []
    done: set[str] = set()
    current: str | None = None
    while len(ordered) < len(chosen):
        same = ready_by_service.get(current or "", [])
        if same:
            entry = heapq.heappop(same)
        else:
            while ready and ready[0][2] in done:
                heapq.heappop(ready)
            if not ready:
                break
            entry = heapq.heappop(ready)
            heapq.heappop(ready_by_service[entry[1]])  # the service's earliest: this one
        rev_id = entry[2]
        done.add(rev_id)
        ordered.append(chosen[rev_id])
        current = chosen[rev_id].service
        for child in children.get(rev_id, ()):
            waiting[child] -= 1
            if waiting[child] == 0:
                item = (chosen[child].timestamp, chosen[child].service, child)
                heapq.heappush(ready, item)
                heapq.heappush(ready_by_service.setdefault(item[1], []), item)
    if len(ordered) != len(chosen):
        stuck = sorted(set(chosen) - done)
        raise GraphError([f"dependency cycle among revisions {', '.join(stuck)}; "
                          "remove one of their depends-on entries"])
    return ordered


def _chain(service: Service, revisions: list[Revision],
           problems: list[str]) -> tuple[Revision, ...]:
    """Order one service's revisions by following down_revision from its root; report anything
    that is not a single line (two roots, two heads, a parent in another service)."""
    by_id = {r.id: r for r in revisions}
    roots = [r for r in revisions if r.down_revision is None]
    children: dict[str, list[Revision]] = {}
    for rev in revisions:
        if rev.down_revision is None:
            continue
        if rev.down_revision not in by_id:
            problems.append(
                f"{rev.path}: down_revision {rev.down_revision!r} is not a revision of service "
                f"{service.name!r}; set it to the previous revision of this service")
            continue
        children.setdefault(rev.down_revision, []).append(rev)
    if len(roots) != 1:
        names = ", ".join(str(r.path.name) for r in roots) or "none"
        if revisions:
            problems.append(
                f"{service.migrations_dir}: service {service.name!r} must have exactly one root "
                f"revision (down_revision None), found {names}")
        return ()
    root = roots[0]
    if service.name not in root.branch_labels:
        problems.append(
            f"{root.path}: the root revision of {service.name!r} must carry its branch label; "
            f"set branch_labels = ({service.name!r},)")
    for rev in revisions:
        if rev is not root and rev.branch_labels:
            problems.append(
                f"{rev.path}: only the root revision carries a branch label; remove branch_labels")
    chain = [root]
    while True:
        nexts = children.get(chain[-1].id, [])
        if len(nexts) > 1:
            files = ", ".join(r.path.name for r in nexts)
            problems.append(
                f"{service.migrations_dir}: service {service.name!r} has two heads: {files} both "
                f"follow {chain[-1].id}; set the newer one's down_revision to the other's id so "
                "the service stays one line")
            return tuple(chain)
        if not nexts:
            break
        chain.append(nexts[0])
    in_chain = {r.id for r in chain}
    unreached = [r for r in revisions if r.id not in in_chain]
    for rev in unreached:
        problems.append(f"{rev.path}: not reachable from the root of {service.name!r}; "
                        "check its down_revision")
    return tuple(chain)


def build_graph(root: Path, services: list[Service] | None = None) -> Graph:
    """Discover, load and validate the whole project; raise `GraphError` listing every problem."""
    services = discover_services(root) if services is None else services
    problems: list[str] = []
    chains: dict[str, tuple[Revision, ...]] = {}
    revisions: dict[str, Revision] = {}
    unloaded: set[str] = set()  # services a bad file stopped loading: their ids are unknown
    for service in services:
        try:
            loaded = load_service(service)
        except MigrationFileError as err:
            problems.append(str(err))
            unloaded.add(service.name)
            continue
        first_file: dict[str, Revision] = {}
        duplicated = False
        for rev in loaded:
            if rev.id in first_file:
                duplicated = True
                problems.append(
                    f"{rev.path}: revision id {rev.id} is also {first_file[rev.id].path.name} (two "
                    "files with the same timestamp in one service); give one a later minute")
                continue
            first_file[rev.id] = rev
            revisions[rev.id] = rev
        if not duplicated:
            chains[service.name] = _chain(service, loaded, problems)
    for rev in revisions.values():
        for target in rev.depends_on:
            if target not in revisions:
                if target.rsplit("_", 1)[0] not in unloaded:  # else its service's error says it
                    problems.append(
                        f"{rev.path}: depends-on {target!r} is not a known revision; use an id "
                        "like users_202611251405 (svcmig status lists them)")
            elif revisions[target].service == rev.service:
                problems.append(
                    f"{rev.path}: depends-on {target!r} is in the same service; order within a "
                    "service comes from the file names, remove it")
    _check_required_backfills(services, revisions, problems)
    if problems:
        raise GraphError(problems)
    graph = Graph(root, tuple(services), chains, revisions)
    graph.ordered()  # raises on a dependency cycle
    return graph


def _check_required_backfills(services: list[Service], revisions: dict[str, Revision],
                              problems: list[str]) -> None:
    """Every `requires-backfill` names a backfill file of the project. Only the names are
    looked at: reading the files is the runner's and the guard's (a no-op run stays cheap)."""
    wanted = [rev for rev in revisions.values() if rev.requires_backfill]
    if not wanted:
        return
    known = set()
    for service in services:
        for path in backfill_files(service):
            match = FILENAME_RE.match(path.name)
            if match:
                known.add(backfill_name(match["service"], match["slug"]))
    for rev in wanted:
        for name in rev.requires_backfill:
            if name not in known:
                owner, _, slug = name.partition(".")
                problems.append(
                    f"{rev.path}: requires backfill {name!r}, but services/{owner}/backfills/ "
                    f"has no file YYYY-MM-DDThhmm__{owner}__{slug}.sql (or .py); add it or "
                    "fix the name (`svcmig backfill status` lists them)")


def check_alembic_ini(graph: Graph) -> None:
    """Every service must be a version location in alembic.ini, or stock `alembic` misses it."""
    from configparser import ConfigParser

    ini = ConfigParser(defaults={"here": str(graph.root)})
    ini.read(graph.root / "alembic.ini")
    locations = ini.get("alembic", "version_locations", fallback="").split()
    listed = {(graph.root / loc).resolve() for loc in locations}
    missing = [s for s in graph.services if s.migrations_dir.resolve() not in listed]
    if missing:
        raise SvcmigError(
            f"{graph.root / 'alembic.ini'}: version_locations lacks "
            + ", ".join(f"%(here)s/services/{s.name}/migrations" for s in missing)
            + "; add them (space-separated) so stock alembic sees every service")
