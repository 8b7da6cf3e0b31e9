"""The deploy-time migrator's Lambda entry points, for a CDK `Provider` with `is_complete`:

- `handler` (on_event): Delete, a rollback (the function holds the release CloudFormation
  leaves, by the migration files' digest) and an Update whose migration files did not change
  answer at once without touching the database; Create and Update of a new release start the
  worker task (`start_worker`; `infra.migrator.task` runs the phase there, with no 15-minute
  limit); a bundle of neither release is refused.
- `is_complete_handler`: reports the run's end from its record (`runs`) and its task; a
  failure's reason (the file and line, the statement, the Postgres error) is what the
  CloudFormation console shows. A failed contract phase does not fail its resource.
- `operation_handler`: `svcmig remote` (status, repair, backfill), in a function of its own.
- the `Backfills` resource (Phase "backfills", after contract) starts the backfill runner and
  answers at once (`backfills.on_deploy`).

The worker and the operations connect to the cluster endpoint with the master secret, never
through RDS Proxy: the engine needs a real session for its advisory lock and `SET ROLE`.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
from psycopg import sql

from migrations_runtime.engine.apply import RunSettings, migrate, read_plan
from migrations_runtime.engine.errors import MigrationFailed, SvcmigError
from migrations_runtime.engine.load import Phase
from migrations_runtime.engine.lockwait import LockPolicy
from migrations_runtime.engine.manifest import MANIFEST_NAME, load_manifest
from migrations_runtime.engine.plan import releases_behind
from migrations_runtime.engine.repair import repair
from migrations_runtime.engine.report import status_text
from migrations_runtime.engine.validate import Graph, build_graph

from . import runs
from .digest import migrations_digest

PHASES = ("expand", "contract")
MAX_REASON = 1500  # CloudFormation rejects responses over 4 KiB; leave room for the framework's
LOCK_WAIT_CAP_SECONDS = 600.0
SAFETY_MARGIN_SECONDS = 120.0  # left for reporting after the lock wait gives up


class MigrationError(Exception):
    """Raised to fail the custom resource; its message becomes the CloudFormation reason."""


def project_root() -> Path:
    """The bundle's root (/var/task in Lambda): alembic.ini, services/*/migrations, manifest."""
    explicit = os.environ.get("SVCMIG_PROJECT_ROOT") or os.environ.get("LAMBDA_TASK_ROOT")
    return Path(explicit) if explicit else Path(__file__).resolve().parents[2]


def log(line: dict[str, object]) -> None:
    """One JSON line per event on stdout, which Lambda sends to CloudWatch Logs."""
    print(json.dumps(line, default=str), file=sys.stdout, flush=True)


def read_secret(arn: str) -> dict[str, Any]:
    import boto3  # provided by the Lambda runtime

    client = boto3.client("secretsmanager")
    value: dict[str, Any] = json.loads(client.get_secret_value(SecretId=arn)["SecretString"])
    return value


def database_url(secret: dict[str, Any]) -> str:
    """A URL from an RDS secret (host, port, username, password, dbname). `SVCMIG_DB_HOST`, set
    by the stack to the cluster's writer endpoint, wins over the secret's host."""
    # quoted: tests point it at a Unix socket directory
    host = quote(str(os.environ.get("SVCMIG_DB_HOST") or secret["host"]), safe="")
    port = os.environ.get("SVCMIG_DB_PORT") or secret.get("port", 5432)
    user, password = quote(str(secret["username"]), safe=""), quote(str(secret["password"]),
                                                                     safe="")
    dbname = quote(str(secret.get("dbname") or "postgres"), safe="")
    sslmode = os.environ.get("SVCMIG_DB_SSLMODE", "require")
    return f"postgresql://{user}:{password}@{host}:{port}/{dbname}?sslmode={sslmode}"


