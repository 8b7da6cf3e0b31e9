"""Every step of the flow: the error types they raise.

Each error names the file (and line, when known) and says what to do next, so the CLI, the
Lambda handler and the tests can show it as it is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class SvcmigError(Exception):
    """Base class: a problem the user can act on (exit code 1 in the CLI)."""


class UsageProblem(SvcmigError):
    """The command asked for something impossible (unknown service or revision, a name that is
    taken, ...): the CLI exits 2, like any other usage error."""


class MigrationFileError(SvcmigError):
    """A migration file that cannot become a revision: bad name, bad header, bad SQL."""

    def __init__(self, path: Path | str, message: str, line: int | None = None,
                 kind: str | None = None) -> None:
        self.path = Path(path)
        self.line = line
        self.message = message
        # what is wrong, for tools that sort problems (the guard's rules): "parse" (the text
        # cannot be read: syntax, encoding, hidden characters, a malformed header), and for
        # backfills "unbounded", "other_schema", "no_key"; None for anything else
        self.kind = kind
        where = f"{self.path}:{line}" if line else f"{self.path}"
        super().__init__(f"{where}: {message}")


class ProjectError(SvcmigError):
    """A problem with the project layout or the revision graph as a whole."""


class PlanError(SvcmigError):
    """The database and the code disagree in a way that must not be applied blindly; `plan`
    (an `engine.plan.Plan`) holds the anomalies. Nothing was applied."""

    def __init__(self, message: str, plan: Any = None) -> None:
        self.plan = plan
        super().__init__(message)


class LockTimeout(SvcmigError):
    """Another migrator held the advisory lock past our deadline."""


class MigrationFailed(SvcmigError):
    """A revision failed while being applied; its transaction was rolled back (or, for a
    non-transactional one, its ledger row says how far it got)."""

    def __init__(self, revision: str, path: Path, message: str, line: int | None = None) -> None:
        self.revision = revision
        self.path = path
        self.line = line
        self.message = message
        self.applied: tuple[Any, ...] = ()  # `RevisionResult`s of the run that came before
        self.locks: Any = None  # the run's `LockStats` (what its lock waits cost)
        self.dirty = False  # the runner marked (or tried to mark) the revision dirty
        super().__init__(self._text())

    def _text(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else f"{self.path}"
        return f"{where}: revision {self.revision} failed: {self.message}"

    def add(self, text: str) -> None:
        """Append to the message (what the runner did about the failure)."""
        self.message += text
        self.args = (self._text(),)


class RunStopped(SvcmigError):
    """The run stopped between or inside revisions for a reason outside any revision: it was
    interrupted (Ctrl-C, SIGTERM), or the migrator's own connection failed. The revision running
    then was rolled back (a non-transactional one is left dirty); `.applied` holds the
    `RevisionResult`s committed before."""

    def __init__(self, message: str, applied: tuple[Any, ...], interrupted: bool) -> None:
        self.applied = applied
        self.interrupted = interrupted
        super().__init__(message)
