"""The migrator Lambda handler with CloudFormation-shaped events, against real Postgres, with
Secrets Manager from moto."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from infra.migrator import handler as migrator
from infra.migrator.digest import migrations_digest
from migrations_runtime.engine.manifest import MANIFEST_NAME, ManifestGraph, write_manifest
from tests.conftest import code_heads, query

moto = pytest.importorskip("moto")


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
        monkeypatch.setenv("SVCMIG_MASTER_SECRET_ARN", master)
        monkeypatch.setenv("SVCMIG_APP_SECRETS", json.dumps(apps))
        monkeypatch.setenv("SVCMIG_DB_SSLMODE", "prefer")
        monkeypatch.delenv("SVCMIG_DB_HOST", raising=False)
        yield {"master": master, **apps}


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
        "RequestId": "r1", "LogicalResourceId": f"Migrations{phase.title()}",
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
    first = migrator.handler(event("Create", "expand", heads))
    assert first["PhysicalResourceId"] == "svcmig-test-expand"
    assert first["Data"]["Applied"] > 0
    applied = ledger_count(database_url)
    assert applied == first["Data"]["Applied"]
    again = migrator.handler(event("Create", "expand", heads))  # CloudFormation retries
    assert again["Data"]["Applied"] == 0
    contract = migrator.handler(event("Create", "contract", heads))
    assert ledger_count(database_url) == applied + contract["Data"]["Applied"]
    assert contract["Data"]["Pending"] == 0


def test_expand_gives_app_roles_their_secret_password(project: Path, database_url: str,
                                                       aws: dict[str, str]) -> None:
    migrator.handler(event("Create", "expand", code_heads(project)))
    rows = query(database_url, "SELECT rolname, starts_with(rolpassword, 'SCRAM-SHA-256$') "
                 "FROM pg_authid WHERE rolname IN ('users_app', 'orders_app') ORDER BY 1")
    assert rows == [("orders_app", True), ("users_app", True)]


def test_a_deploy_never_writes_over_a_rotated_password(project: Path, database_url: str,
                                                        aws: dict[str, str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The migrator writes an app role's password once; then the secret's rotation is the only
    writer (a deploy during a rotation would put the old password back)."""
    heads = code_heads(project)
    assert migrator.handler(event("Create", "expand", heads))
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("ALTER ROLE users_app PASSWORD 'rotated-by-secrets-manager'")
    before = query(database_url, "SELECT rolpassword FROM pg_authid WHERE rolname = 'users_app'")
    migrator.handler(event("Update", "expand", heads, heads, "svcmig-test-expand"))
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
    migrator.handler(event("Update", "expand", heads, heads, "svcmig-test-expand"))
    assert query(database_url, "SELECT rolpassword FROM pg_authid "
                 "WHERE rolname = 'users_app'") != after


