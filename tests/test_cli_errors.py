"""The kind "a user error is one line": every `svcmig` command (found by walking the click tree,
so a new command is covered the day it is added) given unknown options, missing arguments,
malformed and unreachable database URLs, or no project at all, answers with one `error:` line
on stderr and the documented exit code (docs/cli.md): never a traceback, never click's usage
block. Runs the console script's `main()` in-process (the same code path, without a Python
start-up per case)."""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from migrations_runtime.cli import main as cli_main
from migrations_runtime.cli.main import cli, main
from tests.conftest import copy_project, run_cli

# Plausible arguments per command, so the case reaches the part under test (the database URL,
# the project root) instead of stopping at a missing argument.
SAMPLE_ARGS = {
    "baseline": ["users"],
    "repair": ["users_202611020900", "--applied"],
    "new-service": ["payments"],
    "revision": ["users", "-m", "add note"],
    "remote repair": ["users_202611020900", "--applied"],
    "lint": ["--all", "--trace"],
    "backfill pause": ["users.fill_email_domain"],
    "backfill resume": ["users.fill_email_domain"],
    "backfill retry": ["users.fill_email_domain"],
    "remote backfill pause": ["users.fill_email_domain"],
    "remote backfill resume": ["users.fill_email_domain"],
    "remote backfill retry": ["users.fill_email_domain"],
}
# Options of a group, given before its subcommand.
GROUP_ARGS = {"remote": ["--stage", "dev"]}
# Commands whose extra arguments go to another program (`db psql ARGS…` → psql).
PASS_THROUGH = {"db psql"}
MALFORMED_URLS = ("localhost:5432/mydb", "postgresql://[::1", "host=x port",
                  "mysql://root@localhost/db", "postgresql://u@h:5432/d?nosuchparam=1")
# Parsable, but libpq refuses a value when it connects: a problem found (1), still one line.
REFUSED_ON_CONNECT = ("postgresql://u@h:5432/d?sslmode=bogus", "host=x port=notanumber")
UNREACHABLE = "postgresql://postgres@127.0.0.1:1/nothing"


def leaf_commands(group: click.Group = cli, prefix: tuple[str, ...] = ()
                  ) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    context = click.Context(group)
    for name in group.list_commands(context):
        command = group.get_command(context, name)
        assert command is not None
        if isinstance(command, click.Group):
            yield from leaf_commands(command, (*prefix, name))
        else:
            yield (*prefix, name), command


COMMANDS = dict(leaf_commands())
WITH_DATABASE_URL = sorted(" ".join(path) for path, command in COMMANDS.items()
                           if any(p.name == "database_url" for p in command.params))


def command_line(command: str, *extra: str, sample: bool = True) -> list[str]:
    """`command` ("remote status") with its group's options, its sample arguments, `extra`."""
    *groups, leaf = command.split()
    line = [word for group in groups for word in (group, *GROUP_ARGS.get(group, []))]
    return [*line, leaf, *(SAMPLE_ARGS.get(command, []) if sample else []), *extra]


