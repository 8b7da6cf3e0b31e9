"""`svcmig lint --jobs N`: services linted in a process pool report exactly what one process
reports (same findings, same order, same bytes in every format, same exit code), a svcmig error
or a dead process in a worker is one `error:` line, and small runs start no pool at all."""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import Result

from migrations_runtime.cli.lint import _all_revision_files
from migrations_runtime.engine.discover import Service, discover_services
from migrations_runtime.engine.errors import MigrationFileError, SvcmigError
from migrations_runtime.guard import linter as linter_module
from migrations_runtime.guard.formatters import FORMATTERS
from migrations_runtime.guard.linter import Linter

from .conftest import Project, RunLint, findings_of
from .test_backfills import backfill
from .test_cli import PY_REVISION

SERVICES = ("billing", "orders", "users")

forked = pytest.mark.skipif(
    linter_module._pool_context().get_start_method() != "fork",
    reason="the worker sees this test's monkeypatch only when it is forked")


STRAY = "sql/2026-11-25T1400__billing__stray.sql"
EVERYTHING = ("services", STRAY)
"""Every revision and backfill, and a file outside every service folder (not in --all)."""


def many_services(project: Project) -> None:
    """Three services with history and findings of several kinds in each: SQL rules that need
    the earlier revisions (a table created in the same revision is new), a Python revision
    rendered with Alembic, two heads, a missing down, a suppression without a reason, a file
    outside every service folder and a backfill."""
    for service in SERVICES:
        project.revision(service, "2026-11-25T1400", "create",
                         f"CREATE TABLE {service} (id int, email text);", down=None)
        project.revision(service, "2026-11-25T1401", "retype",
                         f"ALTER TABLE {service} ALTER COLUMN id TYPE bigint;\n"
                         f"CREATE TABLE {service}_new (id int);\n"
                         f"CREATE INDEX {service}_new_idx ON {service}_new (id);")
        project.revision(service, "2026-11-25T1402", "wipe",
                         f"TRUNCATE {service};\n-- svcmig:ignore truncate\n"
                         f"DELETE FROM {service};")
    project.revision("orders", "2026-11-25T1403", "cross", "UPDATE users.users SET id = 1;")
    project.write("services/users/migrations/2026-11-25T1500__users__add_email.py",
                  PY_REVISION.format(down=None, extra=""))  # a second head
    project.write(STRAY, "-- migrate:up\nTRUNCATE x;\n")
    backfill(project, "users", "UPDATE users SET email = lower(email);")


def lint_twice(run_lint: RunLint, *args: str) -> tuple[Result, Result]:
    return run_lint(*args, "--jobs", "1"), run_lint(*args, "--jobs", "2")


