"""Every step of the flow: the error types they raise.

Each error names the file (and line, when known) and says what to do next, so the CLI, the
Lambda handler and the tests can show it as it is.
"""

from __future__ import annotations

from pathlib import Path


class SvcmigError(Exception):
    """Base class: a problem the user can act on (exit code 1 in the CLI)."""


class UsageProblem(SvcmigError):
    """The command asked for something impossible (unknown service or revision, a name that is
    taken, ...): the CLI exits 2, like any other usage error."""


class MigrationFileError(SvcmigError):
    """A migration file that cannot become a revision: bad name, bad header, bad SQL."""

    def __init__(self, path: Path | str, message: str, line: int | None = None) -> None:
        self.path = Path(path)
        self.line = line
        self.message = message
        where = f"{self.path}:{line}" if line else f"{self.path}"
        super().__init__(f"{where}: {message}")


class ProjectError(SvcmigError):
    """A problem with the project layout or the revision graph as a whole."""


class PlanError(SvcmigError):
    """The database and the code disagree in a way that must not be applied blindly."""


class LockTimeout(SvcmigError):
    """Another migrator held the advisory lock past our deadline."""


class MigrationFailed(SvcmigError):
    """A revision failed while being applied; its transaction was rolled back."""

    def __init__(self, revision: str, path: Path, message: str, line: int | None = None) -> None:
        self.revision = revision
        self.path = path
        self.line = line
        self.message = message
        where = f"{path}:{line}" if line else f"{path}"
        super().__init__(f"{where}: revision {revision} failed: {message}")
