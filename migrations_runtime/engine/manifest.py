"""Steps 1–3 of the flow done at build time: a manifest of the validated graph, every revision's
metadata and checksum in one JSON file, so the deploy-time migrator plans (and answers "nothing
to do") without reading, parsing or importing every migration file. Pending revisions are still
read from disk, and their checksum must match the manifest's, so a stale manifest is refused
instead of trusted."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .discover import Service
from .errors import ProjectError
from .load import Revision
from .validate import Graph, build_graph

MANIFEST_VERSION = 1
MANIFEST_NAME = "migrations.manifest.json"


def manifest_data(graph: Graph) -> dict[str, Any]:
    revisions = []
    for revision in graph.ordered():
        entry = asdict(revision)
        entry["path"] = revision.file
        revisions.append(entry)
    return {"version": MANIFEST_VERSION, "services": [s.name for s in graph.services],
            "chains": {name: [r.id for r in chain] for name, chain in graph.chains.items()},
            "revisions": revisions}


def write_manifest(root: Path, path: Path) -> Graph:
    """Validate the project and write its manifest; returns the graph it describes."""
    graph = build_graph(root)
    path.write_text(json.dumps(manifest_data(graph), indent=1, sort_keys=True) + "\n")
    return graph


def load_manifest(path: Path, root: Path) -> Graph:
    """The graph as it was at build time; revision paths resolve under `root`."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ProjectError(f"{path}: cannot read the migrations manifest ({err}); rebuild it "
                           "with `svcmig manifest`") from err
    if data.get("version") != MANIFEST_VERSION:
        raise ProjectError(f"{path}: manifest version {data.get('version')!r}, expected "
                           f"{MANIFEST_VERSION}; rebuild it with `svcmig manifest`")
    services = tuple(Service(name, root / "services" / name) for name in data["services"])
    revisions: dict[str, Revision] = {}
    for entry in data["revisions"]:
        fields = {**entry, "path": root / entry["path"],
                  "depends_on": tuple(entry["depends_on"]),
                  "branch_labels": tuple(entry["branch_labels"])}
        revisions[entry["id"]] = Revision(**fields)
    chains = {name: tuple(revisions[i] for i in ids) for name, ids in data["chains"].items()}
    return Graph(root, services, chains, revisions)
