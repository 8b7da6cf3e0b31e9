"""Shared helpers of the authoring tests: a project tree fingerprint (to prove a refusal wrote
nothing) and a generated 10 services × 50 revisions project for the graph."""

from __future__ import annotations

import random
import subprocess
from datetime import datetime, timedelta
from pathlib import Path

from tests.conftest import write_project

SERVICE_NAMES = ("users", "orders", "billing", "payments", "catalog", "search", "shipping",
                 "inventory", "reviews", "notify")
SLUGS = ("add_column_email", "create_index_on_created_at", "backfill_totals",
         "drop_legacy_flag", "add_status_enum", "rename_customer_reference_column")


def tree(root: Path) -> dict[str, bytes]:
    """Every file under `root` (except caches and the embedded server) with its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts and ".svcmig" not in p.parts}


def assert_one_line_error(done: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    message = done.stderr.strip()
    assert message.startswith("error: ") and "\n" not in message, message
    for word in words:
        assert word in message, message


def big_project(root: Path, services: int = 10, revisions: int = 50) -> Path:
    """`services` × `revisions` SQL revisions with a few cross-service dependencies."""
    rng = random.Random(7)
    names = SERVICE_NAMES[:services]
    files: dict[str, dict[str, str]] = {name: {} for name in names}
    heads: dict[str, str] = {}
    start = datetime(2026, 1, 1)
    for number in range(revisions):
        for index, name in enumerate(names):
            when = start + timedelta(days=number, minutes=7 * index)
            header = ""
            others = [m for m in names if m != name and m in heads]
            if number > 2 and others and rng.random() < 0.06:
                header = f"-- depends-on: {heads[rng.choice(others)]}\n"
            slug = f"{rng.choice(SLUGS)}_{number}"
            files[name][f"{when:%Y-%m-%dT%H%M}__{name}__{slug}.sql"] = (
                f"{header}-- migrate:up\nCREATE TABLE t{number} (id int);\n"
                f"-- migrate:down\nDROP TABLE t{number};\n")
            heads[name] = f"{name}_{when:%Y%m%d%H%M}"
    return write_project(root, files)