def test_update_with_newer_code_applies_it(project: Path, database_url: str,
                                           aws: dict[str, str]) -> None:
    old = code_heads(project)
    migrator.handler(event("Create", "expand", old))
    before = ledger_count(database_url)
    new_file = project / "services" / "users" / "migrations" / "2027-01-01T0000__users__add_bio.sql"
    new_file.write_text("ALTER TABLE users ADD COLUMN bio text;\n")
    result = migrator.handler(event("Update", "expand", code_heads(project), old,
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
    rollback = migrator.handler(event("Update", "expand", older, heads, "svcmig-test-expand",
                                      new_hash="e" * 64, old_hash=digest(project)))
    assert rollback == {"PhysicalResourceId": "svcmig-test-expand",
                        "Data": {"Applied": 0, "Skipped": "rollback"}}
    deleted = migrator.handler(event("Delete", "contract", heads, None, "svcmig-test-contract"))
    assert deleted["PhysicalResourceId"] == "svcmig-test-contract"
    assert deleted["Data"]["Skipped"] == "delete"
    odd = migrator.handler({"RequestType": "Delete", "PhysicalResourceId": "x",
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
    migrator.handler(event("Create", "expand", previous))
    migrator.handler(event("Create", "contract", previous))
    before = ledger_count(database_url)
    failing = project / "services/users/migrations/2027-01-01T0000__users__broken.sql"
    failing.write_text("ALTER TABLE no_such_table ADD COLUMN x int;\n")
    shutil.rmtree(project / "services/orders")
    (project / "alembic.ini").write_text((project / "alembic.ini").read_text().replace(
        "%(here)s/services/orders/migrations ", ""))
    failed, failed_digest = code_heads(project), digest(project)
    with pytest.raises(migrator.MigrationError):
        migrator.handler(event("Update", "expand", failed, previous, "svcmig-test-expand",
                               old_hash=previous_digest))
    back = migrator.handler(event("Update", "expand", previous, failed, "svcmig-test-expand",
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
    migrator.handler(event("Create", "expand", old))
    newest = sorted((project / "services/users/migrations").iterdir())[-1]
    newest.unlink()
    (project / "services/users/migrations/2027-01-05T0000__users__nickname.sql").write_text(
        "ALTER TABLE users ADD COLUMN nickname text;\n")
    with pytest.raises(migrator.MigrationError, match="file is gone|missing"):
        migrator.handler(event("Update", "expand", code_heads(project), old,
                               "svcmig-test-expand"))


@pytest.mark.parametrize("change", ["failing-expand-behind-same-head", "edited-applied-file"])
def test_a_failed_deploy_with_unchanged_heads_rolls_back_cleanly(
        project: Path, database_url: str, aws: dict[str, str], change: str) -> None:
    migrator.handler(event("Create", "expand", code_heads(project)))
    migrator.handler(event("Create", "contract", code_heads(project)))
    heads, previous_digest = code_heads(project), digest(project)
    before = ledger_count(database_url)
    folder = project / "services/users/migrations"
    if change == "failing-expand-behind-same-head":
        (folder / "2027-01-05T0000__users__contract.sql").write_text(
            "-- phase: contract\nALTER TABLE users DROP COLUMN no_such_column;\n")
        migrator.handler(event("Update", "expand", code_heads(project), heads))
        contract = migrator.handler(event("Update", "contract", code_heads(project), heads))
        assert "Failed" in contract["Data"]  # stays pending, the code stays live
        heads, previous_digest = code_heads(project), digest(project)
        (folder / "2027-01-04T0000__users__late.sql").write_text("SELECT 1/0;\n")
    else:
        applied = sorted(folder.glob("*.sql"))[0]
        applied.write_text(applied.read_text() + "\n-- a comment\n")
    assert code_heads(project) == heads  # nothing in the heads says what changed
    with pytest.raises(migrator.MigrationError):
        migrator.handler(event("Update", "expand", heads, heads, "svcmig-test-expand",
                               old_hash=previous_digest))
    back = migrator.handler(event("Update", "expand", heads, heads, "svcmig-test-expand",
                                  new_hash=previous_digest, old_hash=digest(project)))
    assert back["Data"] == {"Applied": 0, "Skipped": "rollback"}
    assert ledger_count(database_url) == before


def test_a_bundle_of_neither_release_is_refused(project: Path, database_url: str,
                                                aws: dict[str, str]) -> None:
    with pytest.raises(migrator.MigrationError, match="neither the release"):
        migrator.handler(event("Create", "expand", code_heads(project), new_hash="f" * 64))
    assert query(database_url, "SELECT to_regclass('svcmig.schema_migrations')") == [(None,)]


def test_failure_reason_names_file_statement_and_error(project: Path, database_url: str,
                                                       aws: dict[str, str]) -> None:
    bad = project / "services" / "users" / "migrations" / "2027-01-01T0000__users__bad.sql"
    bad.write_text("-- a broken migration\nALTER TABLE users ADD COLUMN ok text;\n"
                   "ALTER TABLE no_such_table ADD COLUMN x int;\n")
    with pytest.raises(migrator.MigrationError) as raised:
        migrator.handler(event("Create", "expand", code_heads(project)))
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
    with pytest.raises(migrator.MigrationError) as raised:
        migrator.handler(event("Create", "expand", code_heads(project)))
    assert "cannot connect" in str(raised.value)


def test_plans_from_the_manifest_when_bundled(project: Path, database_url: str,
                                              aws: dict[str, str]) -> None:
    assert not isinstance(migrator.load_graph(project), ManifestGraph)
    write_manifest(project, project / MANIFEST_NAME)
    assert isinstance(migrator.load_graph(project), ManifestGraph)
    result = migrator.handler(event("Create", "expand", code_heads(project)))
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
    migrator.handler(event("Create", "expand", code_heads(project)))
    migrator.handler(event("Create", "contract", code_heads(project)))
    add_releases(project, stamps)
    heads = code_heads(project)
    migrator.handler(event("Update", "expand", heads, heads, "svcmig-test-expand"))
    done = migrator.handler(event("Update", "contract", heads, heads, "svcmig-test-contract"))
    assert done["Data"]["Pending"] == 0


def test_a_stage_several_releases_behind_stops_before_the_code_and_says_how_to_catch_up(
        project: Path, database_url: str, aws: dict[str, str]) -> None:
    migrator.handler(event("Create", "expand", code_heads(project)))
    migrator.handler(event("Create", "contract", code_heads(project)))
    old = code_heads(project)
    add_releases(project, list(RELEASES))
    with pytest.raises(migrator.MigrationError) as caught:
        migrator.handler(event("Update", "expand", code_heads(project), old,
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
    migrator.handler(event("Update", "expand", middle, old, "svcmig-test-expand"))
    migrator.handler(event("Update", "contract", middle, old, "svcmig-test-contract"))
    # …then this one, in one go
    for path, text in kept.items():
        path.write_text(text)
    heads = code_heads(project)
    migrator.handler(event("Update", "expand", heads, middle, "svcmig-test-expand"))
    done = migrator.handler(event("Update", "contract", heads, middle, "svcmig-test-contract"))
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
    migrator.handler(event("Create", "expand", old))
    migrator.handler(event("Create", "contract", old))
    add_releases(project, ["2027-01-02T0000"])  # contract: drop display_name
    (project / "services/users/migrations/2027-01-02T0100__users__broken.sql").write_text(
        "-- phase: contract\nALTER TABLE users DROP COLUMN no_such_column;\n")
    heads = code_heads(project)
    migrator.handler(event("Update", "expand", heads, old, "svcmig-test-expand"))
    capsys.readouterr()
    done = migrator.handler(event("Update", "contract", heads, old, "svcmig-test-contract"))
    assert done["Data"]["Applied"] == 1
    assert "no_such_column" in done["Data"]["Failed"]
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()
             if line.startswith("{")]
    assert any(line.get("event") == "contract_failed" for line in lines)
    assert query(database_url, "SELECT revision FROM svcmig.schema_migrations "
                 "WHERE revision >= 'users_2027' ORDER BY 1") == [("users_202701020000",)]


def test_in_lambda_no_statement_outlives_the_function() -> None:
    """Killed at its timeout, the function would never answer CloudFormation."""

    class Context:
        def __init__(self, left_ms: int) -> None:
            self.left_ms = left_ms

        def get_remaining_time_in_millis(self) -> int:
            return self.left_ms

    assert migrator._settings(Context(900_000)).statement_timeout_ms == 780_000
    assert migrator._settings(Context(130_000)).statement_timeout_ms == 10_000
    assert migrator._settings(None).statement_timeout_ms is None


# `svcmig remote`: an operator repairs a dirty deploy through the migrator, without reaching
# the database, from the alarm to green.
def test_remote_status_and_repair_fix_a_dirty_state(project: Path, database_url: str,
                                                    aws: dict[str, str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from migrations_runtime.cli import remote
    from migrations_runtime.cli.main import cli

    heads = code_heads(project)
    migrator.handler(event("Create", "expand", heads))
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
        == {"ok": False, "text": "unknown operation 'sql': use status or repair"}
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
