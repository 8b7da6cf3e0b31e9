"""pytest-alembic's own tests, run against this repository's migrations (see conftest.py).

`test_single_head_revision` is left out on purpose: every service is its own Alembic branch,
so a healthy project has one head per service; `test_one_head_per_service` checks that.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pytest_alembic.tests import (  # noqa: F401 (collected by pytest from here)
    test_model_definitions_match_ddl,
    test_up_down_consistency,
    test_upgrade,
)

REPO = Path(__file__).resolve().parents[2]


def test_one_head_per_service(alembic_runner: Any) -> None:
    services = sorted(p.parent.name for p in (REPO / "services").glob("*/migrations"))
    heads = [head.split()[0] for head in alembic_runner.heads]
    assert sorted(head.rsplit("_", 1)[0] for head in heads) == services, heads
