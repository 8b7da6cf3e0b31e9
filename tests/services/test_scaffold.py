"""The kind "a scaffold works end to end without edits": a service made by `svcmig new-service`
is served by `svcmig dev`, passes `svcmig lint`, `svcmig check`, ruff and mypy, as written.
(The infra synth of a scaffolded service is in tests/infra/test_synth.py.)"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli
from tests.services.test_dev_server import free_port, http

# The longest name new-service accepts: generated lines must still fit the line length.
NAMES = ("payments", "a_nineteen_chars_xx")


def full_copy(root: Path) -> Path:
    """The project as a user's clone has it: alembic.ini and all of services/ (code too)."""
    shutil.copy(REPO / "alembic.ini", root / "alembic.ini")
    shutil.copytree(REPO / "services", root / "services",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return root


@pytest.mark.parametrize("name", NAMES)
def test_new_service_is_served_linted_and_checked_without_edits(
        tmp_path: Path, database_url: str, server_url: str, name: str) -> None:
    root = full_copy(tmp_path)
    made = run_cli(root, "new-service", name)
    assert made.returncode == 0, made.stderr
    folder = root / "services" / name
    assert {p.name for p in folder.iterdir()} >= {"__init__.py", "handler.py", "models.py",
                                                  "service.toml", "migrations"}

    port = free_port()
    env = {**os.environ, "SVCMIG_PROJECT_ROOT": str(root)}
    env.pop("DATABASE_URL", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "migrations_runtime.cli", "dev", "--port", str(port),
         "--database-url", database_url, "--concurrency", "1"],
        cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None and process.stderr is not None
        first = process.stdout.readline()
        assert first.startswith("serving") and name in first, first + process.stderr.read()
        base = f"http://127.0.0.1:{port}"
        status, _, body = http("GET", f"{base}/{name}")
        assert (status, body) == (200, {"items": [], "next_cursor": None})
        status, _, body = http("GET", f"{base}/{name}/1")
        assert status == 404 and body["code"] == "not_found", body
        status, _, body = http("GET", f"{base}/{name}?limit=0")
        assert status == 422, body
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    lint = run_cli(root, "lint", "--all")
    assert lint.returncode == 0, lint.stdout + lint.stderr
    check = run_cli(root, "check", "--database-url", server_url, "--no-trace", timeout=300)
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"{name}" in check.stdout and "check passed" in check.stdout

    tools = Path(sys.executable).parent
    ruff = subprocess.run([tools / "ruff", "check", "--line-length", "100", str(folder)],
                          capture_output=True, text=True)
    assert ruff.returncode == 0, ruff.stdout
    mypy = subprocess.run([tools / "mypy", "--ignore-missing-imports", "--no-incremental",
                           str(folder / "handler.py")], cwd=root, capture_output=True, text=True)
    assert mypy.returncode == 0, mypy.stdout
