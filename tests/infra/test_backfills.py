"""Backfills in AWS: the deploy's start (on_event after contract: RunTask, answered at once,
never a failure), the worker's backfill mode on real Postgres, the check the alarms read, and
`svcmig remote backfill` through the operations function (ECS and Secrets Manager from moto)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import psycopg
import pytest
from click.testing import CliRunner

from infra.migrator import backfills
from infra.migrator import handler as migrator
from infra.migrator import task as worker_task
from infra.migrator.digest import backfills_digest, migrations_digest
from migrations_runtime.engine.apply import migrate
from tests.conftest import query, write_project

from .test_migrator_handler import worker_cluster

moto = pytest.importorskip("moto")
from moto.moto_api import state_manager  # noqa: E402

FILL = "2026-11-02T0900__shop__fill_cents.sql"
FILL_SQL = ("-- batch-size: 500\n"
            "UPDATE items SET price_cents = price * 100 "
            "WHERE id >= :start AND id < :end AND price_cents IS NULL;\n")
BROKEN = "2026-11-03T0900__shop__divide.sql"
BROKEN_SQL = "UPDATE items SET price = price / (id - id) WHERE id >= :start AND id < :end;\n"


@pytest.fixture
def shop(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project with one service, its table migrated, 2,500 rows, and one backfill."""
    root = write_project(tmp_path / "project", {"shop": {
        "2026-11-01T0900__shop__create_items.sql":
            "CREATE TABLE items (id bigint PRIMARY KEY, price int NOT NULL, price_cents int);\n"}})
    monkeypatch.setenv("SVCMIG_PROJECT_ROOT", str(root))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    migrate(database_url, root, "all")
    query(database_url, "INSERT INTO shop.items (id, price) SELECT g, mod(g, 7) + 1 "
          "FROM generate_series(1, 2500) g")
    add_backfill(root, FILL, FILL_SQL)
    return root


def add_backfill(root: Path, name: str, text: str) -> None:
    folder = root / "services" / "shop" / "backfills"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)


