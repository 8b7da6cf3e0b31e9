"""Step 5 of the flow, per revision: what a revision executes: its SQL statements (split by the real
Postgres parser) and the session settings that put it inside its service (role, search_path,
lock_timeout).

Both the svcmig runner and the stock-Alembic path use these, so a revision runs the same way
whichever tool applies it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .discover import Service
from .errors import MigrationFileError
from .load import Revision, SqlSource, parse_sql_source

DEFAULT_LOCK_TIMEOUT_MS = 5000


@dataclass(frozen=True)
class Statement:
    sql: str
    line: int  # 1-based line in the revision file where the statement starts


def split_statements(text: str, first_line: int, path: Path) -> list[Statement]:
    """Split SQL into statements with libpg_query, keeping each one's line in the file.

    A syntax error is reported with the file and line, before anything runs. pglast is
    imported here, not at module load, so a run with nothing to apply never loads it."""
    import pglast
    from pglast.parser import ParseError

    try:
        slices = list(pglast.split(text, with_parser=True, only_slices=True))
    except ParseError as err:
        offset = err.args[1] if len(err.args) > 1 and isinstance(err.args[1], int) else 0
        line = first_line + text[:offset].count("\n")
        raise MigrationFileError(path, f"SQL syntax error: {err.args[0]}", line) from err
    return [
        Statement(text[s], first_line + text[: s.start].count("\n")) for s in slices
    ]


def sql_source(revision: Revision) -> SqlSource:
    return parse_sql_source(revision.path.read_text(encoding="utf-8"), revision.path)


def revision_statements(revision: Revision, upgrade: bool) -> list[Statement]:
    """The statements of a SQL revision in one direction; raises when it has no down section."""
    source = sql_source(revision)
    if upgrade:
        return split_statements(source.up, source.up_line, revision.path)
    if source.down is None or source.down_line is None:
        raise MigrationFileError(
            revision.path, "irreversible: no '-- migrate:down' section; write one to allow "
            "downgrades, or restore from backup")
    return split_statements(source.down, source.down_line, revision.path)


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def enter_service_sql(service: Service, transactional: bool,
                      lock_timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS) -> list[str]:
    """Statements that make the session act as the service's owner in its schema.

    `SET LOCAL` inside a transaction (undone by commit or rollback); plain `SET` for a
    non-transactional revision, undone by `leave_service_sql`."""
    scope = "SET LOCAL" if transactional else "SET"
    return [
        f"{scope} lock_timeout = {int(lock_timeout_ms)}",
        f"{scope} ROLE {quote_ident(service.owner_role)}",
        f"{scope} search_path = {quote_ident(service.schema)}",
    ]


def leave_service_sql() -> list[str]:
    """Back to the migrator's own role: the ledger is written by the migrator, not the service."""
    return ["RESET ROLE", "RESET search_path", "RESET lock_timeout"]


def service_of(revision: Revision) -> Service:
    return Service(revision.service, revision.path.parent.parent)