def master_url() -> str:
    """The cluster's URL as the master user, from the stack's master secret
    (`SVCMIG_MASTER_SECRET_ARN`): the worker, the poller and the operations connect with it."""
    return database_url(read_secret(os.environ["SVCMIG_MASTER_SECRET_ARN"]))


def release_of_bundle(event: dict[str, Any], digest: str) -> str:
    """Which release the function's migrations are, from the files' digest: "new" (the
    properties CloudFormation moves to: a deploy), "old" (the properties it moves away from:
    CloudFormation rolls back while the function still holds the failed release's files, as
    it rolls a custom resource back before the function it depends on), or "other"."""
    if event.get("ResourceProperties", {}).get("MigrationsHash") == digest:
        return "new"
    if event.get("OldResourceProperties", {}).get("MigrationsHash") == digest:
        return "old"
    return "other"


def _statement_line(err: MigrationFailed) -> str:
    """The source line the error points at, so the reason shows the statement."""
    if err.line is None:
        return ""
    try:
        text = err.path.read_text().splitlines()[err.line - 1].strip()
    except (OSError, IndexError):
        return ""
    return text[:200]


def failure_reason(err: SvcmigError, root: Path) -> str:
    """What CloudFormation shows: the file (relative to the project) and line, the statement,
    the Postgres error and the engine's advice."""
    if isinstance(err, MigrationFailed):
        path = err.path.relative_to(root) if err.path.is_relative_to(root) else err.path
        where = f"{path}:{err.line}" if err.line else f"{path}"
        statement = _statement_line(err)
        reason = f"{where}: revision {err.revision} failed: {err.message}"
        if statement:
            reason += f" | statement: {statement}"
    else:
        reason = str(err).replace(f"{root}/", "")
    return cap_reason(reason)


def database_error(err: Exception) -> str:
    """A database error outside any revision, in one line."""
    first = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
    return f"database error: {first}"


def cap_reason(reason: str) -> str:
    """At most `MAX_REASON` characters (the start says what failed)."""
    return reason if len(reason) <= MAX_REASON else reason[: MAX_REASON - 3] + "..."


def load_graph(root: Path) -> Graph:
    """The build-time manifest when the bundle has one (no file parsing for planning), else
    the migration files."""
    path = root / MANIFEST_NAME
    return load_manifest(path, root) if path.is_file() else build_graph(root)


# Which app roles the migrator has given their secret's password (roles are the cluster's; the
# stage has one database).
PASSWORDS_SET_TABLE = "svcmig.app_passwords_set"


def sync_app_passwords(url: str, app_secrets: dict[str, str]) -> list[str]:
    """Give each `<service>_app` role the password of its own secret once, when the migrator
    first sees it (it has just created the role) or the secret is a new one (another ARN), so
    RDS Proxy (which logs in with that secret) can connect; `PASSWORDS_SET_TABLE` remembers
    which secret it used. From then on the secret's rotation is the
    only writer of the password, so a deploy can never race a rotation (write AWSCURRENT back
    over the password a rotation in progress just set). The password is sent as a SCRAM
    verifier computed here, never in clear text, so it cannot end up in a server log."""
    synced = []
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        conn.execute(f"CREATE TABLE IF NOT EXISTS {PASSWORDS_SET_TABLE} (role name PRIMARY KEY, "
                     "secret text, set_at timestamptz NOT NULL DEFAULT now()); "
                     f"ALTER TABLE {PASSWORDS_SET_TABLE} ADD COLUMN IF NOT EXISTS secret text")
        for service, arn in sorted(app_secrets.items()):
            with conn.transaction():  # again when the secret itself was replaced (a new ARN)
                first = conn.execute(
                    f"INSERT INTO {PASSWORDS_SET_TABLE} AS s (role, secret) VALUES (%s, %s) "
                    "ON CONFLICT (role) DO UPDATE SET secret = EXCLUDED.secret, set_at = now() "
                    "WHERE s.secret IS DISTINCT FROM EXCLUDED.secret RETURNING role",
                    (f"{service}_app", arn)).fetchone()
                if first is None:
                    continue
                secret = read_secret(arn)
                user = str(secret["username"])
                if user != f"{service}_app":
                    raise MigrationError(f"secret of {service} names user {user!r}, expected "
                                         f"{service}_app")
                verifier = conn.pgconn.encrypt_password(str(secret["password"]).encode(),
                                                        user.encode(), b"scram-sha-256")
                conn.execute(sql.SQL("ALTER ROLE {} WITH LOGIN PASSWORD {}").format(
                    sql.Identifier(user), sql.Literal(verifier.decode())))
            synced.append(service)
    return synced