@pytest.fixture
def pools(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of processes of each pool the linter starts."""
    started: list[int] = []
    real = Linter._lint_in_processes

    def spy(self: Linter, jobs: list[object], processes: int) -> object:
        started.append(processes)
        return real(self, jobs, processes)  # type: ignore[arg-type]

    monkeypatch.setattr(Linter, "_lint_in_processes", spy)
    return started


@pytest.mark.parametrize("output_format", sorted(FORMATTERS))
def test_every_format_is_byte_identical(project: Project, run_lint: RunLint,
                                        output_format: str, pools: list[int]) -> None:
    many_services(project)
    args = ("--format", output_format, *EVERYTHING)
    serial, parallel = lint_twice(run_lint, *args)
    assert pools == [2]  # --jobs 1 started none
    assert parallel.exit_code == serial.exit_code == 1, serial.output
    assert parallel.stdout == serial.stdout
    assert parallel.stderr == serial.stderr == ""
    assert run_lint(*args).stdout == serial.stdout  # the default: a small run, one process
    assert pools == [2]


def test_findings_come_from_every_service(project: Project, run_lint: RunLint) -> None:
    many_services(project)
    serial, parallel = lint_twice(run_lint, "--format", "json", *EVERYTHING)
    found = findings_of(parallel)
    assert found == findings_of(serial)
    by_service = {str(f["path"]).split("/")[1] for f in found if str(f["path"]).startswith(
        "services/")}
    assert by_service == set(SERVICES)
    rules = {f["rule"] for f in found}
    assert {"column-type-change", "truncate", "dml-without-where", "invalid-suppression",
            "cross-service-write", "one-head-per-service", "missing-down",
            "wrong-service-folder", "create-index-non-concurrently",
            "backfill-outside-range"} <= rules, rules


def test_selected_files_and_replayed_history(project: Project, run_lint: RunLint,
                                             pools: list[int]) -> None:
    """Linting a few files replays each service's earlier revisions in its worker."""
    many_services(project)
    picked = [str(p) for s in SERVICES for p in project.root.glob(
        f"services/{s}/migrations/*__retype.sql")]
    serial, parallel = lint_twice(run_lint, "--format", "json", *picked)
    assert pools == [2]
    assert parallel.stdout == serial.stdout
    # the index is on a table created in the same revision: not reported, in every service
    assert {f["rule"] for f in findings_of(parallel)} == {"column-type-change"}


def test_services_that_fail_to_parse_read_the_same(project: Project, run_lint: RunLint) -> None:
    many_services(project)
    project.revision("orders", "2026-11-25T1404", "broken", "SELECT 1;\nCREAT TABLE x (id int);")
    project.write("services/billing/migrations/2026-11-25T1500__billing__boom.py",
                  'revision = "billing_202611251500"\ndown_revision = None\n\n'
                  'def upgrade():\n    raise RuntimeError("boom")\n')
    (project.root / "services/users/migrations/2026-11-25T1600__users__latin1.sql").write_bytes(
        b"-- migrate:up\nSELECT '\xe9';\n")
    (project.root / "services/users/migrations/2026-11-25T1601__users__folder.sql").mkdir()
    for output_format in ("text", "json"):
        serial, parallel = lint_twice(run_lint, "--format", output_format, *EVERYTHING)
        assert parallel.exit_code == serial.exit_code == 2
        assert (parallel.stdout, parallel.stderr) == (serial.stdout, serial.stderr)
    parse_errors = [f for f in findings_of(parallel) if f["rule"] == "parse-error"]
    assert [str(f["path"]).split("/")[1] for f in parse_errors] == [
        "billing", "orders", "users", "users"]


@forked
def test_a_svcmig_error_in_a_worker_is_the_same_one_line(
        project: Project, run_lint: RunLint, monkeypatch: pytest.MonkeyPatch) -> None:
    many_services(project)
    real = Linter._lint_service_files

    def failing(self: Linter, service: Service, chosen: frozenset[str]) -> object:
        if service.name in ("orders", "users"):  # the first in service order is reported
            raise MigrationFileError(service.migrations_dir / "x.sql",
                                     f"cannot load {service.name}", 3)
        return real(self, service, chosen)

    monkeypatch.setattr(Linter, "_lint_service_files", failing)
    serial, parallel = lint_twice(run_lint, "--all")
    assert parallel.exit_code == serial.exit_code == 2
    assert parallel.stdout == serial.stdout == ""
    assert parallel.stderr == serial.stderr == (
        f"error: {project.root / 'services/orders/migrations/x.sql'}:3: cannot load orders\n")


def test_a_worker_error_crosses_back_as_it_was_raised() -> None:
    """An error whose __init__ does not take its args back (pickle calls it with them) keeps
    its class, message and attributes on the way back from a worker."""
    err = MigrationFileError(Path("services/users/migrations/a.sql"), "bad header", 2, "parse")
    back = pickle.loads(pickle.dumps(linter_module._WorkerError.of(err))).error()
    assert type(back) is MigrationFileError
    assert (str(back), back.path, back.line, back.message, back.kind) == (
        str(err), err.path, 2, "bad header", "parse")

    class Local(SvcmigError):  # not importable by name: only its message travels
        pass

    back = pickle.loads(pickle.dumps(linter_module._WorkerError.of(Local("it broke")))).error()
    assert (type(back), str(back)) == (SvcmigError, "it broke")


@forked
def test_a_worker_that_dies_is_one_error_line(project: Project, run_lint: RunLint,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    many_services(project)
    real = Linter._lint_service_files

    def dying(self: Linter, service: Service, chosen: frozenset[str]) -> object:
        if service.name == "orders":
            os._exit(3)  # as a revision that ends its process, or the OOM killer
        return real(self, service, chosen)

    monkeypatch.setattr(Linter, "_lint_service_files", dying)
    result = run_lint("--all", "--jobs", "2")
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: a lint process ended abruptly")
    assert "--jobs 1" not in result.stderr  # where a revision's os._exit passes silently


SLOW_REVISION = """import time

revision = "{service}_202611251400"
down_revision = None


def upgrade():
    time.sleep(60)


def downgrade():
    pass
"""


def start_lint(project: Project, jobs: str) -> subprocess.Popen[str]:
    """`svcmig lint --all --jobs <jobs>` in a process group of its own."""
    return subprocess.Popen(
        [sys.executable, "-m", "migrations_runtime.cli", "lint", "--all", "--jobs", jobs],
        cwd=project.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)


def ended(lint: subprocess.Popen[str], after: str, timeout: float) -> tuple[str, str]:
    """The lint's stdout and stderr once it ended, or a failure (its group killed) when it
    outlives `timeout` seconds `after` what was done to it."""
    try:
        return lint.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(lint.pid, signal.SIGKILL)
        lint.communicate()
        pytest.fail(f"svcmig lint did not end after {after}")


@pytest.mark.parametrize("stop", [
    "two Ctrl-C to the group, 0.2 s apart", "two Ctrl-C to the group, back to back",
    "a second Ctrl-C once the report is out", "SIGTERM to svcmig alone"])
def test_an_interrupted_parallel_lint_ends_at_once_and_leaves_no_worker(
        project: Project, stop: str) -> None:
    """From a breaker: the workers ignore Ctrl-C, and the run waited for the services they were
    linting (a minute here), for ever after a second Ctrl-C; SIGTERM to svcmig alone left them
    running, holding the output pipe open. The run ends within seconds, workers included (the
    pipe closes: nothing holds it), with 130 whenever the second signal comes. The kind: a
    further signal at any point of the clean-up — back to back, it was raised before the
    workers were stopped (the exit then waited for them); once `error: interrupted` was
    printed, it ended the interpreter's exit with -2 (in CI)."""
    for service in ("users", "orders", "billing"):
        project.write(f"services/{service}/migrations/2026-11-25T1400__{service}__slow.py",
                      SLOW_REVISION.format(service=service))
    lint = start_lint(project, "2")
    time.sleep(3)  # the workers are inside the revisions' sleeps
    report = ""
    if stop == "SIGTERM to svcmig alone":
        lint.send_signal(signal.SIGTERM)
    else:
        os.killpg(lint.pid, signal.SIGINT)
        if "0.2 s" in stop:
            time.sleep(0.2)
        elif "report" in stop:
            assert lint.stderr is not None
            while "interrupted" not in report and (line := lint.stderr.readline()):
                report += line
        with contextlib.suppress(ProcessLookupError):  # it may have ended already
            os.killpg(lint.pid, signal.SIGINT)
    stdout, stderr = ended(lint, stop, timeout=20)
    stderr = report + stderr
    assert lint.returncode == 130, stderr
    assert stdout == "" and stderr.strip() == "error: interrupted", stderr


def test_no_pool_for_one_service_or_a_small_run(project: Project, run_lint: RunLint,
                                                pools: list[int],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(linter_module, "default_jobs", lambda: 8)
    project.revision("users", "2026-11-25T1400", "create", "CREATE TABLE users (id int);")
    project.revision("users", "2026-11-25T1401", "wipe", "TRUNCATE users;")
    assert run_lint("--all", "--jobs", "2").exit_code == 1  # one service: nothing to share
    project.revision("orders", "2026-11-25T1400", "wipe", "TRUNCATE orders;")
    assert run_lint("--all").exit_code == 1  # by default, 3 files are not worth a pool
    assert pools == []
    assert run_lint("--all", "--jobs", "8").exit_code == 1  # asked for: capped by services
    assert pools == [2]


def test_the_default_counts_the_history_to_replay(project: Project,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  pools: list[int]) -> None:
    """Two changed files on top of a long history are a big run: the history is replayed."""
    monkeypatch.setattr(linter_module, "default_jobs", lambda: 2)
    monkeypatch.setattr(linter_module, "PARALLEL_FILES", 10)
    for service in ("users", "orders"):
        for minute in range(6):
            project.revision(service, f"2026-11-25T14{minute:02d}", f"step{minute}",
                             f"CREATE TABLE {service}_{minute} (id int);")
    services = discover_services(project.root)
    newest = [sorted(s.migrations_dir.iterdir())[-1] for s in services]
    assert Linter(services).lint_paths(newest[:1]) == []  # one service
    assert Linter(services).lint_paths(newest) == []
    assert pools == [2]
    files = _all_revision_files(services)
    assert Linter(services, workers=2).lint_paths(files) == Linter(
        services, workers=1).lint_paths(files)


def test_workers_below_one_are_refused() -> None:
    with pytest.raises(ValueError, match="workers must be 1 or more"):
        Linter([], workers=0)


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_jobs_below_one_is_a_usage_error(project: Project, value: str) -> None:
    done = subprocess.run([sys.executable, "-m", "migrations_runtime.cli", "lint", "--jobs",
                           value], capture_output=True, text=True, cwd=project.root,
                          check=False,
                          env={"PYTHONPATH": str(Path(__file__).parents[2]), "PATH": ""})
    assert done.returncode == 2
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert line.startswith("error: ") and "'--jobs'" in line, line


SWALLOWING_REVISION = """import time

revision = "{service}_202611251400"
down_revision = None


def upgrade():
    for _ in range(25):  # 5 s
        try:
            time.sleep(0.2)
        except:  # noqa: E722 - a retry idiom that swallows Ctrl-C
            pass


def downgrade():
    pass
"""


@pytest.mark.parametrize("case", ["SIGTERM to svcmig alone", "a revision swallows Ctrl-C"])
def test_an_interrupted_lint_in_one_process_ends_with_130(project: Project, case: str) -> None:
    """From a breaker: linting in this process (`--jobs 1`, the default below 500 files), SIGTERM
    killed svcmig with nothing said (-15), and a Python revision's bare `except:` swallowed
    Ctrl-C, so the lint went on and exited 0."""
    text = SWALLOWING_REVISION if "swallows" in case else SLOW_REVISION
    project.write("services/users/migrations/2026-11-25T1400__users__slow.py",
                  text.format(service="users"))
    lint = start_lint(project, "1")
    time.sleep(3)  # inside the revision's sleeps
    if "SIGTERM" in case:
        lint.send_signal(signal.SIGTERM)
    else:
        os.killpg(lint.pid, signal.SIGINT)
    stdout, stderr = ended(lint, case, timeout=120)
    assert lint.returncode == 130, stderr
    assert stdout == "" and stderr.strip() == "error: interrupted", stderr


STUBBORN_REVISION = """import signal
import time

revision = "{service}_202611251400"
down_revision = None


def upgrade():
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(60)


def downgrade():
    pass
"""


def test_workers_whose_revision_ignores_every_signal_are_stopped_too(project: Project) -> None:
    """From a breaker: a revision ignoring SIGTERM in its worker kept the lint (and the worker)
    alive after `error: interrupted`; the workers are killed (SIGKILL)."""
    for service in ("users", "orders", "billing"):
        project.write(f"services/{service}/migrations/2026-11-25T1400__{service}__slow.py",
                      STUBBORN_REVISION.format(service=service))
    lint = start_lint(project, "2")
    time.sleep(3)
    os.killpg(lint.pid, signal.SIGINT)
    stdout, stderr = ended(lint, "Ctrl-C", timeout=20)
    assert lint.returncode == 130, stderr
    assert stdout == "" and stderr.strip() == "error: interrupted", stderr