def svcmig(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run the console script's main() with `args`: (exit code, stdout, stderr)."""
    argv = sys.argv
    sys.argv = ["svcmig", *args]
    try:
        main()
        code = 0
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else 1
    finally:
        sys.argv = argv
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line(done: tuple[int, str, str], codes: set[int], *words: str) -> None:
    code, out, err = done
    assert code in codes, (code, out, err)
    assert "Traceback" not in out + err, err
    message = err.strip().splitlines()
    assert message and message[-1].startswith("error: "), err
    # commands that print what database they use say so first; the error is one line
    assert len([line for line in message if not line.startswith("database: ")]) == 1, err
    for word in words:
        assert word in message[-1], message[-1]


@pytest.fixture
def in_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = copy_project(tmp_path / "project")
    monkeypatch.setenv("SVCMIG_PROJECT_ROOT", str(root))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.chdir(root)
    return root


def test_the_tree_walk_finds_every_family() -> None:
    names = {" ".join(path) for path in COMMANDS}
    assert {"migrate", "status", "lint", "check", "remote status", "db stop"} <= names
    assert {"migrate", "status", "plan", "check", "baseline", "repair", "dev"} <= set(
        WITH_DATABASE_URL)


@pytest.mark.parametrize("command", sorted(" ".join(p) for p in COMMANDS
                                           if " ".join(p) not in PASS_THROUGH))
def test_unknown_option_is_one_line_exit_2(command: str, in_project: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert_one_line(svcmig(capsys, *command_line(command, "--no-such-option")), {2},
                    "--no-such-option", f"svcmig {command} --help")


@pytest.mark.parametrize("command", sorted(
    " ".join(path) for path, c in COMMANDS.items()
    if any(p.required and isinstance(p, click.Argument) for p in c.params)))
def test_missing_argument_is_one_line_exit_2(command: str, in_project: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert_one_line(svcmig(capsys, *command_line(command, sample=False)), {2}, "Missing")


@pytest.mark.parametrize("url", MALFORMED_URLS + REFUSED_ON_CONNECT)
@pytest.mark.parametrize("command", WITH_DATABASE_URL)
def test_malformed_database_url_is_one_line(command: str, url: str, in_project: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Unparsable URLs and other schemes are usage errors (2); a parsable URL with a bad
    value (sslmode=bogus) is found when connecting (1)."""
    args = command_line(command, "--database-url", url)
    codes = {1} if url in REFUSED_ON_CONNECT and command != "lint" else {2}
    assert_one_line(svcmig(capsys, *args), codes, "--database-url")


@pytest.mark.parametrize("command", WITH_DATABASE_URL)
def test_unreachable_server_is_one_line_exit_1(command: str, in_project: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    args = command_line(command, "--database-url", UNREACHABLE)
    codes = {2} if command == "lint" else {1}  # lint: 2 when the guard could not run at all
    assert_one_line(svcmig(capsys, *args), codes, "cannot connect", "127.0.0.1")


# Documented as never reading $DATABASE_URL (docs/cli.md, docs/guard.md): check and lint --trace
# create and drop throwaway databases, graph marks applied revisions only when asked.
NEVER_READS_DATABASE_URL = {"check", "lint", "graph"}


@pytest.mark.parametrize("command", sorted(set(WITH_DATABASE_URL) - NEVER_READS_DATABASE_URL))
def test_malformed_database_url_from_the_environment(command: str, in_project: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DATABASE_URL", "localhost:5432/mydb")
    assert_one_line(svcmig(capsys, *command_line(command)), {2}, "localhost:5432/mydb",
                    "postgresql://")


NEEDS_NO_PROJECT = {"remote status", "remote repair", "db psql", "remote backfill status",
                    "remote backfill pause", "remote backfill resume", "remote backfill retry",
                    "remote backfill run"}


@pytest.mark.parametrize("command", sorted(" ".join(p) for p in COMMANDS
                                           if " ".join(p) not in NEEDS_NO_PROJECT))
def test_no_project_is_one_line_exit_1(command: str, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("SVCMIG_PROJECT_ROOT", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    args = command_line(command)
    if "database_url" in {p.name for p in COMMANDS[tuple(command.split())].params}:
        args += ["--database-url", UNREACHABLE]  # the project is looked for first
    assert_one_line(svcmig(capsys, *args), {1, 2}, "svcmig project")


@pytest.mark.parametrize("root", ["/nonexistent/place", "FILE"])
def test_a_wrong_project_root_setting_is_one_line(root: str, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    if root == "FILE":
        root = str(tmp_path / "a-file")
        Path(root).write_text("")
    monkeypatch.setenv("SVCMIG_PROJECT_ROOT", root)
    assert_one_line(svcmig(capsys, "plan", "--offline"), {1}, "SVCMIG_PROJECT_ROOT")


def test_help_version_and_bare_group_are_not_errors(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = svcmig(capsys, "--version")
    assert code == 0 and out.startswith("svcmig, version") and not err
    code, out, _ = svcmig(capsys, "status", "--help")
    assert code == 0 and "Usage: svcmig status" in out
    code, out, _ = svcmig(capsys)  # no command: the help is the answer
    assert code == 2 and "Commands:" in out


# Found by a fresh-eyes breaker: more members of the kind.

@pytest.mark.parametrize("args, words", [
    (["graph", "--output", "/nonexistent/dir/g.png"], ["cannot write", "/nonexistent/dir"]),
    (["manifest", "--output", "/nonexistent/m.json"], ["cannot write", "/nonexistent"]),
    (["dev", "--port", "99999"], ["--port"]),
    (["dev", "--port", "-1"], ["--port"]),
    (["status", "--database-url", " "], ["database URL is empty"]),
    (["status", "--database-url", ""], ["database URL is empty"]),
    (["new-service", "a__b"], ["'__'"]),
    (["new-service", "select"], ["reserved word"]),
    (["new-service", "user"], ["reserved word"]),
])
def test_more_bad_arguments_are_one_line_exit_2(args: list[str], words: list[str],
                                                in_project: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert_one_line(svcmig(capsys, *args), {2}, *words)
    if args[0] == "new-service":
        assert not (in_project / "services" / args[-1]).exists()


@pytest.mark.parametrize("body", ["import sys\nsys.exit(0)\n", "raise SystemExit(3)\n"])
def test_a_revision_that_exits_is_a_lint_error_and_the_rest_is_still_linted(
        body: str, in_project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    migrations = in_project / "services" / "users" / "migrations"
    (migrations / "2026-12-01T0000__users__exits.py").write_text(body)
    (migrations / "2026-12-02T0000__users__drops.sql").write_text(
        "-- migrate:up\nDROP TABLE users;\n-- migrate:down\nSELECT 1;\n")
    code, out, _ = svcmig(capsys, "lint", "--all")
    assert code == 2, out
    assert "__exits.py:1:1 error parse-error" in out and "SystemExit" in out
    assert "__drops.sql" in out  # linted although an earlier revision tried to end the run


def test_two_repair_actions_at_once_are_refused(in_project: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert_one_line(svcmig(capsys, "repair", "users_202611020900", "--applied", "--rolled-back"),
                    {2}, "--applied and --rolled-back")


def test_check_of_a_project_without_services_fails(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "services").mkdir()
    (tmp_path / "alembic.ini").write_text("[alembic]\n")
    monkeypatch.setenv("SVCMIG_PROJECT_ROOT", str(tmp_path))
    assert_one_line(svcmig(capsys, "check", "--database-url", UNREACHABLE), {1},
                    "nothing to check")


def test_a_bad_file_in_one_service_is_reported_once(in_project: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Not followed by "depends-on … is not a known revision" for the services that depend on
    the one that could not be loaded."""
    (in_project / "services" / "users" / "migrations" / "README.txt").write_text("notes\n")
    assert_one_line(svcmig(capsys, "plan", "--offline"), {1}, "README.txt")


@pytest.mark.parametrize("kind", ["folder", "broken link"])
def test_an_entry_the_runner_refuses_is_a_lint_error(kind: str, in_project: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    entry = in_project / "services" / "users" / "migrations" / "2026-12-01T0000__users__x.sql"
    if kind == "folder":
        entry.mkdir()
    else:
        entry.symlink_to(in_project / "nowhere")
    code, out, _ = svcmig(capsys, "lint", "--all")
    assert code == 2 and "not a regular file" in out, out


@pytest.mark.parametrize(("typed", "meant"), [("migrat", "migrate"), ("stauts", "status"),
                                              ("lnit", "lint"), ("backfil", "backfill")])
def test_a_mistyped_command_is_told_the_one_meant(tmp_path: Path, typed: str,
                                                  meant: str) -> None:
    """Every command is imported on use, so click holds none of them: the suggestion is drawn
    from the full list (a breaker found it gone for the deploy commands)."""
    done = run_cli(tmp_path, typed)
    assert done.returncode == 2
    assert done.stderr.startswith(f"error: No such command '{typed}'. Did you mean "
                                  f"'{meant}'?; see `")  # the program as it was run: --help
    assert done.stderr.count("\n") == 1


@pytest.mark.parametrize("message", [
    "consuming input failed: server closed the connection unexpectedly\n\tThis probably means "
    "the server terminated abnormally\n\tbefore or while processing the request.",
    "terminating connection due to administrator command", ""])
def test_a_connection_lost_midway_is_one_line_exit_1(message: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """The kind: the database goes away in the middle of a command, where no svcmig code made
    the driver's error one of its own (a CI run's `svcmig check` printed a traceback when its
    embedded server lost its data folder mid-trace). Every command's work runs through
    `common.run`; a driver error that is a bug (not a lost connection) still raises."""
    import psycopg

    from migrations_runtime.cli.common import run

    def lost() -> None:
        raise psycopg.OperationalError(message)

    with pytest.raises(SystemExit) as exited:
        run(lost)
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: lost the connection to the database: ") and \
        err.count("\n") == 1, err

    def bug() -> None:
        raise psycopg.ProgrammingError("the last operation didn't produce records")

    with pytest.raises(psycopg.ProgrammingError):
        run(bug)


@pytest.mark.parametrize("as_json", [True, False], ids=["--json", "text"])
def test_ctrl_c_while_a_command_loads_is_130_and_one_json_object(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        as_json: bool) -> None:
    """From a breaker: Ctrl-C in the first moments of `migrate --json`, while its modules were
    imported, printed no JSON (and a second one during the exit ended it with -2)."""
    def interrupted(_name: str, _package: str | None = None) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_main.importlib, "import_module", interrupted)
    saved = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        code, out, err = svcmig(capsys, "migrate", *(["--json"] if as_json else []))
        held = [signal.getsignal(number) for number in saved]
    finally:
        for number, handler in saved.items():
            signal.signal(number, handler)
    assert code == 130
    assert err.strip().splitlines()[-1] == "error: interrupted"
    assert held == [signal.SIG_IGN, signal.SIG_IGN]  # a second Ctrl-C cannot cut the exit short
    if as_json:
        assert json.loads(out)["outcome"] == "interrupted"
    else:
        assert out == ""