def run_settings(seconds_left: float | None) -> RunSettings:
    """The CLI's defaults, bounded by the time the worker has left (`seconds_left`, None: no
    bound) minus time to report: the wait for the migrator lock, each revision's lock budget
    and each revision's `statement_timeout` (the time left when it starts), so no statement
    outlives the worker: stopped, it would never report what it did."""
    if seconds_left is None:
        return RunSettings(lock_wait_seconds=LOCK_WAIT_CAP_SECONDS)
    usable = max(10.0, seconds_left - SAFETY_MARGIN_SECONDS)
    policy = LockPolicy()
    return RunSettings(lock_wait_seconds=min(LOCK_WAIT_CAP_SECONDS, usable),
                       lock=replace(policy, budget_seconds=min(policy.budget_seconds, usable)),
                       deadline=time.monotonic() + usable)


REPAIR_ACTIONS = ("applied", "rolled-back", "accept-checksum")
OPERATION_LOCK_WAIT_SECONDS = 30.0  # well inside the client's wait (remote.INVOKE_READ_TIMEOUT)


def operation(event: dict[str, Any]) -> dict[str, Any]:
    """An operator's direct invocation (`svcmig remote`), never CloudFormation's: `status`,
    `repair` of one revision (`revision`, `action`), or `backfill` (`action`, `names`: see
    `backfills.operation`), exactly what the local commands do, never SQL; and the schedule's
    `backfill_check` (`backfills.check`), which feeds the backfill alarms. Who may invoke is
    IAM's decision (the stage's operators policy); each call is logged with the caller the
    client names (CloudTrail records the real one). Returns what the local command would print
    (`text`), `ok`, and for status the services and anomalies."""
    name = event.get("operation")
    log({"event": "operation", "operation": name, "caller": event.get("caller"),
         "revision": event.get("revision"), "action": event.get("action"),
         "names": event.get("names")})
    root = project_root()
    try:
        url = master_url()
        if name == "status":
            plan = read_plan(url, root, graph=load_graph(root))
            return {"ok": not plan.errors, "text": status_text(plan),
                    "services": [s.as_dict() for s in plan.services],
                    "anomalies": [a.as_dict() for a in plan.anomalies]}
        if name == "repair":
            revision, action = event.get("revision"), event.get("action")
            if not isinstance(revision, str) or action not in REPAIR_ACTIONS:
                return {"ok": False, "text": "repair needs a revision and one of "
                        f"{', '.join(REPAIR_ACTIONS)}"}
            return {"ok": True, "text": repair(url, root, revision, action,
                                               lock_wait_seconds=OPERATION_LOCK_WAIT_SECONDS)}
        if name in ("backfill", "backfill_check"):
            from . import backfills

            return backfills.operation(event) if name == "backfill" else backfills.check()
        return {"ok": False, "text": f"unknown operation {name!r}: use status, repair or "
                "backfill"}
    except SvcmigError as err:
        return {"ok": False, "text": cap_reason(str(err))}
    except psycopg.Error as err:
        return {"ok": False, "text": database_error(err)}


def operation_handler(event: Any, context: Any = None) -> dict[str, Any]:
    """The operations function's entry point (`svcmig remote`): `operation` only, whatever
    the event looks like; the deploy's `handler` is another function, which only the Provider
    framework may invoke."""
    if not isinstance(event, dict):
        return {"ok": False, "text": "an operation is a JSON object: {\"operation\": ...}"}
    return operation(event)


