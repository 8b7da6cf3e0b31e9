"""The deploy-time migrator with CloudFormation-shaped events, against real Postgres, with
Secrets Manager and ECS from moto: each request goes the way a deploy does (on_event starts the
worker task, the worker runs with that task's overrides, is_complete answers)."""

from __future__ import annotations

import contextlib
import io
import json
import multiprocessing
import os
import shutil
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from infra.migrator import handler as migrator
from infra.migrator import task as worker_task
from infra.migrator.digest import migrations_digest
from migrations_runtime.engine.manifest import MANIFEST_NAME, ManifestGraph, write_manifest
from tests.conftest import code_heads, query

moto = pytest.importorskip("moto")
from moto.moto_api import state_manager  # noqa: E402


@pytest.fixture
def aws(project: Path, database_url: str,
        monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """A master secret pointing at the test database and one secret per service's app role."""
    import boto3

    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with moto.mock_aws():
        client = boto3.client("secretsmanager")
        info = psycopg.conninfo.conninfo_to_dict(database_url)
        master = client.create_secret(Name="master", SecretString=json.dumps({
            "host": info.get("host", "localhost"), "port": int(str(info.get("port", 5432))),
            "username": info.get("user", "postgres"), "password": info.get("password", ""),
            "dbname": info["dbname"], "engine": "postgres"}))["ARN"]
        apps = {name: client.create_secret(Name=f"{name}_app", SecretString=json.dumps({
            "username": f"{name}_app", "password": f"pw-{name}-secret"}))["ARN"]
            for name in ("orders", "users")}
        monkeypatch.setenv("SVCMIG_WORKER", json.dumps(worker_cluster()))
        monkeypatch.setenv("SVCMIG_MASTER_SECRET_ARN", master)
        monkeypatch.setenv("SVCMIG_APP_SECRETS", json.dumps(apps))
        monkeypatch.setenv("SVCMIG_DB_SSLMODE", "prefer")
        monkeypatch.delenv("SVCMIG_DB_HOST", raising=False)
        yield {"master": master, **apps}
    state_manager.unset_transition("ecs::task")


def worker_cluster(budget_seconds: int = 1800) -> dict[str, Any]:
    """An ECS cluster and the worker's task definition under moto, as `SVCMIG_WORKER` names
    them. Tasks stay RUNNING until stopped (moto would otherwise move them on each read). The
    task definition is not awsvpc, so moto starts tasks without its (slow) EC2 backend; the
    network configuration the migrator passes is the synthesized one's (tests/infra/test_synth)."""
    import boto3

    state_manager.set_transition("ecs::task", {"progression": "manual", "times": 10**9})
    ecs = boto3.client("ecs")
    cluster = ecs.create_cluster(clusterName="workers")["cluster"]["clusterArn"]
    task = ecs.register_task_definition(
        family="worker", containerDefinitions=[{"name": "worker", "image": "svcmig-worker",
                                                "memory": 2048}])["taskDefinition"]
    return {"cluster": cluster, "task_definition": task["taskDefinitionArn"],
            "container": "worker", "subnets": ["subnet-isolated"], "security_groups": [],
            "budget_seconds": budget_seconds}


def budget_spent(monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs started from now on have their deadline two minutes in the past."""
    monkeypatch.setenv("SVCMIG_WORKER", json.dumps({
        **json.loads(os.environ["SVCMIG_WORKER"]), "budget_seconds": -120}))


def task_overrides(run: dict[str, Any]) -> dict[str, str]:
    """The environment ECS gives the worker's container: the overrides on_event asked for."""
    import boto3

    [task] = boto3.client("ecs").describe_tasks(cluster=run["cluster"],
                                                tasks=[run["task"]])["tasks"]
    [container] = task["overrides"]["containerOverrides"]
    return {e["name"]: e["value"] for e in container["environment"]}


def end_task(run: dict[str, Any], reason: str = "Essential container in task exited") -> None:
    import boto3

    boto3.client("ecs").stop_task(cluster=run["cluster"], task=run["task"], reason=reason)


def deploy(body: dict[str, Any]) -> dict[str, Any]:
    """One CloudFormation request, the way a deploy runs it: on_event (which starts the worker
    task), the worker with that task's environment (in-process, as its container would run
    it), its task ending, then is_complete. Returns the custom resource's answer
    (PhysicalResourceId, Data); raises MigrationError with the reason CloudFormation shows."""
    started = migrator.handler(body)
    run = started.get(migrator.RUN_KEY)
    if run:
        assert migrator.is_complete_handler({**body, **started}) == {"IsComplete": False}
        worker_task.main(task_overrides(run))
        end_task(run)
    done = migrator.is_complete_handler({**body, **started})
    assert done["IsComplete"] is True
    return {"PhysicalResourceId": started["PhysicalResourceId"],
            "Data": {**started.get("Data", {}), **done.get("Data", {})}}


def digest(project: Path) -> str:
    """The project's MigrationsHash, as a synth computes it now."""
    return migrations_digest(project)


def event(request: str, phase: str, heads: dict[str, str], old_heads: dict[str, str] | None = None,
          physical_id: str | None = None, new_hash: str | None = None,
          old_hash: str = "h" * 64) -> dict[str, Any]:
    """What the CDK Provider framework hands its on_event handler. `new_hash`: the new
    properties' MigrationsHash, by default the project's files as they are now (a deploy of
    them); `old_hash`: the old properties'."""
    if new_hash is None:
        new_hash = digest(Path(os.environ["SVCMIG_PROJECT_ROOT"]))
    props = {"ServiceToken": "arn:aws:lambda:eu-west-1:1:function:provider", "Phase": phase,
             "MigrationsHash": new_hash, "CodeHeads": heads, "Stage": "test"}
    body: dict[str, Any] = {
        "RequestType": request, "ServiceToken": props["ServiceToken"],
        "ResponseURL": "https://example.invalid", "StackId": "arn:aws:cloudformation:stack/x",
        "RequestId": str(uuid.uuid4()), "LogicalResourceId": f"Migrations{phase.title()}",
        "ResourceType": "Custom::SvcmigMigrations", "ResourceProperties": props}
    if physical_id:
        body["PhysicalResourceId"] = physical_id
    if old_heads is not None:
        body["OldResourceProperties"] = {**props, "CodeHeads": old_heads,
                                         "MigrationsHash": old_hash}
    return body


def ledger_count(url: str) -> int:
    return int(query(url, "SELECT count(*) FROM svcmig.schema_migrations")[0][0])


def test_create_applies_then_retry_is_idempotent(project: Path, database_url: str,
                                                  aws: dict[str, str]) -> None:
    heads = code_heads(project)
    first = deploy(event("Create", "expand", heads))
    assert first["PhysicalResourceId"] == "svcmig-test-expand"
    assert first["Data"]["Applied"] > 0
    applied = ledger_count(database_url)
    assert applied == first["Data"]["Applied"]
    again = deploy(event("Create", "expand", heads))  # CloudFormation retries
    assert again["Data"]["Applied"] == 0
    contract = deploy(event("Create", "contract", heads))
    assert ledger_count(database_url) == applied + contract["Data"]["Applied"]
    assert contract["Data"]["Pending"] == 0


def test_expand_gives_app_roles_their_secret_password(project: Path, database_url: str,
                                                       aws: dict[str, str]) -> None:
    deploy(event("Create", "expand", code_heads(project)))
    rows = query(database_url, "SELECT rolname, starts_with(rolpassword, 'SCRAM-SHA-256$') "
                 "FROM pg_authid WHERE rolname IN ('users_app', 'orders_app') ORDER BY 1")
    assert rows == [("orders_app", True), ("users_app", True)]


def test_a_deploy_never_writes_over_a_rotated_password(project: Path, database_url: str,
                                                        aws: dict[str, str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The migrator writes an app role's password once; then the secret's rotation is the only
    writer (a deploy during a rotation would put the old password back)."""
    heads = code_heads(project)
    assert deploy(event("Create", "expand", heads))
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("ALTER ROLE users_app PASSWORD 'rotated-by-secrets-manager'")
    before = query(database_url, "SELECT rolpassword FROM pg_authid WHERE rolname = 'users_app'")
    deploy(event("Update", "expand", heads, heads, "svcmig-test-expand"))
    after = query(database_url, "SELECT rolpassword FROM pg_authid WHERE rolname = 'users_app'")
    assert after == before
    # a new secret (the secret resource replaced: another ARN) is written again
    import boto3

    replaced = boto3.client("secretsmanager").create_secret(
        Name="users_app_2", SecretString=json.dumps({"username": "users_app",
                                                     "password": "pw-replaced"}))["ARN"]
    monkeypatch.setenv("SVCMIG_APP_SECRETS", json.dumps({**{k: v for k, v in aws.items()
                                                           if k != "master"},
                                                        "users": replaced}))
    deploy(event("Update", "expand", heads, heads, "svcmig-test-expand"))
    assert query(database_url, "SELECT rolpassword FROM pg_authid "
                 "WHERE rolname = 'users_app'") != after


def test_update_with_newer_code_applies_it(project: Path, database_url: str,
                                           aws: dict[str, str]) -> None:
    old = code_heads(project)
    deploy(event("Create", "expand", old))
    before = ledger_count(database_url)
    new_file = project / "services" / "users" / "migrations" / "2027-01-01T0000__users__add_bio.sql"
    new_file.write_text("ALTER TABLE users ADD COLUMN bio text;\n")
    result = deploy(event("Update", "expand", code_heads(project), old,
                                    "svcmig-test-expand"))
    assert result["Data"]["Applied"] == 1
    assert ledger_count(database_url) == before + 1


def test_rollback_update_and_delete_are_noops(project: Path, database_url: str,
                                              aws: dict[str, str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The function holds the release CloudFormation leaves (the old properties' digest): a
    rollback, without touching the database."""
    heads = code_heads(project)
    older = {**heads, "users": "users_202601010000"}
    # No database access at all: a broken secret would fail any attempt to connect.
    monkeypatch.setenv("SVCMIG_MASTER_SECRET_ARN", "arn:aws:secretsmanager:nowhere")
    rollback = deploy(event("Update", "expand", older, heads, "svcmig-test-expand",
                                      new_hash="e" * 64, old_hash=digest(project)))
    assert rollback == {"PhysicalResourceId": "svcmig-test-expand",
                        "Data": {"Applied": 0, "Skipped": "rollback"}}
    deleted = deploy(event("Delete", "contract", heads, None, "svcmig-test-contract"))
    assert deleted["PhysicalResourceId"] == "svcmig-test-contract"
    assert deleted["Data"]["Skipped"] == "delete"
    odd = deploy({"RequestType": "Delete", "PhysicalResourceId": "x",
                            "ResourceProperties": {"Phase": "nonsense"}})
    assert odd["Data"]["Skipped"] == "delete"  # never DELETE_FAILED over its properties


def test_which_release_the_bundle_holds_comes_from_the_digest() -> None:
    """Not from heads or timestamps (a forward deploy can remove a file, rename a service, or
    keep every head; a rollback can bring a service back)."""
    new, old = {"MigrationsHash": "n"}, {"MigrationsHash": "o"}
    both = {"ResourceProperties": new, "OldResourceProperties": old}
    assert migrator.release_of_bundle(both, "n") == "new"
    assert migrator.release_of_bundle(both, "o") == "old"
    assert migrator.release_of_bundle(both, "x") == "other"
    assert migrator.release_of_bundle({"ResourceProperties": new}, "o") == "other"


def test_a_rollback_that_restores_a_removed_service_reruns_nothing(
        project: Path, database_url: str, aws: dict[str, str]) -> None:
    """F5: a deploy removes orders and adds a failing users revision; CloudFormation rolls
    back with the previous properties while the function still holds the failed release's
    files. The rollback applies nothing and succeeds, so the stack does not end in
    UPDATE_ROLLBACK_FAILED."""
    previous, previous_digest = code_heads(project), digest(project)
    deploy(event("Create", "expand", previous))
    deploy(event("Create", "contract", previous))
    before = ledger_count(database_url)
    failing = project / "services/users/migrations/2027-01-01T0000__users__broken.sql"
    failing.write_text("ALTER TABLE no_such_table ADD COLUMN x int;\n")
    shutil.rmtree(project / "services/orders")
    (project / "alembic.ini").write_text((project / "alembic.ini").read_text().replace(
        "%(here)s/services/orders/migrations ", ""))
    failed, failed_digest = code_heads(project), digest(project)
    with pytest.raises(migrator.MigrationError):
        deploy(event("Update", "expand", failed, previous, "svcmig-test-expand",
                               old_hash=previous_digest))
    back = deploy(event("Update", "expand", previous, failed, "svcmig-test-expand",
                                  new_hash=previous_digest, old_hash=failed_digest))
    assert back["Data"] == {"Applied": 0, "Skipped": "rollback"}
    assert ledger_count(database_url) == before


# Kind: deploys whose heads say nothing or mislead (found by a breaker round): a forward deploy
# that removes an applied file, one that adds a failing revision behind an unchanged head, one
# that only edits a file. The digest decides; a forward deploy is never skipped, a rollback
# never re-runs anything.
def test_a_forward_deploy_that_removes_an_applied_file_is_not_skipped(
        project: Path, database_url: str, aws: dict[str, str]) -> None:
    old = code_heads(project)
    deploy(event("Create", "expand", old))
    newest = sorted((project / "services/users/migrations").iterdir())[-1]
    newest.unlink()
    (project / "services/users/migrations/2027-01-05T0000__users__nickname.sql").write_text(
        "ALTER TABLE users ADD COLUMN nickname text;\n")
    with pytest.raises(migrator.MigrationError, match="file is gone|missing"):
        deploy(event("Update", "expand", code_heads(project), old,
                               "svcmig-test-expand"))


@pytest.mark.parametrize("change", ["failing-expand-behind-same-head", "edited-applied-file"])
def test_a_failed_deploy_with_unchanged_heads_rolls_back_cleanly(
        project: Path, database_url: str, aws: dict[str, str], change: str) -> None:
    deploy(event("Create", "expand", code_heads(project)))
    deploy(event("Create", "contract", code_heads(project)))
    heads, previous_digest = code_heads(project), digest(project)
    before = ledger_count(database_url)
    folder = project / "services/users/migrations"
    if change == "failing-expand-behind-same-head":
        (folder / "2027-01-05T0000__users__contract.sql").write_text(
            "-- phase: contract\nALTER TABLE users DROP COLUMN no_such_column;\n")
        deploy(event("Update", "expand", code_heads(project), heads))
        contract = deploy(event("Update", "contract", code_heads(project), heads))
        assert "Failed" in contract["Data"]  # stays pending, the code stays live
        heads, previous_digest = code_heads(project), digest(project)
        (folder / "2027-01-04T0000__users__late.sql").write_text("SELECT 1/0;\n")
    else:
        applied = sorted(folder.glob("*.sql"))[0]
        applied.write_text(applied.read_text() + "\n-- a comment\n")
    assert code_heads(project) == heads  # nothing in the heads says what changed
    with pytest.raises(migrator.MigrationError):
        deploy(event("Update", "expand", heads, heads, "svcmig-test-expand",
                               old_hash=previous_digest))
    back = deploy(event("Update", "expand", heads, heads, "svcmig-test-expand",
                                  new_hash=previous_digest, old_hash=digest(project)))
    assert back["Data"] == {"Applied": 0, "Skipped": "rollback"}
    assert ledger_count(database_url) == before


def test_a_bundle_of_neither_release_is_refused(project: Path, database_url: str,
                                                aws: dict[str, str]) -> None:
    with pytest.raises(migrator.MigrationError, match="neither the release"):
        deploy(event("Create", "expand", code_heads(project), new_hash="f" * 64))
    assert query(database_url, "SELECT to_regclass('svcmig.schema_migrations')") == [(None,)]


def test_failure_reason_names_file_statement_and_error(project: Path, database_url: str,
                                                       aws: dict[str, str]) -> None:
    bad = project / "services" / "users" / "migrations" / "2027-01-01T0000__users__bad.sql"
    bad.write_text("-- a broken migration\nALTER TABLE users ADD COLUMN ok text;\n"
                   "ALTER TABLE no_such_table ADD COLUMN x int;\n")
    with pytest.raises(migrator.MigrationError) as raised:
        deploy(event("Create", "expand", code_heads(project)))
    reason = str(raised.value)
    assert "services/users/migrations/2027-01-01T0000__users__bad.sql:3" in reason
    assert "statement: ALTER TABLE no_such_table ADD COLUMN x int;" in reason
    assert 'relation "no_such_table" does not exist' in reason
    assert str(project) not in reason and "pw-" not in reason
    # Earlier revisions stay applied; the broken one is not in the ledger.
    assert query(database_url, "SELECT count(*) FROM svcmig.schema_migrations "
                 "WHERE revision = 'users_202701010000'") == [(0,)]


def test_unreachable_database_is_a_reason_without_the_password(project: Path,
                                                               aws: dict[str, str],
                                                               monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    monkeypatch.setenv("SVCMIG_DB_HOST", "127.0.0.1")
    monkeypatch.setenv("SVCMIG_DB_PORT", "1")
    body = event("Create", "expand", code_heads(project))
    started = migrator.handler(body)
    run = started[migrator.RUN_KEY]
    assert worker_task.main(task_overrides(run)) == 1
    end_task(run)
    # the record cannot be read: the poller looks again for a while after the task stopped
    assert migrator.is_complete_handler({**body, **started}) == {"IsComplete": False}
    monkeypatch.setattr(migrator, "UNREADABLE_GRACE_SECONDS", 0.0)
    with pytest.raises(migrator.MigrationError) as raised:
        migrator.is_complete_handler({**body, **started})
    # the worker claims nothing and runs nothing; the poller cannot read a record either:
    # the reason says the task stopped, and why, without the password
    reason = str(raised.value)
    assert "worker task stopped before it finished" in reason
    assert "database error: connection failed" in reason and "refused" in reason
    assert "pw-" not in reason


def test_plans_from_the_manifest_when_bundled(project: Path, database_url: str,
                                              aws: dict[str, str]) -> None:
    assert not isinstance(migrator.load_graph(project), ManifestGraph)
    write_manifest(project, project / MANIFEST_NAME)
    assert isinstance(migrator.load_graph(project), ManifestGraph)
    result = deploy(event("Create", "expand", code_heads(project)))
    assert result["Data"]["Applied"] > 0


def test_database_url_prefers_the_cluster_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = {"host": "proxy.example", "port": 5432, "username": "a@b", "password": "p:w/@",
              "dbname": "app"}
    monkeypatch.setenv("SVCMIG_DB_HOST", "cluster.example")
    monkeypatch.delenv("SVCMIG_DB_SSLMODE", raising=False)
    url = migrator.database_url(secret)
    assert url == "postgresql://a%40b:p%3Aw%2F%40@cluster.example:5432/app?sslmode=require"
    assert psycopg.conninfo.conninfo_to_dict(url)["password"] == "p:w/@"


# Kind: a stage several releases behind. One deploy is safe when, after its expand phase, what
# is pending is only contract revisions (they run after the code); when an expand revision waits
# behind a contract one, the new code would go live without it: the expand phase fails before
# the code deploy, keeping what it applied (safe for the old code), and says what to do.
RELEASES = {  # file stamp → (phase, up)
    "2027-01-01T0000": ("expand", "ALTER TABLE users ADD COLUMN nickname text;"),
    "2027-01-02T0000": ("contract", "ALTER TABLE users DROP COLUMN display_name;"),
    "2027-01-03T0000": ("expand", "ALTER TABLE users ADD COLUMN bio text;"),
    "2027-01-04T0000": ("contract", "ALTER TABLE users DROP COLUMN nickname;"),
}


def add_releases(project: Path, stamps: list[str]) -> None:
    for stamp in stamps:
        phase, up = RELEASES[stamp]
        (project / "services/users/migrations" / f"{stamp}__users__r{stamp[8:10]}.sql").write_text(
            f"-- phase: {phase}\n{up}\n")


@pytest.mark.parametrize("stamps", [
    ["2027-01-01T0000", "2027-01-02T0000"],  # one release: expand, then its contract
    ["2027-01-02T0000"],  # only a contract
], ids=["one-release", "contract-only"])
def test_a_stage_one_release_behind_deploys_in_one_go(project: Path, database_url: str,
                                                      aws: dict[str, str],
                                                      stamps: list[str]) -> None:
    deploy(event("Create", "expand", code_heads(project)))
    deploy(event("Create", "contract", code_heads(project)))
    add_releases(project, stamps)
    heads = code_heads(project)
    deploy(event("Update", "expand", heads, heads, "svcmig-test-expand"))
    done = deploy(event("Update", "contract", heads, heads, "svcmig-test-contract"))
    assert done["Data"]["Pending"] == 0


def test_a_stage_several_releases_behind_stops_before_the_code_and_says_how_to_catch_up(
        project: Path, database_url: str, aws: dict[str, str]) -> None:
    deploy(event("Create", "expand", code_heads(project)))
    deploy(event("Create", "contract", code_heads(project)))
    old = code_heads(project)
    add_releases(project, list(RELEASES))
    with pytest.raises(migrator.MigrationError) as caught:
        deploy(event("Update", "expand", code_heads(project), old,
                               "svcmig-test-expand"))
    message = str(caught.value)
    assert "contract revision users_202701020000 waits for the code deploy" in message
    assert "first users_202701030000" in message and "lags more than one release" in message
    assert "give it a later timestamp" in message
    # what ran is the first release's expand revision, safe for the old code
    assert query(database_url, "SELECT revision FROM svcmig.schema_migrations "
                 "WHERE revision >= 'users_2027' ORDER BY 1") == [("users_202701010000",)]
    # catching up release by release, as the message says: the release ending at the contract…
    later = sorted((project / "services/users/migrations").glob("2027-01-0[34]*"))
    kept = {path: path.read_text() for path in later}
    for path in later:
        path.unlink()
    middle = code_heads(project)
    deploy(event("Update", "expand", middle, old, "svcmig-test-expand"))
    deploy(event("Update", "contract", middle, old, "svcmig-test-contract"))
    # …then this one, in one go
    for path, text in kept.items():
        path.write_text(text)
    heads = code_heads(project)
    deploy(event("Update", "expand", heads, middle, "svcmig-test-expand"))
    done = deploy(event("Update", "contract", heads, middle, "svcmig-test-contract"))
    assert done["Data"]["Pending"] == 0
    assert query(database_url, "SELECT count(*) FROM information_schema.columns WHERE "
                 "table_schema = 'users' AND column_name IN ('bio', 'nickname', "
                 "'display_name')") == [(1,)]


def test_a_failed_contract_phase_does_not_roll_the_code_back(project: Path, database_url: str,
                                                              aws: dict[str, str],
                                                              capsys: pytest.CaptureFixture[str],
                                                              ) -> None:
    """Contract revisions A (applied) then B (fails): failing the resource would roll the
    stack back to the old code, which needs what A removed. The resource succeeds, says what
    failed, and logs `contract_failed` (the alarm's metric filter); B stays pending for the
    next deploy."""
    old = code_heads(project)
    deploy(event("Create", "expand", old))
    deploy(event("Create", "contract", old))
    add_releases(project, ["2027-01-02T0000"])  # contract: drop display_name
    (project / "services/users/migrations/2027-01-02T0100__users__broken.sql").write_text(
        "-- phase: contract\nALTER TABLE users DROP COLUMN no_such_column;\n")
    heads = code_heads(project)
    deploy(event("Update", "expand", heads, old, "svcmig-test-expand"))
    capsys.readouterr()
    done = deploy(event("Update", "contract", heads, old, "svcmig-test-contract"))
    assert done["Data"]["Applied"] == 1
    assert "no_such_column" in done["Data"]["Failed"]
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()
             if line.startswith("{")]
    assert any(line.get("event") == "contract_failed" for line in lines)
    assert query(database_url, "SELECT revision FROM svcmig.schema_migrations "
                 "WHERE revision >= 'users_2027' ORDER BY 1") == [("users_202701020000",)]


def test_no_statement_outlives_the_worker() -> None:
    """Stopped at its deadline, the worker would leave no record of what it did: the lock
    waits and each revision's statement_timeout come from the time it has left."""
    settings = migrator.run_settings(900)
    assert settings.lock_wait_seconds == 600
    assert 779_000 < (settings.statement_timeout_now() or 0) <= 780_000
    assert 9_000 < (migrator.run_settings(130).statement_timeout_now() or 0) <= 10_000  # floor
    assert migrator.run_settings(3600).lock.budget_seconds <= 3480
    assert migrator.run_settings(None).statement_timeout_now() is None


# `svcmig remote`: an operator repairs a dirty deploy through the migrator, without reaching
# the database, from the alarm to green.
def test_remote_status_and_repair_fix_a_dirty_state(project: Path, database_url: str,
                                                    aws: dict[str, str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from migrations_runtime.cli import remote
    from migrations_runtime.cli.main import cli

    heads = code_heads(project)
    deploy(event("Create", "expand", heads))
    with psycopg.connect(database_url, autocommit=True) as conn:  # a deploy left it dirty
        conn.execute("UPDATE svcmig.schema_migrations SET state = 'dirty' "
                     "WHERE revision = 'users_202611101415'")
    invoked: list[tuple[str, dict[str, Any]]] = []

    def invoke(name: str, payload: dict[str, Any]) -> dict[str, Any]:  # Lambda's sync invoke
        invoked.append((name, payload))
        with contextlib.redirect_stdout(io.StringIO()):  # the function's own log, in Lambda
            answer = migrator.operation_handler({**payload, "caller": "ops"})
        return dict(json.loads(json.dumps(answer)))

    monkeypatch.setattr(remote, "invoke", invoke)
    runner = CliRunner()
    status = runner.invoke(cli, ["remote", "--stage", "prod", "status"])
    assert status.exit_code == 1 and "users_202611101415 is dirty" in status.output
    assert invoked[0][0] == "svcmig-prod-migrator-operations"
    refused = runner.invoke(cli, ["remote", "--stage", "prod", "repair", "users_202611101415"])
    assert refused.exit_code == 2
    repaired = runner.invoke(cli, ["remote", "--stage", "prod", "repair", "users_202611101415",
                                   "--applied"])
    assert repaired.exit_code == 0, repaired.output
    clean = runner.invoke(cli, ["remote", "--stage", "prod", "status", "--json"])
    assert clean.exit_code == 0 and json.loads(clean.output)["anomalies"] == []
    assert runner.invoke(cli, ["remote", "--stage", "nope", "status"]).exit_code == 2
    repaired_json = runner.invoke(cli, ["remote", "--stage", "prod", "repair",
                                        "users_202611101415", "--applied", "--json"])
    assert repaired_json.exit_code == 1  # not dirty any more: one line on stderr, as locally
    assert repaired_json.stdout == "" and repaired_json.stderr.startswith("error: ")
    # no SQL passthrough, and the operations function runs nothing else: not even an event
    # shaped like CloudFormation's (the deploy's migrator is another function)
    assert migrator.operation_handler({"operation": "sql", "sql": "DROP TABLE users.users"}) \
        == {"ok": False, "text": "unknown operation 'sql': use status, repair or backfill"}
    contract = {"RequestType": "Create", "ResourceProperties": {
        "Phase": "contract", "MigrationsHash": digest(project), "CodeHeads": heads}}
    assert migrator.operation_handler(contract)["ok"] is False
    assert migrator.operation_handler(["operation"])["ok"] is False
    assert query(database_url, "SELECT to_regclass('users.users')") == [("users.users",)]


def test_remote_names_a_missing_function_in_one_line(aws: dict[str, str]) -> None:
    from click.testing import CliRunner

    from migrations_runtime.cli.main import cli

    done = CliRunner().invoke(cli, ["remote", "--stage", "preview-9", "status"])
    assert done.exit_code == 1
    assert "cannot invoke svcmig-preview-9-migrator-operations" in done.output
    assert "Traceback" not in done.output and done.output.count("\n") == 1


# Kind: runs longer than the migrator function may live. The migrator only starts a worker
# task and the poller only looks; the run has the stage's budget, the task's deadline bounds
# every statement, a killed or duplicated worker is never re-run blindly.
SLOW = "2027-02-01T0000__users__slow.sql"


def wait_for_statement(url: str, text: str, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if query(url, "SELECT count(*) FROM pg_stat_activity WHERE query LIKE %s "
                 "AND pid <> pg_backend_pid()", (f"%{text}%",))[0][0]:
            return
        time.sleep(0.05)
    raise AssertionError(f"no session ran {text!r}")


def test_a_run_longer_than_the_migrator_function_completes_through_the_worker(
        project: Path, database_url: str, aws: dict[str, str]) -> None:
    """on_event answers at once (whatever time its Lambda has left); the poller says "not
    yet" while the revision runs, then answers with what the run applied."""
    (project / "services/users/migrations" / SLOW).write_text(
        "SELECT pg_sleep(1.5);\nALTER TABLE users ADD COLUMN slow text;\n")

    class AlmostOut:  # the on_event Lambda has 200 ms left: it only starts the worker
        def get_remaining_time_in_millis(self) -> int:
            return 200

    body = event("Create", "expand", code_heads(project))
    started = migrator.handler(body, AlmostOut())
    run = started[migrator.RUN_KEY]
    environment = task_overrides(run)
    worker = threading.Thread(target=worker_task.main, args=(environment,))
    worker.start()
    try:
        wait_for_statement(database_url, "pg_sleep(1.5)")
        assert migrator.is_complete_handler({**body, **started}) == {"IsComplete": False}
    finally:
        worker.join()
    end_task(run)
    done = migrator.is_complete_handler({**body, **started})
    assert done["IsComplete"] and done["Data"]["Applied"] == ledger_count(database_url)
    assert query(database_url, "SELECT count(*) FROM information_schema.columns WHERE "
                 "table_schema = 'users' AND column_name = 'slow'") == [(1,)]
    # the worker ran within the deadline on_event set from the stage's budget
    assert float(environment["SVCMIG_DEADLINE"]) > time.time() + 1700


@pytest.mark.parametrize("transactional", [True, False], ids=["transactional", "no-transaction"])
def test_a_killed_worker_is_reported_and_never_run_again(
        project: Path, database_url: str, aws: dict[str, str], transactional: bool) -> None:
    """The worker is killed mid-revision (SIGKILL: no handler, no record of the end). The
    poller fails the resource with why; no second task starts, a repeated poll or a worker
    started again for the same request runs nothing; what the revision left is what the
    ledger says (rolled back, or dirty until repaired)."""
    import boto3

    deploy(event("Create", "expand", code_heads(project)))
    header = "" if transactional else "-- migrate:no-transaction\n"
    slow = project / "services/users/migrations" / SLOW
    slow.write_text(f"{header}ALTER TABLE users ADD COLUMN killed text;\n"
                    "SELECT pg_sleep(60);\n")
    body = event("Update", "expand", code_heads(project), code_heads(project),
                 "svcmig-test-expand")
    started = migrator.handler(body)
    run = started[migrator.RUN_KEY]
    environment = task_overrides(run)
    child = multiprocessing.get_context("fork").Process(target=worker_task.main,
                                                         args=(environment,))
    child.start()
    wait_for_statement(database_url, "pg_sleep(60)")
    os.kill(child.pid or 0, signal.SIGKILL)
    child.join()
    end_task(run, "Essential container in task exited")
    for _ in range(2):  # polled again: the same answer, nothing started
        with pytest.raises(migrator.MigrationError, match="stopped before it finished"):
            migrator.is_complete_handler({**body, **started})
    assert len(boto3.client("ecs").list_tasks(cluster=run["cluster"])["taskArns"]) == 2
    assert worker_task.main(environment) == 0  # claimed already: runs nothing
    columns = query(database_url, "SELECT count(*) FROM information_schema.columns WHERE "
                    "table_schema = 'users' AND column_name = 'killed'")
    state = query(database_url, "SELECT state FROM svcmig.schema_migrations "
                  "WHERE revision = 'users_202702010000'")
    if transactional:
        assert columns == [(0,)] and state == []
    else:
        assert columns == [(1,)] and state == [("dirty",)]
        with pytest.raises(migrator.MigrationError, match="dirty"):  # the next deploy
            deploy(event("Update", "expand", code_heads(project), code_heads(project),
                         "svcmig-test-expand"))
        assert migrator.operation_handler({"operation": "repair", "revision":
                                           "users_202702010000", "action": "applied"})["ok"]
    slow.write_text(f"{header}ALTER TABLE users ADD COLUMN IF NOT EXISTS killed text;\n")
    if transactional:  # never applied: fixed in place, the next deploy runs it
        done = deploy(event("Update", "expand", code_heads(project), code_heads(project),
                            "svcmig-test-expand"))
        assert done["Data"]["Applied"] == 1


def test_a_repeated_start_of_a_request_runs_it_once(project: Path, database_url: str,
                                                    aws: dict[str, str]) -> None:
    body = event("Create", "expand", code_heads(project))
    first, second = migrator.handler(body), migrator.handler(body)
    assert worker_task.main(task_overrides(first[migrator.RUN_KEY])) == 0
    applied = ledger_count(database_url)
    assert worker_task.main(task_overrides(second[migrator.RUN_KEY])) == 0
    assert ledger_count(database_url) == applied
    for started in (first, second):
        end_task(started[migrator.RUN_KEY])
        done = migrator.is_complete_handler({**body, **started})
        assert done["IsComplete"] and done["Data"]["Applied"] == applied


def test_a_worker_past_its_deadline_is_stopped_and_the_resource_fails(
        project: Path, database_url: str, aws: dict[str, str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3

    budget_spent(monkeypatch)
    body = event("Create", "expand", code_heads(project))
    started = migrator.handler(body)
    run = started[migrator.RUN_KEY]
    with pytest.raises(migrator.MigrationError, match="passed its deadline"):
        migrator.is_complete_handler({**body, **started})
    [task] = boto3.client("ecs").describe_tasks(cluster=run["cluster"],
                                                tasks=[run["task"]])["tasks"]
    assert task["lastStatus"] == "STOPPED" and "deadline" in task["stoppedReason"]


@pytest.mark.parametrize("environment", [
    {}, {"SVCMIG_RUN_ID": "r", "SVCMIG_PHASE": "sideways", "SVCMIG_PHYSICAL_ID": "p",
         "SVCMIG_DEADLINE": "1"},
    {"SVCMIG_RUN_ID": "r", "SVCMIG_PHASE": "expand", "SVCMIG_PHYSICAL_ID": "p",
     "SVCMIG_DEADLINE": "soon"},
], ids=["nothing", "bad-phase", "bad-deadline"])
def test_a_worker_started_by_hand_without_a_run_does_nothing(
        database_url: str, aws: dict[str, str], environment: dict[str, str]) -> None:
    assert worker_task.main(environment) == 2
    assert query(database_url, "SELECT to_regclass('svcmig.deploy_runs')") == [(None,)]


def test_without_a_worker_setting_the_migrator_says_so(project: Path, aws: dict[str, str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SVCMIG_WORKER")
    with pytest.raises(migrator.MigrationError, match="SVCMIG_WORKER is not set"):
        migrator.handler(event("Create", "expand", code_heads(project)))


def test_a_worker_whose_image_holds_another_release_runs_nothing(
        project: Path, database_url: str, aws: dict[str, str]) -> None:
    body = event("Create", "expand", code_heads(project))
    started = migrator.handler(body)
    run = started[migrator.RUN_KEY]
    environment = {**task_overrides(run), "SVCMIG_MIGRATIONS_HASH": "0" * 64}
    assert worker_task.main(environment) == 1
    end_task(run)
    with pytest.raises(migrator.MigrationError, match="other migration files"):
        migrator.is_complete_handler({**body, **started})
    assert query(database_url, "SELECT to_regclass('svcmig.schema_migrations')") == [(None,)]



# Kind: what a poll sees is not what happened (found by a breaker round). Only a run that is
# over and failed fails its resource; a poll that cannot look answers "not yet"; a contract
# run fails nothing, whatever ended it.
def test_a_poll_that_cannot_look_answers_not_yet(project: Path, database_url: str,
                                                 aws: dict[str, str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    body = event("Create", "expand", code_heads(project))
    started = migrator.handler(body)
    poll = {**body, **started}

    def throttled(arn: str) -> dict[str, Any]:
        raise RuntimeError("ThrottlingException: Rate exceeded")

    with monkeypatch.context() as patched:
        patched.setattr(migrator, "read_secret", throttled)
        assert migrator.is_complete_handler(poll) == {"IsComplete": False}
    with monkeypatch.context() as patched:
        patched.setattr(migrator, "_task", throttled)
        assert migrator.is_complete_handler(poll) == {"IsComplete": False}
    assert worker_task.main(task_overrides(started[migrator.RUN_KEY])) == 0
    end_task(started[migrator.RUN_KEY])
    with monkeypatch.context() as patched:  # the database blips on the last poll
        patched.setenv("SVCMIG_DB_PORT", "1")
        patched.setenv("SVCMIG_DB_HOST", "127.0.0.1")
        assert migrator.is_complete_handler(poll) == {"IsComplete": False}
    done = migrator.is_complete_handler(poll)
    assert done["IsComplete"] and done["Data"]["Applied"] == ledger_count(database_url)


def test_a_killed_contract_worker_does_not_fail_its_resource(
        project: Path, database_url: str, aws: dict[str, str],
        capsys: pytest.CaptureFixture[str]) -> None:
    """Contract revision A drops a column, B runs when the worker is killed: failing the
    resource would roll back to code that reads A's column."""
    deploy(event("Create", "expand", code_heads(project)))
    deploy(event("Create", "contract", code_heads(project)))
    add_releases(project, ["2027-01-02T0000"])  # contract: drop display_name
    (project / "services/users/migrations/2027-01-02T0100__users__slow.sql").write_text(
        "-- phase: contract\nSELECT pg_sleep(60);\n")
    heads = code_heads(project)
    deploy(event("Update", "expand", heads, heads, "svcmig-test-expand"))
    body = event("Update", "contract", heads, heads, "svcmig-test-contract")
    started = migrator.handler(body)
    run = started[migrator.RUN_KEY]
    child = multiprocessing.get_context("fork").Process(target=worker_task.main,
                                                         args=(task_overrides(run),))
    child.start()
    wait_for_statement(database_url, "pg_sleep(60)")
    os.kill(child.pid or 0, signal.SIGKILL)
    child.join()
    end_task(run)
    capsys.readouterr()
    done = migrator.is_complete_handler({**body, **started})
    assert done["IsComplete"] and "stopped before it finished" in done["Data"]["Failed"]
    assert any(json.loads(line).get("event") == "contract_failed"
               for line in capsys.readouterr().out.splitlines() if line.startswith("{"))
    assert query(database_url, "SELECT count(*) FROM information_schema.columns WHERE "
                 "table_schema = 'users' AND column_name = 'display_name'") == [(0,)]


def test_a_repeated_on_event_finds_the_task_it_started(project: Path, database_url: str,
                                                       aws: dict[str, str]) -> None:
    import boto3

    body = event("Create", "expand", code_heads(project))
    first = migrator.handler(body)
    time.sleep(1.1)  # a deadline computed again would differ
    second = migrator.handler(body)
    assert second[migrator.RUN_KEY] == first[migrator.RUN_KEY]
    cluster = first[migrator.RUN_KEY]["cluster"]
    assert len(boto3.client("ecs").list_tasks(cluster=cluster)["taskArns"]) == 1


def test_an_update_that_changes_no_migration_file_starts_nothing(
        project: Path, database_url: str, aws: dict[str, str]) -> None:
    heads, current = code_heads(project), digest(project)
    for direction in ("deploy", "rollback"):  # e.g. only migration_timeout_minutes changed
        answer = migrator.handler(event("Update", "expand", heads, heads, "svcmig-test-expand",
                                        new_hash=current, old_hash=current))
        assert migrator.RUN_KEY not in answer, direction
        assert answer["Data"]["Skipped"] == "unchanged"
    assert query(database_url, "SELECT to_regclass('svcmig.deploy_runs')") == [(None,)]


@pytest.mark.parametrize("left", [-3600.0, 60.0, float("inf"), float("-inf")])
def test_a_worker_that_starts_too_late_runs_nothing(project: Path, database_url: str,
                                                    aws: dict[str, str], left: float) -> None:
    body = event("Create", "expand", code_heads(project))
    started = migrator.handler(body)
    environment = {**task_overrides(started[migrator.RUN_KEY]),
                   "SVCMIG_DEADLINE": str(time.time() + left)}
    assert worker_task.main(environment) in (1, 2)
    assert query(database_url, "SELECT to_regclass('svcmig.schema_migrations')") == [(None,)]


def test_a_record_of_another_phase_or_a_malformed_run_fails(
        project: Path, database_url: str, aws: dict[str, str]) -> None:
    body = event("Create", "expand", code_heads(project))
    started = migrator.handler(body)
    run = started[migrator.RUN_KEY]
    assert worker_task.main({**task_overrides(run), "SVCMIG_PHASE": "contract"}) == 0
    end_task(run)
    with pytest.raises(migrator.MigrationError, match="record is for the contract phase"):
        migrator.is_complete_handler({**body, **started})
    for malformed in ({}, None, "abc", {"run": "r"}):
        with pytest.raises(migrator.MigrationError, match="malformed"):
            migrator.is_complete_handler({**body, migrator.RUN_KEY: malformed})


def test_a_long_reason_is_capped_for_cloudformation(project: Path, database_url: str,
                                                     aws: dict[str, str]) -> None:
    from infra.migrator import runs

    body = event("Create", "expand", code_heads(project))
    started = migrator.handler(body)
    run = started[migrator.RUN_KEY]
    assert runs.claim(database_url, run["run"], "expand")
    runs.finish(database_url, run["run"], reason="x" * 6000)
    with pytest.raises(migrator.MigrationError) as raised:
        migrator.is_complete_handler({**body, **started})
    assert len(str(raised.value)) <= migrator.MAX_REASON


def test_first_claims_at_once_on_a_fresh_database_each_get_an_answer(
        database_url: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from infra.migrator import runs

    with ThreadPoolExecutor(8) as pool:
        claimed = list(pool.map(lambda n: runs.claim(database_url, f"r{n % 4}", "expand"),
                                range(8)))
    assert sorted(claimed) == [False] * 4 + [True] * 4


def test_a_stopped_duplicate_worker_does_not_end_a_run_another_worker_does(
        project: Path, database_url: str, aws: dict[str, str]) -> None:
    """A repeated start that did not see the first task (ECS reads lag) starts a second one;
    when the second stops (the run is claimed), the first still runs: not over."""
    import boto3

    body = event("Create", "expand", code_heads(project))
    run = migrator.handler(body)[migrator.RUN_KEY]
    worker = json.loads(os.environ["SVCMIG_WORKER"])
    second = boto3.client("ecs").run_task(
        cluster=worker["cluster"], taskDefinition=worker["task_definition"],
        launchType="FARGATE", startedBy=migrator.started_by(run["run"]),
        networkConfiguration={"awsvpcConfiguration": {"subnets": worker["subnets"],
                                                      "securityGroups": []}},
    )["tasks"][0]["taskArn"]
    from infra.migrator import runs

    assert runs.claim(database_url, run["run"], "expand")  # the first worker claimed it
    duplicate = {**body, migrator.RUN_KEY: {**run, "task": second}}
    end_task({**run, "task": second})
    assert migrator.is_complete_handler(duplicate) == {"IsComplete": False}


def test_a_task_ecs_does_not_list_yet_is_not_a_dead_run(project: Path, database_url: str,
                                                        aws: dict[str, str]) -> None:
    body = event("Create", "expand", code_heads(project))
    started = migrator.handler(body)
    unknown = {**started[migrator.RUN_KEY],
               "task": started[migrator.RUN_KEY]["task"].rsplit("/", 1)[0] + "/nosuchtask"}
    assert migrator.is_complete_handler({**body, migrator.RUN_KEY: unknown}) == {
        "IsComplete": False}


def test_a_contract_run_past_its_deadline_fails_nothing_even_if_stopping_fails(
        project: Path, database_url: str, aws: dict[str, str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    import botocore.client

    budget_spent(monkeypatch)
    body = event("Create", "contract", code_heads(project))
    started = migrator.handler(body)
    real = botocore.client.BaseClient._make_api_call

    def throttled(self: Any, operation: str, params: dict[str, Any]) -> Any:
        if operation == "StopTask":
            raise RuntimeError("ThrottlingException: Rate exceeded")
        return real(self, operation, params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", throttled)
    done = migrator.is_complete_handler({**body, **started})
    assert done["IsComplete"] and "passed its deadline" in done["Data"]["Failed"]
