"""A throwaway svcmig project (alembic.ini + services/users, services/orders) and a runner for
`svcmig lint` in it. No database is needed: the guard only reads files."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from migrations_runtime.cli.lint import lint


@dataclass
class Project:
    root: Path

    def write(self, relative: str, text: str) -> Path:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return path

    def revision(self, service: str, stamp: str, slug: str, sql: str,
                 down: str | None = "SELECT 1;") -> Path:
        """A SQL revision with an up section and, unless `down` is None, a down section."""
        text = f"-- migrate:up\n{sql}\n" + (f"-- migrate:down\n{down}\n" if down else "")
        return self.write(f"services/{service}/migrations/{stamp}__{service}__{slug}.sql", text)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Project:
    (tmp_path / "alembic.ini").write_text("[alembic]\n", encoding="utf-8")
    for service in ("users", "orders"):
        (tmp_path / "services" / service / "migrations").mkdir(parents=True)
    monkeypatch.delenv("SVCMIG_PROJECT_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    return Project(tmp_path)


RunLint = Callable[..., Result]


@pytest.fixture
def run_lint(project: Project) -> RunLint:
    def run(*args: str) -> Result:
        return CliRunner().invoke(lint, list(args), prog_name="svcmig lint")
    return run


def findings_of(result: Result) -> list[dict[str, object]]:
    """Findings of a `--format json` run."""
    data: list[dict[str, object]] = json.loads(result.output)
    return data