def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    """Provider framework `on_event` entry point: decides what the event asks and, for a run,
    starts the worker task (`start_worker`); `is_complete_handler` reports its end."""
    request = event["RequestType"]
    props = event.get("ResourceProperties", {})
    phase = props.get("Phase")
    if phase == "backfills":  # after contract: start the runner, never wait, never fail
        from . import backfills

        return backfills.on_deploy(event)
    if request == "Delete":  # whatever the properties say: the database keeps what it has
        return {"PhysicalResourceId": event.get("PhysicalResourceId") or "svcmig-deleted",
                "Data": {"Applied": 0, "Skipped": "delete"}}
    if phase not in PHASES:
        raise MigrationError(f"custom resource property Phase must be one of {PHASES}, "
                             f"got {phase!r}")
    stage = props.get("Stage", "default")
    physical_id = event.get("PhysicalResourceId") or f"svcmig-{stage}-{phase}"  # stable per stage
    heads = props.get("CodeHeads", {})
    log({"event": "custom_resource", "request": request, "phase": phase,
         "migrations_hash": props.get("MigrationsHash"), "code_heads": heads})
    root = project_root()
    bundle = release_of_bundle(event, migrations_digest(root))
    if bundle == "old":  # a rollback: never a downgrade, never the failed release's revisions
        log({"event": "rollback_noop", "phase": phase, "to": heads})
        return {"PhysicalResourceId": physical_id,
                "Data": {"Applied": 0, "Skipped": "rollback"}}
    if bundle == "other":
        raise MigrationError("the migrator's migrations are neither the release CloudFormation "
                             "deploys nor the one it leaves (MigrationsHash differs from the "
                             "bundle's): redeploy from one synth (cdk deploy --all)")
    old = event.get("OldResourceProperties", {}).get("MigrationsHash")
    if request == "Update" and old == props.get("MigrationsHash"):
        # another property changed (a timeout), or CloudFormation rolls such an update back
        log({"event": "unchanged", "phase": phase})
        return {"PhysicalResourceId": physical_id,
                "Data": {"Applied": 0, "Skipped": "unchanged"}}
    return {"PhysicalResourceId": physical_id,
            RUN_KEY: start_worker(event["RequestId"], phase, physical_id,
                                  props["MigrationsHash"])}


def run_phase(phase: Phase, physical_id: str, settings: RunSettings) -> dict[str, Any]:
    """Apply `phase`'s pending revisions (and, for expand, the app roles' passwords) as the
    worker does: the custom resource's answer ({"PhysicalResourceId", "Data"}), or
    `MigrationError` with the reason CloudFormation shows. A failed contract phase answers
    with `Data.Failed` instead: the new code is live and needs nothing contract removes."""
    root = project_root()
    url = master_url()
    try:
        graph = load_graph(root)
        result = migrate(url, root, phase, settings=settings, log=log, graph=graph)
        app_secrets = json.loads(os.environ.get("SVCMIG_APP_SECRETS", "{}"))
        synced = sync_app_passwords(url, app_secrets) if phase == "expand" else []
    except SvcmigError as err:
        reason = failure_reason(err, root)
        if phase == "contract":
            # Failing the resource would roll the code back to the old one, which may need
            # what an earlier contract revision of this run already removed. The alarm on this
            # line says it instead.
            log({"event": "contract_failed", "phase": phase, "reason": reason})
            return {"PhysicalResourceId": physical_id,
                    "Data": {"Applied": len(getattr(err, "applied", ())),
                             "Failed": reason}}
        log({"event": "failed", "phase": phase, "reason": reason})
        raise MigrationError(reason) from err
    except psycopg.Error as err:
        reason = database_error(err)
        log({"event": "failed", "phase": phase, "reason": reason})
        raise MigrationError(reason) from err
    behind = releases_behind(graph, result.plan) if phase == "expand" else []
    if behind:  # fail before the code goes live; what was applied is safe for the old code
        reason = cap_reason("; ".join(behind))
        log({"event": "failed", "phase": phase, "reason": reason})
        raise MigrationError(reason)
    summary = result.as_dict()
    pending = sum(len(s.pending) for s in result.plan.services)
    log({"event": "done", **summary, "passwords_synced": synced})
    locks = result.locks
    return {"PhysicalResourceId": physical_id,
            "Data": {"Applied": len(result.results), "Pending": pending,
                     "Warnings": len(result.plan.warnings) + len(result.hold_warnings),
                     "LockTimeouts": locks.attempts, "LockWaitMs": locks.waited_ms_total,
                     "LockWaitMaxMs": locks.waited_ms_max,
                     "LongestHoldMs": locks.longest_hold_ms,
                     "LongestHoldTable": locks.longest_hold_table or "",
                     "LongestHoldRevision": locks.longest_hold_revision or ""}}


