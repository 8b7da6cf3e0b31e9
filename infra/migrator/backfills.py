"""Backfills in AWS: the deploy starts the backfill runner after the code is live and does not
wait for it; operators pause, resume, retry and watch it with `svcmig remote backfill`.

- `main` (`python -m infra.migrator.backfills`, or the worker task with `SVCMIG_TASK=backfills`)
  runs `run_backfills` in the migration worker's own Fargate task (same image, cluster and task
  definition: no 15-minute limit, no second image to build), one JSON line per event on stdout
  (the worker's log group); exit 1 when a backfill failed.
- `on_deploy` is the on_event answer for the `Backfills` custom resource, the API stack's last
  resource (after `contract`): it calls `ecs:RunTask` and answers at once, so CloudFormation
  never waits for a backfill. Why a custom resource rather than an EventBridge rule on the
  stack's UPDATE_COMPLETE: it runs only when the migrations or backfills changed (its properties
  carry both hashes), it reuses the migrator's Provider, function and narrow RunTask grant (no
  new role, no events role passing the task's roles), and its start is tested with moto. Being
  after `contract`, it must never fail: every error is logged as `backfill_start_failed` (the
  backfill alarm) and the resource still succeeds (`Data.Failed` says why).
- `operation` serves `svcmig remote backfill status|pause|resume|retry|run` through the
  operations function: `backfill_status` and `set_state` from the engine, never SQL; resume,
  retry and run start the worker task again. `check` (every few minutes, from a schedule)
  logs how many backfills are failed or stalled, which the backfill alarms read.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg

from migrations_runtime.engine.backfill_runner import (
    BackfillSettings,
    backfill_status,
    project_backfills,
    run_backfills,
    set_state,
    status_report,
)
from migrations_runtime.engine.errors import SvcmigError, UsageProblem

from .digest import backfill_paths, migrations_digest
from .handler import (
    MigrationError,
    cap_reason,
    database_error,
    log,
    master_url,
    project_root,
    release_of_bundle,
    run_worker_task,
    worker_settings,
)

PHASE = "backfills"  # the custom resource's Phase
TASK = "backfills"  # SVCMIG_TASK of the worker task that runs them
STARTED_BY = "svcmig-backfills"  # the tasks' startedBy (ECS allows 36 characters)
# A running backfill whose progress row has not moved for this long is stalled: its runner was
# killed (interrupted), or it has been backing off (a long transaction, lock waits, lag).
STALL_SECONDS = 15 * 60
EXIT_USAGE = 2


def main(environ: Mapping[str, str] = os.environ) -> int:
    """Run every pending backfill (or those named in `SVCMIG_BACKFILLS`, space-separated) to
    its end; exit 1 if one failed, or the runner could not run (logged as `backfill_failed`)."""
    names = environ.get("SVCMIG_BACKFILLS", "").split() or None
    started = time.monotonic()
    log({"event": "backfill_worker_started", "backfills": names or "pending"})
    try:
        results = run_backfills(master_url(), project_root(), names, BackfillSettings(), log=log)
    except SvcmigError as err:
        log({"event": "backfill_failed", "backfill": None, "message": cap_reason(str(err))})
        return 1
    except psycopg.Error as err:  # the connection went away: the row stays, the check sees it
        log({"event": "backfill_failed", "backfill": None, "message": database_error(err)})
        return 1
    log({"event": "backfill_worker_done", "seconds": round(time.monotonic() - started, 1),
         "backfills": [r.as_dict() for r in results]})
    return 1 if any(r.outcome == "failed" for r in results) else 0


def start_worker(names: Sequence[str] = (), why: str = "deploy") -> str:
    """Start the worker task in backfill mode (for `names`, default: every pending one);
    returns its ARN, or raises `MigrationError` with ECS's reason. A second runner of the same
    backfill is harmless: it finds the backfill's lock taken and moves on (`busy`)."""
    import boto3

    worker = worker_settings()
    environment = {"SVCMIG_TASK": TASK, "SVCMIG_BACKFILLS": " ".join(names)}
    arn = run_worker_task(boto3.client("ecs"), worker, environment, STARTED_BY,
                          "backfill worker")
    log({"event": "backfill_worker_start", "why": why, "backfills": list(names) or "pending",
         "task": arn})
    return arn


def on_deploy(event: dict[str, Any]) -> dict[str, Any]:
    """The `Backfills` resource's on_event: start the runner for every pending backfill and
    answer at once. Never raises: this resource comes after `contract`, and a failure here
    would roll the stack back onto old code; `backfill_start_failed` raises the alarm instead."""
    physical_id = event.get("PhysicalResourceId") or \
        f"svcmig-{event.get('ResourceProperties', {}).get('Stage', 'default')}-backfills"

    def answer(**data: object) -> dict[str, Any]:
        return {"PhysicalResourceId": physical_id, "Data": data}

    try:
        request = event["RequestType"]
        if request == "Delete":
            return answer(Skipped="delete")
        props = event.get("ResourceProperties", {})
        old = event.get("OldResourceProperties", {})
        root = project_root()
        bundle = release_of_bundle(event, migrations_digest(root))
        if bundle == "old":  # CloudFormation rolls back: start nothing of the release it leaves
            return answer(Skipped="rollback")
        if bundle == "other":
            raise MigrationError("the migrator's bundle is not the release being deployed "
                                 "(MigrationsHash differs): redeploy from one synth")
        if request == "Update" and all(old.get(k) == props.get(k) for k in (
                "MigrationsHash", "BackfillsHash")):
            return answer(Skipped="unchanged")
        if not backfill_paths(root):
            log({"event": "backfill_none", "request": request})
            return answer(Skipped="no backfills")
        return answer(Task=start_worker(why=f"deploy ({request})"))
    except Exception as err:  # noqa: BLE001 - whatever it is, the deploy must not fail here
        reason = cap_reason(f"the deploy could not start the backfills: {err}")
        log({"event": "backfill_start_failed", "reason": reason})
        return answer(Failed=reason)


