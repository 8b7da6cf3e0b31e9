"""The CDK app: `python infra/app.py` synthesizes without the npm CLI (Node comes from PyPI when
the machine has none); `npx cdk deploy` from infra/ uses the pinned CLI (package.json).

Context (cdk.json, or `-c key=value` on the CLI):
- `stage`: dev (default), prod or preview-<n>; its settings are `svcmig:stages` in cdk.json.
- `svcmig:python`: the Lambda Python version assets are built for (default 3.14).
- `svcmig:bundle-for-host`: build assets for this machine's Python instead (tests only).
- `aws:cdk:bundling-stacks`: `[]` skips bundling (fast synths; not deployable).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

INFRA = Path(__file__).resolve().parent
REPO = INFRA.parent
if str(REPO) not in sys.path:  # `python infra/app.py` puts infra/, not the repo, on sys.path
    sys.path.insert(0, str(REPO))

from infra.node import ensure_node  # noqa: E402

ensure_node()

import aws_cdk as cdk  # noqa: E402

from infra.api_stack import ApiStack  # noqa: E402
from infra.bundling import Target  # noqa: E402
from infra.db_stack import DbStack  # noqa: E402
from infra.nag import add_nag  # noqa: E402
from infra.service_spec import discover_specs  # noqa: E402
from infra.settings import STAGES_KEY, stage_settings  # noqa: E402

DEFAULT_STAGE = "dev"


def file_context() -> dict[str, Any]:
    """cdk.json's context and cdk.context.json, which the CLI would pass; read here so
    `python infra/app.py` synthesizes the same thing without the CLI."""
    context: dict[str, Any] = {}
    cdk_json = INFRA / "cdk.json"
    if cdk_json.is_file():
        context.update(json.loads(cdk_json.read_text()).get("context", {}))
    saved = INFRA / "cdk.context.json"
    if saved.is_file():
        context.update(json.loads(saved.read_text()))
    return context


def build_app(root: Path = REPO, context: dict[str, Any] | None = None,
              outdir: str | None = None, nag: bool = True) -> tuple[cdk.App, list[cdk.Stack]]:
    """The app for the project at `root`. Context given here overrides the files; the CLI's
    (CDK_CONTEXT_JSON) overrides both, as CDK merges it last."""
    merged = {**file_context(), **(context or {})}
    post_cli = {k: merged.pop(k) for k in ("aws:cdk:bundling-stacks",) if k in merged}
    app = cdk.App(context=merged, post_cli_context=post_cli or None,
                  outdir=outdir or os.environ.get("CDK_OUTDIR") or str(INFRA / "cdk.out"))
    stage = stage_settings(app.node.try_get_context(STAGES_KEY),
                           str(app.node.try_get_context("stage") or DEFAULT_STAGE))
    bundle_host = str(app.node.try_get_context("svcmig:bundle-for-host")).lower() == "true"
    target = Target(python=str(app.node.try_get_context("svcmig:python") or "3.14"),
                    host=bundle_host)
    specs = discover_specs(root)
    env = cdk.Environment(account=os.environ.get("CDK_DEFAULT_ACCOUNT"),
                          region=os.environ.get("CDK_DEFAULT_REGION"))
    db = DbStack(app, f"{stage.prefix}-db", stage=stage, specs=specs, env=env,
                 description=f"svcmig {stage.name}: VPC, Aurora PostgreSQL, secrets, RDS Proxy")
    api = ApiStack(app, f"{stage.prefix}-api", root=root, stage=stage, specs=specs, db=db,
                   target=target, env=env,
                   description=f"svcmig {stage.name}: functions, HTTP API, migrations")
    for stack in (db, api):
        cdk.Tags.of(stack).add("svcmig:stage", stage.name,  # the target group takes no tags
                               exclude_resource_types=["AWS::RDS::DBProxyTargetGroup"])
    if nag:
        add_nag(app, [db, api])
    return app, [db, api]


def main() -> None:
    app, _ = build_app()
    app.synth()


if __name__ == "__main__":
    main()