# The worker: an ECS Fargate task of the migrator's own bundle (`infra.migrator.task`), started
# by `handler` and watched by `is_complete_handler`, so a run has the custom resource's whole
# time, not Lambda's 15 minutes. `SVCMIG_WORKER` (set by the stack) says where it runs.
RUN_KEY = "SvcmigRun"  # in on_event's answer, which the framework hands to is_complete
RUN_FIELDS = ("run", "phase", "task", "cluster", "deadline")
STOP_GRACE_SECONDS = 60.0  # past the run's deadline before the poller stops the worker
# A stopped task whose record cannot be read (the database unreachable from the poller) is
# polled again this long after it stopped, then reported.
UNREADABLE_GRACE_SECONDS = 120.0


def worker_settings() -> dict[str, Any]:
    """`SVCMIG_WORKER`: cluster, task_definition, container, subnets, security_groups,
    budget_seconds (the run's time from its start to its deadline)."""
    raw = os.environ.get("SVCMIG_WORKER")
    if not raw:
        raise MigrationError("SVCMIG_WORKER is not set: the migrator has no worker to start "
                             "(deploy the stack as synthesized)")
    value: dict[str, Any] = json.loads(raw)
    return value


def started_by(run_id: str) -> str:
    """The worker task's `startedBy` tag for a request (ECS allows 36 characters)."""
    return "svcmig-" + hashlib.sha256(run_id.encode()).hexdigest()[:29]


def run_worker_task(ecs: Any, worker: Mapping[str, Any], environment: Mapping[str, str],
                    started_by: str, what: str) -> str:
    """Start one worker task (Fargate, the worker's private subnets, no public IP) with
    `environment` set in its container; returns the task's ARN. Raises `MigrationError` with
    ECS's reasons when it started none (`what` names the task in the message)."""
    answer = ecs.run_task(
        cluster=worker["cluster"], taskDefinition=worker["task_definition"],
        launchType="FARGATE", count=1, startedBy=started_by,
        networkConfiguration={"awsvpcConfiguration": {
            "subnets": worker["subnets"], "securityGroups": worker["security_groups"],
            "assignPublicIp": "DISABLED"}},
        overrides={"containerOverrides": [{
            "name": worker["container"],
            "environment": [{"name": k, "value": v} for k, v in environment.items()]}]})
    tasks = answer.get("tasks") or []
    if not tasks:
        why = "; ".join(f"{f.get('reason')} {f.get('detail') or ''}".strip()
                        for f in answer.get("failures") or []) or "no task and no reason"
        raise MigrationError(cap_reason(f"could not start the {what} task: {why}"))
    return str(tasks[0]["taskArn"])


