"""Steps 1–3 of the flow done at build time: a manifest of the validated graph, every revision's
metadata and checksum in one JSON file, so the deploy-time migrator plans (and answers "nothing
to do") without reading, parsing or importing every migration file. Pending revisions are still
read from disk, and their checksum must match the manifest's, so a stale manifest is refused
instead of trusted."""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

from .discover import Service
from .errors import ProjectError, UsageProblem
from .load import Revision, revision_from, revision_id
from .validate import ChainSummary, Graph, build_graph

MANIFEST_VERSION = 4
MANIFEST_NAME = "migrations.manifest.json"
# Each service's chain, root first, one short array per revision with these fields; the rest is
# implied by a validated chain (id and file from service, timestamp and slug; down_revision is
# the previous entry; the root's branch label is the service name), so a no-op deploy parses
# and builds as little as it can. Each service's summary (`ChainSummary`: how many, their
# digest, the head), what a no-op compares with the ledger, is written beside its chain: derived
# from it at build time instead of at every deploy (12 ms at 10,000 revisions). The chains are
# one JSON text inside the manifest, decoded only when a revision is needed: a no-op reads the
# summaries alone (at 10,000 revisions: 2 ms to parse instead of 6, and none of the garbage
# collector's full passes over 100,000 new lists, up to 40 ms).
FIELDS = ("timestamp", "slug", "kind", "depends_on", "branch_labels", "phase", "transactional",
          "reversible", "requires_backfill", "checksum")


def manifest_data(graph: Graph) -> dict[str, Any]:
    def entry(revision: Revision) -> list[Any]:
        default = (revision.service,) if revision.down_revision is None else ()
        return [revision.timestamp, revision.slug, revision.kind, list(revision.depends_on),
                None if revision.branch_labels == default else list(revision.branch_labels),
                revision.phase, revision.transactional, revision.reversible,
                list(revision.requires_backfill), revision.checksum]

    services = [s.name for s in graph.services]
    chains = json.dumps({name: [entry(r) for r in chain] for name, chain in graph.chains.items()},
                        separators=(",", ":"), sort_keys=True)
    summaries = {name: list(summary) for name in graph.chains
                 if (summary := graph.summary(name)) is not None}
    return {"version": MANIFEST_VERSION, "fields": list(FIELDS), "services": services,
            "chains": chains, "summaries": summaries,
            "digest": _digest(services, chains, summaries)}


def _digest(services: Any, chains: str, summaries: Any) -> str:
    """md5 of what the manifest says (for equality, not secrecy): a no-op trusts the summaries,
    so summaries that are not their chains' (a manifest edited, or put together from two
    builds) would hide pending revisions; a changed digest refuses the manifest instead."""
    said = json.dumps([services, summaries], separators=(",", ":"), sort_keys=True) + chains
    return hashlib.md5(said.encode(), usedforsecurity=False).hexdigest()


def write_manifest(root: Path, path: Path) -> Graph:
    """Validate the project and write its manifest; returns the graph it describes."""
    graph = build_graph(root)
    text = json.dumps(manifest_data(graph), separators=(",", ":"), sort_keys=True) + "\n"
    try:
        path.write_text(text)
    except OSError as err:
        raise UsageProblem(f"cannot write the manifest {path}: {err.strerror}; pass an "
                           "--output in a folder that exists") from err
    return graph


def load_manifest(path: Path, root: Path) -> Graph:
    """The graph as it was at build time; revision paths resolve under `root`. Its revisions
    are built when something first asks for them: a deploy with nothing to do only needs each
    service's summary (`ManifestGraph.summary`)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ProjectError(f"{path}: cannot read the migrations manifest ({err}); rebuild it "
                           "with `svcmig manifest`") from err
    version = data.get("version") if isinstance(data, dict) else None
    if version != MANIFEST_VERSION:
        raise ProjectError(f"{path}: manifest version {version!r}, expected "
                           f"{MANIFEST_VERSION}; rebuild it with `svcmig manifest`")
    names, chains, summaries = data.get("services"), data.get("chains"), data.get("summaries")
    if data.get("fields") != list(FIELDS) or not isinstance(chains, str) or \
            not isinstance(names, list) or not all(isinstance(n, str) for n in names) or \
            not isinstance(summaries, dict) or not all(
                isinstance(v, list) and len(v) == 3 and isinstance(v[0], int)
                and all(isinstance(x, str) for x in v[1:]) for v in summaries.values()) or \
            data.get("digest") != _digest(names, chains, summaries):
        raise ProjectError(f"{path}: the migrations manifest was changed or is incomplete "
                           "(its contents do not match its digest); rebuild it with "
                           "`svcmig manifest`")
    services = tuple(Service(name, root / "services" / name) for name in names)
    return ManifestGraph(root, services, chains, summaries)


class ManifestGraph(Graph):
    """A `Graph` read from a manifest: `chains` and `revisions` are built on first use (about
    40 ms at 10,000 revisions), `summary` is the manifest's, without building them."""

    _chains_json: str
    _summaries: dict[str, list[Any]]

    def __init__(self, root: Path, services: tuple[Service, ...], chains_json: str,
                 summaries: dict[str, list[Any]]) -> None:
        object.__setattr__(self, "root", root)
        object.__setattr__(self, "services", services)
        object.__setattr__(self, "_chains_json", chains_json)
        object.__setattr__(self, "_summaries", summaries)

    @functools.cached_property
    def chains(self) -> dict[str, tuple[Revision, ...]]:  # type: ignore[override]
        try:
            entries: dict[str, list[list[Any]]] = json.loads(self._chains_json)
            return {service: self._chain(service, chain) for service, chain in entries.items()}
        except (ValueError, TypeError, AttributeError) as err:
            raise ProjectError(f"the migrations manifest's chains cannot be read ({err}); "
                               "rebuild it with `svcmig manifest`") from err

    @functools.cached_property
    def revisions(self) -> dict[str, Revision]:  # type: ignore[override]
        return {r.id: r for chain in self.chains.values() for r in chain}

    def summary(self, service: str) -> ChainSummary | None:
        found = self._summaries.get(service)
        return ChainSummary(*found) if found else None

    def _chain(self, service: str, entries: list[list[Any]]) -> tuple[Revision, ...]:
        chain = []
        previous: str | None = None
        for (stamp, slug, kind, depends_on, labels, phase, transactional, reversible, backfills,
             digest) in entries:
            rev_id = revision_id(service, stamp)
            ext = "sql" if kind == "sql" else "py"
            chain.append(revision_from(
                rev_id, service, self.root,
                f"services/{service}/migrations/{stamp}__{service}__{slug}.{ext}", stamp, slug,
                kind, previous, tuple(depends_on),
                tuple(labels) if labels is not None else (() if previous else (service,)),
                phase, transactional, reversible, tuple(backfills), digest))
            previous = rev_id
        return tuple(chain)