@pytest.fixture
def aws(shop: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The master secret pointing at the test database, and the workers' cluster."""
    import boto3

    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with moto.mock_aws():
        info = psycopg.conninfo.conninfo_to_dict(database_url)
        master = boto3.client("secretsmanager").create_secret(Name="master", SecretString=(
            json.dumps({"host": info.get("host", "localhost"),
                        "port": int(str(info.get("port", 5432))),
                        "username": info.get("user", "postgres"),
                        "password": info.get("password", ""), "dbname": info["dbname"]})))
        monkeypatch.setenv("SVCMIG_MASTER_SECRET_ARN", master["ARN"])
        monkeypatch.setenv("SVCMIG_WORKER", json.dumps(worker_cluster()))
        monkeypatch.setenv("SVCMIG_DB_SSLMODE", "prefer")
        monkeypatch.delenv("SVCMIG_DB_HOST", raising=False)
        yield
    state_manager.unset_transition("ecs::task")


def backfill_tasks() -> list[dict[str, Any]]:
    """The backfill worker tasks started so far, with their container's environment."""
    import boto3

    ecs = boto3.client("ecs")
    cluster = json.loads(os.environ["SVCMIG_WORKER"])["cluster"]
    arns = ecs.list_tasks(cluster=cluster, startedBy=backfills.STARTED_BY)["taskArns"]
    if not arns:
        return []
    found = ecs.describe_tasks(cluster=cluster, tasks=arns)["tasks"]
    for task in found:
        [container] = task["overrides"]["containerOverrides"]
        task["environment"] = {e["name"]: e["value"] for e in container["environment"]}
    return list(found)


def run_worker(environment: dict[str, str]) -> tuple[int, list[dict[str, Any]]]:
    """The worker task's entry point with the task's environment, as its container runs it;
    its exit code and JSON lines."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = worker_task.main(environment)
    return code, [json.loads(line) for line in out.getvalue().splitlines()]


def resource_event(request: str, root: Path, backfills_hash: str | None = None,
                   old: dict[str, str] | None = None) -> dict[str, Any]:
    """What the Provider framework hands on_event for the `Backfills` resource."""
    props = {"ServiceToken": "arn:aws:lambda:eu-west-1:1:function:provider",
             "Phase": "backfills", "MigrationsHash": migrations_digest(root),
             "BackfillsHash": backfills_hash or backfills_digest(root), "Stage": "test"}
    body: dict[str, Any] = {
        "RequestType": request, "ResponseURL": "https://example.invalid",
        "StackId": "arn:aws:cloudformation:stack/x", "RequestId": str(uuid.uuid4()),
        "LogicalResourceId": "MigrationsBackfills", "ResourceType": "Custom::SvcmigBackfills",
        "ResourceProperties": props}
    if request != "Create":
        body["PhysicalResourceId"] = "svcmig-test-backfills"
    if old is not None:
        body["OldResourceProperties"] = {**props, **old}
    return body


def on_event(body: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """on_event, then is_complete as the framework calls it at once; the answer and the log."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        started = migrator.handler(body)
        done = migrator.is_complete_handler({**body, **started})
    assert done == {"IsComplete": True}  # nothing to wait for
    return started, [json.loads(line) for line in out.getvalue().splitlines()]


def filled(url: str) -> int:
    return int(query(url, "SELECT count(*) FROM shop.items WHERE price_cents IS NOT NULL")[0][0])


def test_the_worker_runs_every_pending_backfill_and_logs_json_lines(
        shop: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backfills, "master_url", lambda: database_url)
    code, lines = run_worker({"SVCMIG_TASK": "backfills"})
    assert code == 0
    assert filled(database_url) == 2500
    events = [line["event"] for line in lines]
    assert events[0] == "backfill_worker_started"
    assert {"backfill_started", "backfill_batch", "backfill_finished"} <= set(events)
    [done] = [line for line in lines if line["event"] == "backfill_worker_done"]
    assert [(r["name"], r["outcome"], r["rows"]) for r in done["backfills"]] == [
        ("shop.fill_cents", "finished", 2500)]
    again, lines = run_worker({"SVCMIG_TASK": "backfills"})  # nothing left: quick, still 0
    assert again == 0 and "backfill_batch" not in {line["event"] for line in lines}
    # the module is an entry point of its own too
    assert backfills.main({}) == 0


def test_a_failed_backfill_exits_1_and_logs_backfill_failed(
        shop: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backfills, "master_url", lambda: database_url)
    add_backfill(shop, BROKEN, BROKEN_SQL)
    code, lines = run_worker({"SVCMIG_TASK": "backfills"})
    assert code == 1
    [failed] = [line for line in lines if line["event"] == "backfill_failed"]
    assert failed["backfill"] == "shop.divide" and "division by zero" in failed["message"]
    assert filled(database_url) == 2500  # the other one still ran
    # a runner that cannot run at all (no such backfill) says so the same way
    code, lines = run_worker({"SVCMIG_TASK": "backfills", "SVCMIG_BACKFILLS": "shop.nope"})
    assert code == 1 and lines[-1]["event"] == "backfill_failed"
    assert "no backfill 'shop.nope'" in lines[-1]["message"]


def test_the_deploy_starts_the_backfills_and_does_not_wait(shop: Path, database_url: str,
                                                           aws: None) -> None:
    started, lines = on_event(resource_event("Create", shop))
    [task] = backfill_tasks()
    assert started == {"PhysicalResourceId": "svcmig-test-backfills",
                       "Data": {"Task": task["taskArn"]}}
    assert task["environment"] == {"SVCMIG_TASK": "backfills", "SVCMIG_BACKFILLS": ""}
    assert task["overrides"]["containerOverrides"][0]["name"] == "worker"
    assert [line["event"] for line in lines] == ["backfill_worker_start"]
    assert filled(database_url) == 0  # started, not run: the worker task does that
    code, _ = run_worker(task["environment"])
    assert code == 0 and filled(database_url) == 2500
    # an update that changes neither hash, a rollback, a delete: nothing more is started
    same = {"MigrationsHash": migrations_digest(shop), "BackfillsHash": backfills_digest(shop)}
    assert on_event(resource_event("Update", shop, old=same))[0]["Data"] == {
        "Skipped": "unchanged"}
    rollback = resource_event("Update", shop, old={"MigrationsHash": "n" * 64})
    rollback["ResourceProperties"]["MigrationsHash"] = "o" * 64
    rollback["OldResourceProperties"]["MigrationsHash"] = migrations_digest(shop)
    assert on_event(rollback)[0]["Data"] == {"Skipped": "rollback"}
    assert on_event(resource_event("Delete", shop))[0]["Data"] == {"Skipped": "delete"}
    assert len(backfill_tasks()) == 1
    # a new backfill file starts it again
    add_backfill(shop, "2026-11-04T0900__shop__touch.sql",
                 "UPDATE items SET price = price WHERE id >= :start AND id < :end;\n")
    assert "Task" in on_event(resource_event("Update", shop, old=same))[0]["Data"]
    assert len(backfill_tasks()) == 2


def test_a_start_that_fails_never_fails_the_deploy(shop: Path, database_url: str, aws: None,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The resource comes after contract: failing it would roll the code back. It succeeds
    with `Data.Failed` and a `backfill_start_failed` line (the backfill alarm)."""
    worker = os.environ["SVCMIG_WORKER"]
    monkeypatch.setenv("SVCMIG_WORKER", json.dumps({**json.loads(worker),
                                                    "task_definition": "no-such-task"}))
    started, lines = on_event(resource_event("Create", shop))
    assert started["Data"]["Failed"].startswith("the deploy could not start the backfills")
    assert lines[-1]["event"] == "backfill_start_failed"
    monkeypatch.delenv("SVCMIG_WORKER")
    started, lines = on_event(resource_event("Create", shop))
    assert "SVCMIG_WORKER is not set" in started["Data"]["Failed"]
    other = resource_event("Create", shop)
    other["ResourceProperties"]["MigrationsHash"] = "x" * 64  # a bundle of another release
    assert "not the release being deployed" in on_event(other)[0]["Data"]["Failed"]
    monkeypatch.setenv("SVCMIG_WORKER", worker)
    assert backfill_tasks() == []


def test_a_project_without_backfills_starts_no_task(tmp_path: Path, database_url: str,
                                                    aws: None,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    root = write_project(tmp_path / "bare", {"shop": {
        "2026-11-01T0900__shop__create_items.sql": "CREATE TABLE items (id bigint);\n"}})
    monkeypatch.setenv("SVCMIG_PROJECT_ROOT", str(root))
    assert on_event(resource_event("Create", root))[0]["Data"] == {"Skipped": "no backfills"}
    assert backfill_tasks() == []
    assert migrator.operation_handler({"operation": "backfill_check"})["failed"] == 0


class Answer(NamedTuple):
    exit_code: int
    output: str
    stdout: str
    stderr: str


def timeless(result: Any) -> Answer:
    """A command's exit code and output without `idle_seconds` (time passes between two
    calls)."""
    def steady(text: str) -> str:
        return re.sub(r'"idle_seconds": [0-9.]+', '"idle_seconds": 0', text)

    return Answer(result.exit_code, steady(result.output), steady(result.stdout),
                  result.stderr)


def remote(*args: str) -> Any:
    """`svcmig remote --stage prod ARGS` with the operations function invoked in-process (what
    Lambda's synchronous invoke returns)."""
    from migrations_runtime.cli import remote as remote_cli
    from migrations_runtime.cli.main import cli

    def invoke(name: str, payload: dict[str, Any]) -> dict[str, Any]:
        assert name == "svcmig-prod-migrator-operations"
        with contextlib.redirect_stdout(io.StringIO()):
            answer = migrator.operation_handler({**payload, "caller": "ops"})
        return dict(json.loads(json.dumps(answer)))

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(remote_cli, "invoke", invoke)
        return timeless(CliRunner().invoke(cli, ["remote", "--stage", "prod", *args]))


def local(database_url: str, *args: str) -> Any:
    from migrations_runtime.cli.main import cli

    return timeless(CliRunner().invoke(cli, ["backfill", *args, "--database-url", database_url]))


def test_remote_backfill_status_pause_resume_retry_as_the_local_commands(
        shop: Path, database_url: str, aws: None) -> None:
    add_backfill(shop, BROKEN, BROKEN_SQL)
    # before anything ran: the same lines and exit code as `svcmig backfill status`
    for args in (("status",), ("status", "--json")):
        here, there = local(database_url, *args), remote("backfill", *args)
        assert (there.exit_code, there.output) == (here.exit_code, here.output), args
    assert "shop.fill_cents" in there.output
    # pause before it starts, then a deploy's runner leaves it waiting
    paused = remote("backfill", "pause", "shop.fill_cents")
    assert paused.exit_code == 0 and paused.output.startswith("shop.fill_cents paused")
    code, _ = run_worker({"SVCMIG_TASK": "backfills"})
    assert code == 1  # shop.divide failed
    assert filled(database_url) == 0
    for args in (("status",), ("status", "--json")):
        here, there = local(database_url, *args), remote("backfill", *args)
        assert (there.exit_code, there.output) == (here.exit_code, here.output) == (
            1, here.output), args
    rows = {r["name"]: r["state"] for r in json.loads(there.output)["backfills"]}
    assert rows == {"shop.fill_cents": "paused", "shop.divide": "failed"}
    # resume: the state changes and the worker starts again, for that backfill only
    resumed = remote("backfill", "resume", "shop.fill_cents")
    assert resumed.exit_code == 0, resumed.output
    assert "started the backfill worker" in resumed.output
    [task] = backfill_tasks()
    assert task["environment"]["SVCMIG_BACKFILLS"] == "shop.fill_cents"
    assert run_worker(task["environment"])[0] == 0 and filled(database_url) == 2500
    # refusals: as the local commands, one line on stderr, exit 1 (2 for an unknown name)
    refused = remote("backfill", "resume", "shop.fill_cents")
    assert refused.exit_code == 1 and refused.stdout == ""
    assert refused.stderr.startswith("error: shop.fill_cents is finished")
    assert remote("backfill", "pause", "shop.nope").exit_code == 2
    assert remote("backfill", "run", "shop.fill_cents").exit_code == 1
    # retry of the failed one (once its cause is fixed)
    retried = remote("backfill", "retry", "shop.divide")
    assert retried.exit_code == 0 and "shop.divide can run again" in retried.output
    assert len(backfill_tasks()) == 2
    # no SQL, no other action
    assert migrator.operation_handler({"operation": "backfill", "action": "sql"})["ok"] is False


def test_the_check_counts_failed_and_stalled_backfills(
        shop: Path, database_url: str, aws: None) -> None:
    def check() -> dict[str, Any]:
        with contextlib.redirect_stdout(io.StringIO()) as out:
            answer = migrator.operation_handler({"operation": "backfill_check",
                                                 "caller": "schedule"})
        [line] = [json.loads(x) for x in out.getvalue().splitlines()
                  if json.loads(x)["event"] == "backfill_check"]
        assert {k: answer[k] for k in ("failed", "stalled")} == \
            {k: line[k] for k in ("failed", "stalled")}
        return answer

    assert check()["failed"] == check()["stalled"] == 0  # pending is neither
    add_backfill(shop, BROKEN, BROKEN_SQL)
    run_worker({"SVCMIG_TASK": "backfills", "SVCMIG_BACKFILLS": "shop.divide"})
    assert check()["failed_backfills"] == ["shop.divide"]
    # a runner killed mid-way leaves its row running with no runner: stalled once it is old
    query(database_url, "INSERT INTO svcmig.backfills (name, service, file, checksum, state, "
          "key_table, key_column, batch_size) SELECT 'shop.fill_cents', 'shop', "
          "'services/shop/backfills/" + FILL + "', 'x', 'running', 'items', 'id', 500")
    query(database_url, "UPDATE svcmig.backfills SET key_min = 1, key_end = 2501, "
          "next_key = 1001 WHERE name = 'shop.fill_cents'")
    assert check()["stalled"] == 0  # just updated
    query(database_url, "UPDATE svcmig.backfills SET updated_at = now() - interval '20 min' "
          "WHERE name = 'shop.fill_cents'")
    assert check()["stalled_backfills"] == ["shop.fill_cents"]
    # `remote backfill run` starts a worker for the interrupted one
    ran = remote("backfill", "run")
    assert ran.exit_code == 0 and "started the backfill worker" in ran.output