def start_worker(run_id: str, phase: str, physical_id: str, migrations_hash: str
                 ) -> dict[str, Any]:
    """Start the worker task for CloudFormation request `run_id` (or find the one a repeated
    start of the same request already started: tagged `started_by(run_id)`); returns what the
    poller needs (the task's ARN, the run, its deadline in epoch seconds). The worker runs only
    if its bundle holds the release `migrations_hash` names."""
    import boto3

    worker = worker_settings()
    ecs = boto3.client("ecs")
    tag = started_by(run_id)
    earlier = ecs.list_tasks(cluster=worker["cluster"], startedBy=tag,
                             desiredStatus="RUNNING").get("taskArns") or \
        ecs.list_tasks(cluster=worker["cluster"], startedBy=tag,
                       desiredStatus="STOPPED").get("taskArns")
    if earlier:
        [task] = ecs.describe_tasks(cluster=worker["cluster"], tasks=earlier[:1])["tasks"]
        overrides = task.get("overrides", {}).get("containerOverrides", [{}])[0]
        given = {e["name"]: e["value"] for e in overrides.get("environment", [])}
        log({"event": "worker_found", "phase": phase, "run": run_id, "task": task["taskArn"]})
        return {"run": run_id, "phase": phase, "task": task["taskArn"],
                "cluster": worker["cluster"], "deadline": float(given["SVCMIG_DEADLINE"])}
    deadline = time.time() + float(worker["budget_seconds"])
    environment = {"SVCMIG_RUN_ID": run_id, "SVCMIG_PHASE": phase,
                   "SVCMIG_PHYSICAL_ID": physical_id, "SVCMIG_DEADLINE": f"{deadline:.0f}",
                   "SVCMIG_MIGRATIONS_HASH": migrations_hash}
    arn = run_worker_task(ecs, worker, environment, tag, "migration worker")
    log({"event": "worker_started", "phase": phase, "run": run_id, "task": arn,
         "deadline": deadline})
    return {"run": run_id, "phase": phase, "task": arn,
            "cluster": worker["cluster"], "deadline": float(f"{deadline:.0f}")}


def _task(run: dict[str, Any]) -> dict[str, Any]:
    """The run's task as ECS describes it; "PENDING" while ECS does not list it yet (its reads
    are eventually consistent just after RunTask)."""
    import boto3

    found = boto3.client("ecs").describe_tasks(cluster=run["cluster"], tasks=[run["task"]])
    tasks = found.get("tasks") or []
    return tasks[0] if tasks else {"lastStatus": "PENDING"}


def _another_worker_runs(run: dict[str, Any]) -> bool:
    """Whether another task of the same request still runs (a repeated start that did not see
    the first task yet): the run is not over while it does."""
    import boto3

    running = boto3.client("ecs").list_tasks(cluster=run["cluster"],
                                             startedBy=started_by(run["run"]),
                                             desiredStatus="RUNNING").get("taskArns") or []
    return any(arn != run["task"] for arn in running)


def _why_stopped(task: dict[str, Any]) -> str:
    codes = [c.get("exitCode") for c in task.get("containers", []) if "exitCode" in c]
    reason = task.get("stoppedReason") or "no reason given"
    return f"{reason}; exit code {codes[0]}" if codes else reason


def _stopped_for(task: dict[str, Any]) -> float:
    """Seconds since the task stopped (0 when ECS does not say)."""
    stopped = task.get("stoppedAt")
    return max(0.0, time.time() - stopped.timestamp()) if stopped is not None else 0.0


class RunFailed(Exception):
    """The run is over and failed: `reason` is what CloudFormation (or the alarm) says."""


