"""The build-time manifest: the same graph without reading every file; stale ones refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pytest

from migrations_runtime.engine.apply import migrate, read_plan
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
    chains = json.loads(json.loads(manifest.read_text())["chains"])
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


def edited(data: dict[str, Any], change: str, older: dict[str, Any]) -> Any:
    """`data`, a manifest, with one `change` a hand, a merge or an older svcmig could make."""
    if change == "version 3 (no summaries)":
        data.update(version=3, chains=json.loads(data["chains"]))
        del data["summaries"]
    elif change == "no summaries":
        del data["summaries"]
    elif change == "summaries from an older build":  # they would hide the new revision
        data["summaries"] = older["summaries"]
    elif change == "a summary of the wrong shape":
        data["summaries"]["users"] = [1, 2]
    elif change == "chains as a list":
        data["chains"] = json.loads(data["chains"])
    elif change == "chains cut short":
        data["chains"] = data["chains"][:-40]
    elif change == "fields edited":
        data["fields"] = data["fields"][:-1]
    elif change == "not an object":
        return [data]
    return data


@pytest.mark.parametrize("change", [
    "version 3 (no summaries)", "no summaries", "summaries from an older build",
    "a summary of the wrong shape", "chains as a list", "chains cut short", "fields edited",
    "not an object"])
def test_a_manifest_of_another_shape_is_refused(project: Path, tmp_path: Path,
                                                change: str) -> None:
    """The kind: a manifest an older svcmig wrote, or one edited, put together from two
    builds or cut short, is refused in one line with the command that rebuilds it, not read
    as something else (summaries not their chains' would plan nothing for a pending revision;
    a breaker's finding)."""
    write_manifest(project, tmp_path / "old.json")
    older = json.loads((tmp_path / "old.json").read_text())
    chain = sorted((project / "services/users/migrations").glob("*.sql"))
    chain[-1].with_name("2099-01-01T0000__users__later.sql").write_text(
        "ALTER TABLE users ADD COLUMN later text;\n-- migrate:down\n"
        "ALTER TABLE users DROP COLUMN later;\n")
    write_manifest(project, tmp_path / "m.json")
    data = edited(json.loads((tmp_path / "m.json").read_text()), change, older)
    (tmp_path / "m.json").write_text(json.dumps(data))
    with pytest.raises(ProjectError, match="rebuild it with `svcmig manifest`"):
        assert load_manifest(tmp_path / "m.json", project).chains is None  # raises first


# Kind: a deploy with nothing to do answers from each service's summary (count, digest of ids
# and checksums, head) without building a revision; the answer must be the one the full graph
# gives, and anything that differs from the ledger must still be seen.

def test_the_manifests_summaries_are_the_graphs(project: Path, tmp_path: Path) -> None:
    graph = write_manifest(project, tmp_path / "m.json")
    loaded = load_manifest(tmp_path / "m.json", project)
    names = [s.name for s in graph.services]
    assert [loaded.summary(n) for n in names] == [graph.summary(n) for n in names]
    assert all(loaded.summary(n) is not None for n in names)
    assert "chains" not in vars(loaded)  # the summaries did not build the revisions


def test_a_no_op_from_the_manifest_builds_no_revision(project: Path, database_url: str,
                                                      tmp_path: Path) -> None:
    write_manifest(project, tmp_path / "m.json")
    full = migrate(database_url, project, log=lambda _: None)
    assert full.results
    loaded = load_manifest(tmp_path / "m.json", project)
    noop = migrate(database_url, project, graph=loaded, log=lambda _: None)
    assert noop.results == () and "chains" not in vars(loaded)
    from_files = migrate(database_url, project, log=lambda _: None)
    assert noop.plan.services == from_files.plan.services
    assert all(s.pending == () and s.applied_head == s.code_head for s in noop.plan.services)


@pytest.mark.parametrize("change", ["edited", "dirty", "missing_row", "extra_row"])
def test_a_ledger_that_differs_from_the_manifest_is_planned_in_full(
        project: Path, database_url: str, tmp_path: Path, change: str) -> None:
    """The summary check only short-cuts an exact match; every other ledger gets the full plan
    (and its anomalies or pending revisions)."""
    write_manifest(project, tmp_path / "m.json")
    migrate(database_url, project, log=lambda _: None)
    statement = {
        "edited": "UPDATE svcmig.schema_migrations SET checksum = repeat('0', 64) "
                  "WHERE revision = (SELECT min(revision) FROM svcmig.schema_migrations)",
        "dirty": "UPDATE svcmig.schema_migrations SET state = 'dirty' "
                 "WHERE revision = (SELECT max(revision) FROM svcmig.schema_migrations)",
        "missing_row": "DELETE FROM svcmig.schema_migrations "
                       "WHERE revision = (SELECT max(revision) FROM svcmig.schema_migrations)",
        "extra_row": "INSERT INTO svcmig.schema_migrations (revision, service, file, checksum, "
                     "phase, state, applied_by) SELECT service || '_209901010000', service, "
                     "'gone.sql', checksum, phase, state, applied_by "
                     "FROM svcmig.schema_migrations LIMIT 1",
    }[change]
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(statement)
    loaded = load_manifest(tmp_path / "m.json", project)
    if change in ("edited", "dirty"):
        with pytest.raises(PlanError, match="edited" if change == "edited" else "dirty"):
            migrate(database_url, project, graph=loaded, log=lambda _: None)
    elif change == "missing_row":  # its table exists, so rerunning it would fail: plan only
        plan = read_plan(database_url, project, graph=loaded)
        assert [len(s.pending) for s in plan.services].count(1) == 1
    else:  # a revision of newer code: "ahead", not fatal
        plan = migrate(database_url, project, graph=loaded, log=lambda _: None).plan
        assert any(a.kind == "ahead" for a in plan.anomalies)
    assert "chains" in vars(loaded)
