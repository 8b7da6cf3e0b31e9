"""`svcmig remote --stage STAGE status|repair`: the migrator of a deployed stage, for operators
who cannot reach its database (isolated subnets, no bastion). The migrator function runs the
same `status` and `repair` as the local commands (never SQL) and answers with what they would
print. Invoking it needs the stage's operators policy (`svcmig-<stage>-migrator-operators`);
boto3 (the `services` or `infra` extra) and the usual AWS credentials are used.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

import click

from .common import EXIT_PROBLEM, EXIT_USAGE, fail, json_option

STAGE_RE = re.compile(r"^(dev|prod|preview-[1-9][0-9]{0,5})$")


def function_name(stage: str) -> str:
    """The migrator function of `stage` (named so by infra/migrations_resources.py)."""
    return f"svcmig-{stage}-migrator"


def invoke(name: str, payload: dict[str, Any]) -> dict[str, Any]:
    """Invoke the migrator synchronously; its answer, or a one-line error."""
    try:
        import boto3
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:
        fail("svcmig remote needs boto3: pip install 'svcmig[services]'", EXIT_USAGE)
    try:
        caller = boto3.client("sts").get_caller_identity()["Arn"]
        answer = boto3.client("lambda").invoke(
            FunctionName=name, Payload=json.dumps({**payload, "caller": caller}).encode())
    except (BotoCoreError, ClientError) as err:
        fail(f"cannot invoke {name}: {err}")
    body = json.loads(answer["Payload"].read() or b"{}")
    if answer.get("FunctionError"):
        fail(f"{name} failed: {body.get('errorMessage', body)}")
    result: dict[str, Any] = body
    return result


def _show(result: dict[str, Any], as_json: bool) -> None:
    click.echo(json.dumps(result, indent=2) if as_json else result.get("text", ""))
    if not result.get("ok"):
        sys.exit(EXIT_PROBLEM)


@click.group("remote")
@click.option("--stage", required=True, help="dev, prod or preview-<n>")
@click.pass_context
def remote(ctx: click.Context, stage: str) -> None:
    """Status and repair of a deployed stage, through its migrator function."""
    if not STAGE_RE.match(stage):
        raise click.BadParameter("use dev, prod or preview-<number>", param_hint="--stage")
    ctx.obj = function_name(stage)


@remote.command("status")
@json_option
@click.pass_obj
def remote_status(name: str, as_json: bool) -> None:
    """What `svcmig status` says of the stage's database. Exit 1 on errors."""
    _show(invoke(name, {"operation": "status"}), as_json)


@remote.command("repair")
@click.argument("revision")
@click.option("--applied", "action", flag_value="applied",
              help="A dirty revision did finish: mark it applied.")
@click.option("--rolled-back", "action", flag_value="rolled-back",
              help="A dirty revision left nothing behind: run it again next time.")
@click.option("--accept-checksum", "action", flag_value="accept-checksum",
              help="An applied revision was edited harmlessly: record its new checksum.")
@json_option
@click.pass_obj
def remote_repair(name: str, revision: str, action: str | None, as_json: bool) -> None:
    """What `svcmig repair` does, on the stage's database."""
    if action is None:
        raise click.UsageError("say what to do: --applied, --rolled-back or --accept-checksum")
    _show(invoke(name, {"operation": "repair", "revision": revision, "action": action}), as_json)