def is_complete_handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    """Provider framework `is_complete` entry point: only looks, never starts work. The
    framework fails the resource on any error from it, so only a run that is over and failed
    is a failure: the record says failed, its task stopped without an outcome (killed: nothing
    is re-run), or it passed its deadline (then the task is stopped). A poll that cannot see
    the state (a throttled API, the database unreachable) answers "not yet", until the
    deadline. A failed **contract** run still completes, with `Data.Failed` and a
    `contract_failed` log line (its alarm): the new code is live and a rollback would bring
    back code that needs what a contract revision of the run may already have removed."""
    if RUN_KEY not in event:  # Delete and rollbacks answer at once
        return {"IsComplete": True}
    run = event[RUN_KEY]
    if not isinstance(run, dict) or any(key not in run for key in RUN_FIELDS):
        raise MigrationError(f"malformed {RUN_KEY} in the event: {str(run)[:200]}")
    try:
        return _poll(run)
    except RunFailed as failed:
        reason = cap_reason(str(failed))
        if run["phase"] != "contract":
            log({"event": "failed", "phase": run["phase"], "reason": reason})
            raise MigrationError(reason) from None
        log({"event": "contract_failed", "phase": "contract", "reason": reason})
        return {"IsComplete": True, "Data": {"Applied": 0, "Failed": reason}}


def _poll(run: dict[str, Any]) -> dict[str, Any]:
    deadline = float(run["deadline"])
    try:
        url = master_url()
        record, unreadable = _read_run(url, run["run"])
        task = _task(run) if record is None or record.status == "running" else {}
        if task.get("lastStatus") == "STOPPED" and _another_worker_runs(run):
            task = {"lastStatus": "RUNNING"}
    except Exception as err:  # noqa: BLE001 - any API error: look again, until the deadline
        if time.time() < deadline + STOP_GRACE_SECONDS:
            log({"event": "poll_error", "run": run["run"], "error": repr(err)[:500]})
            return {"IsComplete": False}
        raise RunFailed(f"the {run['phase']} run could not be watched past its deadline: "
                        f"{repr(err)[:300]}") from err
    if record is not None and record.phase != run["phase"]:
        raise RunFailed(f"the run's record is for the {record.phase} phase, not "
                        f"{run['phase']}: a worker was started by hand for this request")
    if record is None or record.status == "running":
        if task.get("lastStatus") != "STOPPED":
            if time.time() < deadline + STOP_GRACE_SECONDS:
                return {"IsComplete": False}
            import boto3

            try:
                boto3.client("ecs").stop_task(cluster=run["cluster"], task=run["task"],
                                              reason="svcmig: past the run's deadline")
            except Exception as err:  # noqa: BLE001 - the run is over either way
                log({"event": "stop_failed", "run": run["run"], "error": repr(err)[:500]})
            raise RunFailed(
                f"the {run['phase']} run passed its deadline and its worker task was stopped "
                "(a transactional revision in progress rolls back); nothing is re-run: see "
                "`svcmig remote --stage STAGE status` (docs/deploy.md, long migrations)")
        record, unreadable = _read_run(url, run["run"])  # it may have ended as the task stopped
        if unreadable and _stopped_for(task) < UNREADABLE_GRACE_SECONDS and \
                time.time() < deadline + STOP_GRACE_SECONDS:
            return {"IsComplete": False}  # the record may say it succeeded: look again
        if record is None or record.status == "running":
            also = f"; {unreadable}" if unreadable else ""
            raise RunFailed(
                f"the {run['phase']} worker task stopped before it finished "
                f"({_why_stopped(task)}){also}; nothing is re-run: see `svcmig remote --stage "
                "STAGE status` (a dirty revision needs `svcmig remote repair`), then deploy "
                "again")
    if record.status == "failed":
        raise RunFailed(record.reason or "the run failed")
    answer = record.result or {}
    data = answer.get("Data", {})
    if run["phase"] == "contract" and "Failed" in data:
        log({"event": "contract_failed", "phase": "contract", "reason": data["Failed"]})
    return {"IsComplete": True, "Data": data}


def _read_run(url: str, run_id: str) -> tuple[runs.Run | None, str]:
    """The run's record, or (None, why) when the database cannot be read now: the task's state
    decides then (still running: poll again)."""
    try:
        return runs.read(url, run_id), ""
    except psycopg.Error as err:
        return None, database_error(err)
