"""Steps 1–3 of the flow done at build time: a manifest of the validated graph, every revision's
metadata and checksum in one JSON file, so the deploy-time migrator plans (and answers "nothing
to do") without reading, parsing or importing every migration file. Pending revisions are still
read from disk, and their checksum must match the manifest's, so a stale manifest is refused
instead of trusted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .discover import Service
from .errors import ProjectError
from .load import Revision, revision_from, revision_id
from .validate import Graph, build_graph

MANIFEST_VERSION = 2
MANIFEST_NAME = "migrations.manifest.json"
# Each service's chain, root first, one short array per revision with these fields; the rest is
# implied by a validated chain (id and file from service, timestamp and slug; down_revision is
# the previous entry; the root's branch label is the service name), so a no-op deploy parses
# and builds as little as it can.
FIELDS = ("timestamp", "slug", "kind", "depends_on", "branch_labels", "phase", "transactional",
          "reversible", "checksum")


def manifest_data(graph: Graph) -> dict[str, Any]:
    def entry(revision: Revision) -> list[Any]:
        default = (revision.service,) if revision.down_revision is None else ()
        return [revision.timestamp, revision.slug, revision.kind, list(revision.depends_on),
                None if revision.branch_labels == default else list(revision.branch_labels),
                revision.phase, revision.transactional, revision.reversible, revision.checksum]

    return {"version": MANIFEST_VERSION, "fields": list(FIELDS),
            "services": [s.name for s in graph.services],
            "chains": {name: [entry(r) for r in chain] for name, chain in graph.chains.items()}}


def write_manifest(root: Path, path: Path) -> Graph:
    """Validate the project and write its manifest; returns the graph it describes."""
    graph = build_graph(root)
    path.write_text(json.dumps(manifest_data(graph), separators=(",", ":"), sort_keys=True) + "\n")
    return graph


def load_manifest(path: Path, root: Path) -> Graph:
    """The graph as it was at build time; revision paths resolve under `root`."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ProjectError(f"{path}: cannot read the migrations manifest ({err}); rebuild it "
                           "with `svcmig manifest`") from err
    if data.get("version") != MANIFEST_VERSION or data.get("fields") != list(FIELDS):
        raise ProjectError(f"{path}: manifest version {data.get('version')!r}, expected "
                           f"{MANIFEST_VERSION}; rebuild it with `svcmig manifest`")
    services = tuple(Service(name, root / "services" / name) for name in data["services"])
    revisions: dict[str, Revision] = {}
    chains: dict[str, tuple[Revision, ...]] = {}
    for service, entries in data["chains"].items():
        chain = []
        previous: str | None = None
        for stamp, slug, kind, depends_on, labels, phase, transactional, reversible, digest \
                in entries:
            rev_id = revision_id(service, stamp)
            ext = "sql" if kind == "sql" else "py"
            revision = revision_from(
                rev_id, service, root, f"services/{service}/migrations/{stamp}__{service}__{slug}"
                f".{ext}", stamp, slug, kind, previous, tuple(depends_on),
                tuple(labels) if labels is not None else (() if previous else (service,)),
                phase, transactional, reversible, digest)
            revisions[rev_id] = revision
            chain.append(revision)
            previous = rev_id
        chains[service] = tuple(chain)
    return Graph(root, services, chains, revisions)
