"""pytest fixtures that run `svcmig check` from a project's own tests.

Enabled by the `pytest11` entry point installed with svcmig (or `pytest -p
migrations_runtime.tools.pytest_plugin`, or by importing the fixtures into a conftest). A test then
reads:

    def test_migrations_round_trip(svcmig_check):
        assert_check_passes(svcmig_check())

Where it runs: `SVCMIG_CHECK_SERVER_URL`, else `SVCMIG_TEST_DATABASE_URL` (a server; check
creates and drops its own database there), else the project's embedded Postgres. Override the
`svcmig_server_url` or `svcmig_project_root` fixtures to choose otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from ..dev.embedded import embedded_url
from ..engine.discover import find_project_root
from .check import CheckReport, run_check
from .progress import Progress


@pytest.fixture(scope="session")
def svcmig_project_root() -> Path:
    """The project whose migrations are checked (found from the working directory)."""
    return find_project_root()


@pytest.fixture(scope="session")
def svcmig_server_url(svcmig_project_root: Path) -> str:
    """A Postgres server check may create a throwaway database on."""
    return (os.environ.get("SVCMIG_CHECK_SERVER_URL")
            or os.environ.get("SVCMIG_TEST_DATABASE_URL")
            or embedded_url(svcmig_project_root))


@pytest.fixture
def svcmig_check(svcmig_project_root: Path,
                 svcmig_server_url: str) -> Callable[..., CheckReport]:
    """A function running the whole check (optionally on another project root)."""

    def run(root: Path | None = None) -> CheckReport:
        return run_check(root or svcmig_project_root, svcmig_server_url,
                         progress=Progress(enabled=False))

    return run


def assert_check_passes(report: CheckReport, strict: bool = False) -> None:
    """Fail the test with the check's own report when it did not pass."""
    if not report.passed(strict):
        raise AssertionError(report.text(strict))