def check() -> dict[str, Any]:
    """How many backfills are failed, and how many are stalled (running or interrupted, with
    no progress for `STALL_SECONDS`), in one `backfill_check` line the alarms count."""
    root = project_root()
    if not backfill_paths(root):  # nothing to look at: do not wake the database
        line: dict[str, Any] = {"event": "backfill_check", "failed": 0, "stalled": 0}
        log(line)
        return {"ok": True, **line}
    found = [s.as_dict() for s in backfill_status(master_url(), root)]
    failed = [s["name"] for s in found if s["state"] == "failed"]
    stalled = [s["name"] for s in found if s["state"] in ("running", "interrupted")
               and float(str(s["idle_seconds"] or 0)) >= STALL_SECONDS]
    line = {"event": "backfill_check", "failed": len(failed), "stalled": len(stalled),
            "failed_backfills": failed, "stalled_backfills": stalled}
    log(line)
    return {"ok": not failed and not stalled, **line}


ACTIONS = ("status", "pause", "resume", "retry", "run")


def operation(event: dict[str, Any]) -> dict[str, Any]:
    """`svcmig remote backfill ACTION`: status (every backfill, as `backfill status --json`
    has it), pause / resume / retry NAME (`set_state`; resume and retry start the worker
    again), run [NAMES] (start the worker for backfills that are pending or interrupted).
    Answers `ok`, `text` (what the local command prints) and `exit` when not ok."""
    action, names = event.get("action"), event.get("names") or []
    if action not in ACTIONS or not isinstance(names, list) or \
            not all(isinstance(n, str) for n in names):
        return {"ok": False, "exit": EXIT_USAGE,
                "text": f"backfill needs an action ({', '.join(ACTIONS)}) and a list of names"}
    root = project_root()
    try:
        url = master_url()
        if action == "status":
            report = status_report(url, root)
            return {"ok": not report["invalid"] and all(
                s["state"] != "failed" for s in report["backfills"]), **report}
        if action in ("pause", "resume", "retry"):
            if len(names) != 1:
                return {"ok": False, "exit": EXIT_USAGE, "text": f"{action} needs one name"}
            text = set_state(url, names[0], action, root)
            if action == "pause":
                return {"ok": True, "text": text}
            return _started(text, names, action)
        return _run(url, root, names)
    except UsageProblem as err:
        return {"ok": False, "exit": EXIT_USAGE, "text": cap_reason(str(err))}
    except SvcmigError as err:
        return {"ok": False, "exit": 1, "text": cap_reason(str(err))}
    except psycopg.Error as err:
        return {"ok": False, "exit": 1, "text": database_error(err)}


def _run(url: str, root: Any, names: list[str]) -> dict[str, Any]:
    """Start the worker for `names` (default: every backfill that is not finished, paused or
    failed): what a deploy does, e.g. after a killed runner left one interrupted."""
    known = project_backfills(root)
    unknown = [n for n in names if n not in known]
    if unknown:
        return {"ok": False, "exit": EXIT_USAGE,
                "text": f"no backfill {unknown[0]!r} in this project (known: "
                        f"{', '.join(sorted(known)) or 'none'})"}
    states = {s.backfill.name: s.state for s in backfill_status(url, root)}
    for name in names:
        if states[name] in ("finished", "paused", "failed"):
            hint = {"finished": "it has nothing left to do", "paused": "resume it",
                    "failed": "retry it once its cause is fixed"}[states[name]]
            return {"ok": False, "exit": 1, "text": f"{name} is {states[name]}: {hint}"}
    runnable = [n for n, state in states.items() if state in ("pending", "interrupted",
                                                              "running")]
    if not (names or runnable):
        return {"ok": True, "text": "no backfill to run: each is finished, paused or failed"}
    return _started("", names, "run")


def _started(text: str, names: list[str], why: str) -> dict[str, Any]:
    try:
        task = start_worker(names, why=why)
    except Exception as err:  # noqa: BLE001 - the state changed; say the start did not happen
        again = " ".join(["run", *names])
        return {"ok": False, "exit": 1,
                "text": f"{text + '; ' if text else ''}but the worker did not start: {err}; "
                        f"`svcmig remote --stage STAGE backfill {again}` starts it"}
    started = f"started the backfill worker (task {task.rsplit('/', 1)[-1]})"
    return {"ok": True, "task": task, "text": f"{text}; {started}" if text else started}


if __name__ == "__main__":
    sys.exit(main())
