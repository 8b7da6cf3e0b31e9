"""`svcmig remote --stage STAGE status|repair|backfill`: the migrator of a deployed stage, for
operators who cannot reach its database (isolated subnets, no bastion). The migrator function
runs the same `status`, `repair` and backfill status/pause/resume/retry as the local commands
(never SQL; resume, retry and run start the backfill worker task), on a function of its own
(`svcmig-<stage>-migrator-operations`), and answers with what they would print; output and
exit codes are the local commands'. Invoking it needs the stage's operators policy
(`svcmig-<stage>-migrator-operators`); boto3 (the `services` or `infra` extra) and the usual
AWS credentials are used.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

import click

from .backfill import status_ok, status_text
from .common import (
    EXIT_PROBLEM,
    EXIT_USAGE,
    echo_json,
    fail,
    json_option,
    repair_action_options,
    require_action,
)

STAGE_RE = re.compile(r"dev|prod|preview-[1-9][0-9]{0,5}")


# The operations function's timeout is 5 minutes (its repair waits at most 30 s for the
# migrator lock); one invocation, never retried: a retried repair would act twice.
INVOKE_READ_TIMEOUT = 330


def function_name(stage: str) -> str:
    """The operations function of `stage` (named so by infra/migrations_resources.py)."""
    return f"svcmig-{stage}-migrator-operations"


def invoke(name: str, payload: dict[str, Any]) -> dict[str, Any]:
    """Invoke the operations function synchronously; its answer, or a one-line error."""
    try:
        import boto3
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:
        fail("svcmig remote needs boto3: pip install 'svcmig[services]'", EXIT_USAGE)
    try:
        caller = boto3.client("sts").get_caller_identity()["Arn"]
        client = boto3.client("lambda", config=Config(
            read_timeout=INVOKE_READ_TIMEOUT, retries={"total_max_attempts": 1}))
        answer = client.invoke(FunctionName=name,
                               Payload=json.dumps({**payload, "caller": caller}).encode())
        body = json.loads(answer["Payload"].read() or b"null")
    except (BotoCoreError, ClientError) as err:
        fail(f"cannot invoke {name}: {err}")
    except ValueError:
        fail(f"{name} answered something that is not JSON")
    if answer.get("FunctionError"):
        message = body.get("errorMessage", body) if isinstance(body, dict) else body
        fail(f"{name} failed: {message}")
    if not isinstance(body, dict) or "ok" not in body:
        fail(f"{name} answered {str(body)[:200]!r}, not an svcmig answer: is the stage "
             "deployed with this version of svcmig?")
    return body


@click.group("remote")
@click.option("--stage", required=True, help="dev, prod or preview-<n>")
@click.pass_context
def remote(ctx: click.Context, stage: str) -> None:
    """Status, repair and backfills of a deployed stage, through its migrator function."""
    if not STAGE_RE.fullmatch(stage):
        raise click.BadParameter("use dev, prod or preview-<number>", param_hint="--stage")
    ctx.obj = function_name(stage)


@remote.command("status")
@json_option
@click.pass_obj
def remote_status(name: str, as_json: bool) -> None:
    """What `svcmig status` says of the stage's database. Exit 1 on errors."""
    result = invoke(name, {"operation": "status"})
    if "services" not in result:  # it could not read the database
        fail(str(result.get("text")))
    click.echo(json.dumps({"services": result["services"], "anomalies": result["anomalies"]},
                          indent=2) if as_json else result["text"])
    if not result["ok"]:
        sys.exit(EXIT_PROBLEM)


@remote.command("repair")
@click.argument("revision")
@repair_action_options
@json_option
@click.pass_obj
def remote_repair(name: str, revision: str, action: str | None, as_json: bool) -> None:
    """What `svcmig repair` does, on the stage's database."""
    action = require_action(action)
    result = invoke(name, {"operation": "repair", "revision": revision, "action": action})
    if not result["ok"]:
        fail(str(result.get("text")))
    click.echo(json.dumps({"revision": revision, "action": action, "result": result["text"]},
                          indent=2) if as_json else result["text"])


@remote.group("backfill")
def remote_backfill() -> None:
    """The stage's backfills (`svcmig backfill`, remotely): the deploy starts them after the
    code is live; these watch, pause and restart them."""


def _backfill(name: str, action: str, names: list[str]) -> dict[str, Any]:
    """One backfill operation; a refusal exits as the local command would (1, or 2 for an
    unknown name)."""
    result = invoke(name, {"operation": "backfill", "action": action, "names": names})
    if not result["ok"] and "backfills" not in result:
        fail(str(result.get("text")), int(result.get("exit", EXIT_PROBLEM)))
    return result


@remote_backfill.command("status")
@json_option
@click.pass_obj
def remote_backfill_status(name: str, as_json: bool) -> None:
    """Every backfill and how far it is on the stage's database. Exit 1 if one failed or a
    file is invalid."""
    result = _backfill(name, "status", [])
    report = {"backfills": result["backfills"], "invalid": result.get("invalid", [])}
    if as_json:
        echo_json(report)
    else:
        click.echo(status_text(report))
    if not status_ok(report):
        sys.exit(EXIT_PROBLEM)


@remote_backfill.command("pause")
@click.argument("backfill")
@click.pass_obj
def remote_backfill_pause(name: str, backfill: str) -> None:
    """Stop BACKFILL before its next batch (its runner moves on); `resume` continues it."""
    click.echo(_backfill(name, "pause", [backfill])["text"])


@remote_backfill.command("resume")
@click.argument("backfill")
@click.pass_obj
def remote_backfill_resume(name: str, backfill: str) -> None:
    """Let a paused BACKFILL run again and start the backfill worker for it."""
    click.echo(_backfill(name, "resume", [backfill])["text"])


@remote_backfill.command("retry")
@click.argument("backfill")
@click.pass_obj
def remote_backfill_retry(name: str, backfill: str) -> None:
    """Run a failed BACKFILL again from the batch that failed (after fixing its cause)."""
    click.echo(_backfill(name, "retry", [backfill])["text"])


@remote_backfill.command("run")
@click.argument("backfills", nargs=-1)
@click.pass_obj
def remote_backfill_run(name: str, backfills: tuple[str, ...]) -> None:
    """Start the backfill worker for BACKFILLS (default: every one not finished, paused or
    failed), as a deploy does: e.g. for one a stopped runner left interrupted."""
    click.echo(_backfill(name, "run", list(backfills))["text"])
