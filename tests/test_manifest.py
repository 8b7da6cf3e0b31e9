"""The build-time manifest: the same graph without reading every file; stale ones refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from migrations_runtime.engine.apply import migrate
from migrations_runtime.engine.errors import PlanError, ProjectError
from migrations_runtime.engine.manifest import load_manifest, write_manifest
from migrations_runtime.engine.validate import build_graph
from tests.conftest import revision_count, run_cli


def test_manifest_round_trips_the_graph(project: Path, tmp_path: Path) -> None:
    written = write_manifest(project, tmp_path / "m.json")
    loaded = load_manifest(tmp_path / "m.json", project)
    assert loaded.revisions == written.revisions == build_graph(project).revisions
    assert loaded.chains == written.chains
    assert [r.id for r in loaded.ordered()] == [r.id for r in written.ordered()]


def test_migrate_from_manifest(project: Path, database_url: str) -> None:
    done = run_cli(project, "manifest")
    assert done.returncode == 0, done.stderr
    manifest = project / "migrations.manifest.json"
    chains = json.loads(manifest.read_text())["chains"]
    assert sum(len(chain) for chain in chains.values()) == revision_count(project)
    applied = run_cli(project, "migrate", "--json", "--manifest", str(manifest),
                      database_url=database_url)
    assert applied.returncode == 0, applied.stderr
    assert len(json.loads(applied.stdout)["applied"]) == revision_count(project)
    again = run_cli(project, "migrate", "--json", "--manifest", str(manifest),
                    database_url=database_url)
    assert json.loads(again.stdout)["applied"] == []


def test_stale_manifest_is_refused(project: Path, database_url: str, tmp_path: Path) -> None:
    graph = write_manifest(project, tmp_path / "m.json")
    first = graph.ordered()[0]
    first.path.write_text(first.path.read_text().replace("email", "mail"))
    with pytest.raises(PlanError, match="changed after it was loaded"):
        migrate(database_url, project, graph=load_manifest(tmp_path / "m.json", project),
                log=lambda _: None)


def test_unreadable_manifest(project: Path, tmp_path: Path) -> None:
    (tmp_path / "m.json").write_text("{not json")
    with pytest.raises(ProjectError, match="rebuild it with `svcmig manifest`"):
        load_manifest(tmp_path / "m.json", project)
