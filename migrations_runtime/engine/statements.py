"""Step 5 of the flow, per revision: what a revision executes. Its SQL statements, split by the
real Postgres parser (libpg_query through pglast) with each one's kind and file line; what a
revision may not contain, decided from those kinds before anything runs; and the session
settings that start every revision from a clean session inside its service.

The svcmig runner and the stock-Alembic path use these, so a revision runs the same way
whichever tool applies it.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .discover import Service
from .errors import MigrationFileError
from .load import Revision, SqlSource, parse_sql_source, read_text

# lock_timeout in scripts (`alembic upgrade --sql`, `svcmig plan --sql`), which cannot retry the
# way the runner does (lockwait.LockPolicy): squawk's suggestion for a migration's statements.
SCRIPT_LOCK_TIMEOUT_MS = 2000

# What `DISCARD ALL` does (source: PostgreSQL documentation, DISCARD), as statements that may
# share one simple-protocol query (DISCARD ALL may not: it refuses any transaction block, and
# several statements in one query form an implicit one). RESET ALL first, so a statement_timeout
# the last revision left cannot stop the rest. DISCARD PLANS too: Postgres does not invalidate a
# cached plan when a better-matching overload of a function it calls appears, so a plan an
# earlier revision cached (in a function it called) could change what a later one computes (a
# breaker's finding, when the reset kept plans to spare replanning svcmig's own checks).
SESSION_RESET_SQL = (
    "RESET ALL",
    "CLOSE ALL",
    "SET SESSION AUTHORIZATION DEFAULT",
    "DEALLOCATE ALL",
    "UNLISTEN *",
    "SELECT pg_advisory_unlock_all()",
    "DISCARD PLANS",
    "DISCARD TEMP",
    "DISCARD SEQUENCES",
)


@dataclass(frozen=True)
class Statement:
    sql: str
    line: int  # 1-based line in the revision file where the statement starts
    kind: str = ""  # libpg_query's node name, e.g. "CreateStmt"
    node: Any = None  # the statement's parse tree as JSON-decoded dicts (libpg_query's JSON)


def split_statements(text: str, first_line: int, path: Path) -> list[Statement]:
    """Split SQL into statements with libpg_query, keeping each one's kind and line in the file.

    A syntax error (or a psql meta-command, which is not SQL) is reported with the file and
    line, before anything runs. pglast is imported here, not at module load, so a run with
    nothing to apply never loads it."""
    from pglast import parser
    from pglast.parser import ParseError

    try:
        tree = json.loads(parser.parse_sql_json(text))
    except ParseError as err:
        offset = err.args[1] if len(err.args) > 1 and isinstance(err.args[1], int) else 0
        line_index = text[:offset].count("\n")
        line = first_line + line_index
        source_line = text.split("\n")[line_index].strip() if text else ""
        if source_line.startswith("\\"):
            raise MigrationFileError(
                path, f"psql meta-command {source_line.split()[0]!r}: a revision is SQL that "
                "svcmig sends to the server, not a psql script; write it as SQL (COPY data "
                "belongs in INSERT statements or a backfill)", line) from err
        raise MigrationFileError(path, f"SQL syntax error: {err.args[0]}", line) from err
    data = text.encode("utf-8")  # libpg_query's offsets count bytes
    found = []
    for raw in tree.get("stmts", []):
        start = raw.get("stmt_location", 0)
        length = raw.get("stmt_len") or len(data) - start
        chunk = data[start:start + length]
        kind, node = next(iter(raw["stmt"].items()))
        found.append(Statement(chunk.decode("utf-8").strip(),
                               first_line + data[:start].count(b"\n"), kind, node))
    return found


def sql_source(revision: Revision, text: str | None = None) -> SqlSource:
    return parse_sql_source(read_text(revision.path) if text is None else text, revision.path)


def revision_statements(revision: Revision, upgrade: bool,
                        text: str | None = None) -> list[Statement]:
    """The statements of a SQL revision in one direction (of `text`, the file's when None);
    raises when it has no down section."""
    source = sql_source(revision, text)
    if upgrade:
        return split_statements(source.up, source.up_line, revision.path)
    if source.down is None or source.down_line is None:
        raise MigrationFileError(
            revision.path, "irreversible: no '-- migrate:down' section; write one to allow "
            "downgrades, or restore from backup")
    return split_statements(source.down, source.down_line, revision.path)


# --- what a revision may not contain -----------------------------------------------------------

# Statements Postgres refuses inside a transaction block: a transactional revision holding one
# would fail only when it runs, after the revisions before it were applied.
# node name → (the statement as people write it, does this node need to run outside one).
_OUTSIDE_TRANSACTION_ONLY: dict[str, tuple[str, Callable[[dict[str, Any]], bool]]] = {
    "VacuumStmt": ("VACUUM", lambda node: bool(node.get("is_vacuumcmd"))),
    "IndexStmt": ("CREATE INDEX CONCURRENTLY", lambda node: bool(node.get("concurrent"))),
    "DropStmt": ("DROP INDEX CONCURRENTLY", lambda node: bool(node.get("concurrent"))),
    "ReindexStmt": ("REINDEX CONCURRENTLY", lambda node: any(
        option.get("DefElem", {}).get("defname") == "concurrently"
        for option in node.get("params", []))),
    "AlterTableStmt": ("DETACH PARTITION … CONCURRENTLY", lambda node: any(
        cmd.get("AlterTableCmd", {}).get("def", {}).get("PartitionCmd", {}).get("concurrent")
        for cmd in node.get("cmds", []))),
    "CreatedbStmt": ("CREATE DATABASE", lambda node: True),
    "DropdbStmt": ("DROP DATABASE", lambda node: True),
    "AlterSystemStmt": ("ALTER SYSTEM", lambda node: True),
    "CreateTableSpaceStmt": ("CREATE TABLESPACE", lambda node: True),
    "DropTableSpaceStmt": ("DROP TABLESPACE", lambda node: True),
    "DiscardStmt": ("DISCARD ALL", lambda node: node.get("target") == "DISCARD_ALL"),
    "ClusterStmt": ("CLUSTER of every table", lambda node: not node.get("relation")),
}
_REINDEX_OUTSIDE = {"REINDEX_OBJECT_SCHEMA": "REINDEX SCHEMA",
                    "REINDEX_OBJECT_DATABASE": "REINDEX DATABASE",
                    "REINDEX_OBJECT_SYSTEM": "REINDEX SYSTEM"}
# Settings a revision may not change, and why: the runner sets them for every revision, or
# every statement was checked on the assumption that they hold.
_LOCK = ("the runner's lock policy sets it for every attempt (a revision waiting longer queues "
         "live traffic behind it); use svcmig migrate's --lock-timeout-ms/--lock-timeout-max-ms")
_IDLE = ("it ends a frozen migrator's sessions and frees their locks; use svcmig migrate's "
         "--idle-timeout-ms")
_LEXING = ("svcmig checks each statement as PostgreSQL reads it with standard_conforming_strings "
           "on and UTF-8; changed, PostgreSQL would read the statements after it differently "
           "(a backslash could end a string literal early)")
PINNED_SETTINGS = {
    "lock_timeout": _LOCK,
    "idle_in_transaction_session_timeout": _IDLE,
    "idle_session_timeout": _IDLE,
    "standard_conforming_strings": _LEXING,
    "client_encoding": _LEXING,
}
# svcmig's own namespace of settings, kept for svcmig: the runner presents a revision's token
# there (`ledger.TOKEN_SETTING`). Refusing it is only a clear message: without the token a
# setting there opens nothing (the ledger's policies compare its digest).
OWN_SETTINGS_PREFIX = "svcmig."


def lexing_changed(conn: Any) -> str | None:
    """Which setting that decides how PostgreSQL reads a statement the session no longer has at
    its pinned value, if any. Both are reported by the server whenever they change (libpq
    ParameterStatus), so this costs no round trip; `conn` is a psycopg connection."""
    for name, pinned in (("standard_conforming_strings", "on"), ("client_encoding", "UTF8")):
        if conn.info.parameter_status(name) != pinned:
            return f"{name} is no longer {pinned} ({_LEXING})"
    return None


def pinned_reason(name: str) -> str | None:
    """Why a revision may not change the setting `name` (any case), or None."""
    name = name.lower()
    if name.startswith(OWN_SETTINGS_PREFIX):
        return "svcmig's own namespace of settings"
    return PINNED_SETTINGS.get(name)


def forbidden_reason(statement: Statement, transactional: bool) -> str | None:
    """Why `statement` may not be in a revision (transactional or not), or None.

    A revision runs inside its service's owner session and, when transactional, inside the
    runner's transaction with its ledger row; these statements would end that transaction,
    change who the session acts as, or need a client protocol the runner does not speak."""
    node, kind = statement.node or {}, statement.kind
    if kind == "TransactionStmt" and str(node.get("kind", "")).endswith("PREPARED") or \
            node.get("kind") == "TRANS_STMT_PREPARE":
        return ("transaction control (two-phase commit: PREPARE TRANSACTION, COMMIT/ROLLBACK "
                "PREPARED), in any revision: a prepared "
                "transaction outlives the revision's session and keeps its locks until someone "
                "commits or rolls it back by hand; commit the work in the revision itself")
    if kind == "TransactionStmt" and transactional:
        word = str(node.get("kind", "")).removeprefix("TRANS_STMT_").replace("_", " ")
        return (f"transaction control ({word}): svcmig runs each transactional revision in one "
                "transaction with its ledger row; remove it, or split the revision (mark a "
                "revision that must commit in steps '-- migrate:no-transaction')")
    name = str(node.get("name", "")).lower()  # setting names are case-insensitive
    if kind == "VariableSetStmt" and name in ("role", "session_authorization"):
        what = "SET ROLE / RESET ROLE" if name == "role" else "SET / RESET SESSION AUTHORIZATION"
        return (f"{what}: a revision acts as its service's owner role and may not change who it "
                "acts as; grant what it needs to that role instead")
    if kind == "VariableSetStmt" and node.get("kind") == "VAR_RESET_ALL":
        return ("RESET ALL: it would undo what the runner sets for every revision (lock_timeout, "
                "the idle timeouts, search_path); RESET the settings you changed one by one")
    if kind == "VariableSetStmt" and pinned_reason(name):
        return f"changing {name}: {pinned_reason(name)}"
    changed = _set_config_of(statement)
    if changed:
        return f"set_config('{changed}', ...): {pinned_reason(changed)}"
    if kind in ("AlterRoleStmt", "AlterRoleSetStmt"):
        return ("ALTER ROLE: a revision changes its service's schema, not roles; a role's "
                "password or settings outlive the run (and apply to its every session)")
    if kind == "CopyStmt" and not node.get("filename") and not node.get("is_program"):
        direction = "FROM STDIN" if node.get("is_from") else "TO STDOUT"
        return (f"COPY {direction}: the data would have to come from (or go to) the client, and "
                "a revision is a script svcmig sends; put the data in INSERT statements or a "
                "backfill")
    outside = None
    if kind in _OUTSIDE_TRANSACTION_ONLY and _OUTSIDE_TRANSACTION_ONLY[kind][1](node):
        outside = _OUTSIDE_TRANSACTION_ONLY[kind][0]
    elif kind == "ReindexStmt":
        outside = _REINDEX_OUTSIDE.get(str(node.get("kind")))
    if transactional and outside:
        return (f"{outside} cannot run inside a transaction block; put it in its own revision "
                "marked '-- migrate:no-transaction'")
    return None


def _set_config_of(statement: Statement) -> str | None:
    """The pinned setting a `set_config('<name>', ...)` call with a literal name changes, if
    any. (A name built at run time, or SQL run by EXECUTE, is not seen: this is a guard against
    mistakes, not a wall.)"""
    if "set_config" not in statement.sql.lower():
        return None
    stack: list[Any] = [statement.node]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            call = item.get("FuncCall")
            if call and [n.get("String", {}).get("sval") for n in call.get("funcname", [])][-1:] \
                    == ["set_config"] and call.get("args"):
                name = _constant_text(call["args"][0]) or ""
                if pinned_reason(name):
                    return str(name.lower())
            stack.extend(item.values())
    return None


def _constant_text(node: dict[str, Any]) -> str | None:
    """The text of a constant expression: a string literal, through casts, COLLATE and `||`
    between constants (`'svcmig.' || 'revision'::text`); None for anything else."""
    if "A_Const" in node:
        value = node["A_Const"].get("sval")
        return value.get("sval", "") if isinstance(value, dict) else None
    if "TypeCast" in node:
        return _constant_text(node["TypeCast"].get("arg", {}))
    if "CollateClause" in node:
        return _constant_text(node["CollateClause"].get("arg", {}))
    expr = node.get("A_Expr")
    if expr and [n.get("String", {}).get("sval") for n in expr.get("name", [])] == ["||"]:
        left, right = _constant_text(expr.get("lexpr", {})), _constant_text(expr.get("rexpr", {}))
        return left + right if left is not None and right is not None else None
    return None


def check_statements(statements: list[Statement], transactional: bool, path: Path) -> None:
    """Raise `MigrationFileError` at the first statement a revision may not contain."""
    for statement in statements:
        reason = forbidden_reason(statement, transactional)
        if reason:
            raise MigrationFileError(path, f"not allowed in a revision: {reason}", statement.line)


# --- the session a revision runs in ------------------------------------------------------------


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


# How the runner's own checks inside a batch of statements say what failed (see `fail_unless`).
OWN_ERROR_PREFIX = "svcmig: "


def fail_unless(condition: str, message: str) -> str:
    """A SELECT that fails the batch it is in unless `condition` (SQL) holds; the error is
    22P02 (invalid_text_representation) and its message carries `OWN_ERROR_PREFIX` +
    `message`. The cast sits outside the CASE, so the planner cannot fold the error into
    every run; append a FROM clause for a condition over a table."""
    return (f"SELECT (CASE WHEN {condition} THEN '1' "
            f"ELSE {sql_literal(OWN_ERROR_PREFIX + message)} END)::int")


def enter_service_sql(service: Service, transactional: bool,
                      lock_timeout_ms: int = SCRIPT_LOCK_TIMEOUT_MS,
                      statement_timeout_ms: int | None = None,
                      set_role: bool = False) -> list[str]:
    """Statements that put the session inside the service: its schema first on the search path
    and the run's lock_timeout (and statement_timeout when one is set).

    `SET LOCAL` inside a transaction (undone by its end); plain `SET` for a non-transactional
    revision, whose next revision starts with `SESSION_RESET_SQL`. `set_role` adds `SET ROLE`
    for scripts run by another login (`alembic upgrade --sql`, `svcmig plan --sql`); the runner
    never needs it: its revision sessions log in as the owner."""
    scope = "SET LOCAL" if transactional else "SET"
    found = [f"{scope} lock_timeout = {int(lock_timeout_ms)}"]
    if statement_timeout_ms is not None:
        found.append(f"{scope} statement_timeout = {int(statement_timeout_ms)}")
    if set_role:
        found.append(f"{scope} ROLE {quote_ident(service.owner_role)}")
    found.append(f"{scope} search_path = {quote_ident(service.schema)}")
    return found


def leave_service_sql() -> list[str]:
    """Back to the login's own role (scripts run with `set_role=True` only)."""
    return ["RESET ROLE", "RESET search_path", "RESET lock_timeout"]


def service_of(revision: Revision) -> Service:
    return _service(revision.service, revision.root)


@functools.cache
def _service(name: str, root: Path) -> Service:
    """One `Service` per service and project: the runner asks three times a revision."""
    return Service(name, root / "services" / name)


# --- which tables a statement locks strongly ---------------------------------------------------

# Lock modes by name (pg_locks.mode), from PostgreSQL's "Explicit Locking" documentation:
# SHARE and stronger stop writers, ACCESS EXCLUSIVE stops readers too.
SHARE, SHARE_ROW_EXCLUSIVE, EXCLUSIVE, ACCESS_EXCLUSIVE = (
    "ShareLock", "ShareRowExclusiveLock", "ExclusiveLock", "AccessExclusiveLock")
_LOCK_STMT_MODES = {5: SHARE, 6: SHARE_ROW_EXCLUSIVE, 7: EXCLUSIVE, 8: ACCESS_EXCLUSIVE}
# ALTER TABLE subcommands that take SHARE UPDATE EXCLUSIVE at most (readers and writers go on).
_ALTER_TABLE_WEAK = frozenset({
    "AT_ValidateConstraint", "AT_SetStatistics", "AT_SetOptions", "AT_ResetOptions",
    "AT_AttachPartition", "AT_DetachPartitionFinalize", "AT_ClusterOn", "AT_DropCluster"})
# ALTER TABLE actions that take SHARE ROW EXCLUSIVE: writes queue behind them, reads do not.
_ALTER_TABLE_SHARE_ROW = frozenset({"AT_EnableTrig", "AT_DisableTrig"})
# Statements whose locks cannot be told from their text: ask the server what is held.
UNKNOWN_LOCKS = frozenset({"DoStmt", "CallStmt", "SelectStmt", "ExecuteStmt"})

Relation = tuple[str | None, str]  # (schema or None for the search path, name)


def _range_var(node: dict[str, Any] | None) -> Relation | None:
    if not node:
        return None
    node = node.get("RangeVar", node)
    return (node.get("schemaname"), node["relname"]) if "relname" in node else None


def _qualified(items: list[dict[str, Any]]) -> Relation:
    names = [item["String"]["sval"] for item in items]
    return (names[-2] if len(names) > 1 else None, names[-1])


def strong_locks(statement: Statement) -> list[tuple[Relation, str]]:
    """The relations `statement` locks in SHARE mode or stronger, with the mode: tables for most
    statements; for DROP INDEX and ALTER INDEX, the index (whose table is locked too). Empty
    for statements that take weaker locks (DML, CREATE TABLE without foreign keys, GRANT...).
    Source: PostgreSQL documentation, "Explicit Locking" and each command's reference page."""
    node, kind = statement.node or {}, statement.kind
    found: list[tuple[Relation | None, str]] = []
    if kind == "AlterTableStmt":
        cmds = [cmd.get("AlterTableCmd", {}) for cmd in node.get("cmds", [])]
        strong = [cmd for cmd in cmds if not _weak_alter(cmd)]
        if strong:
            share_row = all(cmd.get("subtype") in _ALTER_TABLE_SHARE_ROW for cmd in strong)
            found.append((_range_var(node.get("relation")),
                          SHARE_ROW_EXCLUSIVE if share_row else ACCESS_EXCLUSIVE))
        # ATTACH PARTITION: SHARE UPDATE EXCLUSIVE on the parent, ACCESS EXCLUSIVE on the table
        found.extend((_range_var(cmd.get("def", {}).get("PartitionCmd", {}).get("name")),
                      ACCESS_EXCLUSIVE)
                     for cmd in cmds if cmd.get("subtype") == "AT_AttachPartition")
    elif kind == "IndexStmt" and not node.get("concurrent"):
        found.append((_range_var(node.get("relation")), SHARE))
    elif kind in ("TruncateStmt", "LockStmt"):
        mode = ACCESS_EXCLUSIVE if kind == "TruncateStmt" else \
            _LOCK_STMT_MODES.get(int(node.get("mode", 8)))
        if mode:
            found.extend((_range_var(r), mode) for r in node.get("relations", []))
    elif kind == "DropStmt" and not node.get("concurrent") and node.get("removeType") in (
            "OBJECT_TABLE", "OBJECT_INDEX", "OBJECT_MATVIEW"):
        found.extend((_qualified(o["List"]["items"]), ACCESS_EXCLUSIVE)
                     for o in node.get("objects", []) if "List" in o)
    elif kind == "RenameStmt" and node.get("relation"):
        found.append((_range_var(node["relation"]), ACCESS_EXCLUSIVE))
    elif kind == "CreateTrigStmt":
        found.append((_range_var(node.get("relation")), SHARE_ROW_EXCLUSIVE))
    elif kind == "CreateStmt":
        found.extend((_range_var(c.get("pktable")), SHARE_ROW_EXCLUSIVE)
                     for c in _constraints(node) if c.get("contype") == "CONSTR_FOREIGN")
        if node.get("partbound"):  # CREATE TABLE … PARTITION OF locks the parent
            found.extend((_range_var(parent), ACCESS_EXCLUSIVE)
                         for parent in node.get("inhRelations", []))
    elif kind == "RefreshMatViewStmt":
        found.append((_range_var(node.get("relation")),
                      EXCLUSIVE if node.get("concurrent") else ACCESS_EXCLUSIVE))
    elif kind in ("ClusterStmt", "CreatePolicyStmt", "AlterPolicyStmt", "RuleStmt"):
        found.append((_range_var(node.get("relation") or node.get("table")), ACCESS_EXCLUSIVE))
    elif kind == "VacuumStmt" and _vacuum_full(node):
        found.extend((_range_var(r.get("VacuumRelation", {}).get("relation")), ACCESS_EXCLUSIVE)
                     for r in node.get("rels", []))
    return [(relation, mode) for relation, mode in found if relation is not None]


def _vacuum_full(node: dict[str, Any]) -> bool:
    return any(o.get("DefElem", {}).get("defname") == "full" for o in node.get("options", []))


def _weak_alter(cmd: dict[str, Any]) -> bool:
    """An ALTER TABLE action that takes SHARE UPDATE EXCLUSIVE or weaker."""
    detach = cmd.get("def", {}).get("PartitionCmd", {})
    return cmd.get("subtype") in _ALTER_TABLE_WEAK or (
        cmd.get("subtype") == "AT_DetachPartition" and bool(detach.get("concurrent")))


# Statements that, without a strong lock (`strong_locks` empty), take none that reads or writes
# of an existing table queue behind: their lock request may wait as long as it needs.
# DML is not among them: an UPDATE that waits for one row holds the rows it already changed,
# and a trigger it fires may lock anything.
_POLITE_KINDS = frozenset({
    "IndexStmt", "DropStmt", "ReindexStmt", "AlterTableStmt", "CreateStmt", "CreateSeqStmt",
    "CreateSchemaStmt", "VacuumStmt", "CommentStmt"})


def queues_traffic(statement: Statement) -> bool:
    """Whether, while `statement` waits for a lock, reads or writes of the table would queue
    behind it: a strong lock (`strong_locks`), or a statement whose locks cannot be told.
    A concurrent index build or a VALIDATE CONSTRAINT, which take SHARE UPDATE EXCLUSIVE,
    does not: it may wait without hurting anyone (and a build retried from scratch only
    costs). A REINDEX or DROP INDEX that is not CONCURRENTLY, or a DROP of a table, does."""
    if strong_locks(statement):
        return True
    node = statement.node or {}
    if statement.kind == "ReindexStmt":
        return not any(o.get("DefElem", {}).get("defname") == "concurrently"
                       for o in node.get("params", []))
    if statement.kind == "DropStmt" and not node.get("concurrent"):
        # CASCADE may drop a column of a table (a type, a sequence used as a default)
        return node.get("behavior") == "DROP_CASCADE" or node.get("removeType") not in (
            "OBJECT_SEQUENCE", "OBJECT_FUNCTION", "OBJECT_SCHEMA", "OBJECT_TYPE")
    if statement.kind == "VacuumStmt" and not node.get("rels") and _vacuum_full(node):
        return True  # ACCESS EXCLUSIVE on every table the role owns
    return statement.kind not in _POLITE_KINDS


def _constraints(create: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for element in create.get("tableElts", []):
        if "Constraint" in element:
            yield element["Constraint"]
        for constraint in element.get("ColumnDef", {}).get("constraints", []):
            yield constraint.get("Constraint", {})
