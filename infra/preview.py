"""Preview stacks for pull requests, from CI: `python -m infra.preview deploy|destroy PR`.

A preview is the stage `preview-<PR>` (cdk.json's `preview` settings): its own VPC, Aurora
cluster, RDS Proxy, secrets and API, so previews never share roles or data (roles are
cluster-wide). `deploy` creates or updates it, `destroy` removes it and its data; `--dry-run`
prints the CDK command instead of running it. The CDK CLI is the one `infra/package.json`
pins (`npx cdk`, run in `infra/`).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from infra.settings import STAGE_RE

INFRA = Path(__file__).resolve().parent
ACTIONS = ("deploy", "destroy")


def preview_stage(pr: str) -> str:
    """`preview-<pr>` for a pull request number; raises ValueError for anything else."""
    stage = f"preview-{pr}"
    # one spelling per number: `0123` and `123` would be two stages, one left behind
    if not pr.isdigit() or pr.startswith("0") or not STAGE_RE.match(stage):
        raise ValueError(f"pull request number {pr!r}: use 1 to 6 digits without leading "
                         "zeros, e.g. 123")
    return stage


def cdk_command(action: str, stage: str) -> list[str]:
    """The CDK CLI command that deploys or destroys every stack of `stage`, unattended."""
    if action not in ACTIONS:
        raise ValueError(f"action {action!r}: use {' or '.join(ACTIONS)}")
    unattended = ["--require-approval", "never"] if action == "deploy" else ["--force"]
    return ["npx", "cdk", action, "--all", "-c", f"stage={stage}", *unattended]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.preview", description=__doc__)
    parser.add_argument("action", choices=ACTIONS)
    parser.add_argument("pr", help="the pull request number: the stage is preview-<pr>")
    parser.add_argument("--dry-run", action="store_true", help="print the command only")
    args = parser.parse_args(argv)
    try:
        command = cdk_command(args.action, preview_stage(args.pr))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(" ".join(command))
    if args.dry_run:
        return 0
    return subprocess.run(command, cwd=INFRA, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
