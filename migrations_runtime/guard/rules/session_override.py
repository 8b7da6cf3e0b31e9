"""SET search_path / SET ROLE escape the runner's per-service role and schema; the settings the
runner pins (lock_timeout, the idle timeouts, lexing) may not change either, also where the
runner cannot see it (a DO block, set_config())."""

from __future__ import annotations

from collections.abc import Iterator

from pglast import ast
from pglast.enums import VariableSetKind

from ..findings import Severity, StatementRule
from ..sqltree import RevisionContext, Statement, last_name, seq

BAD = (
    "SET search_path = orders;",
    "SET LOCAL ROLE orders_owner;",
    "RESET ROLE;",
    "SET SESSION AUTHORIZATION postgres;",
    "SELECT set_config('search_path', 'orders', true);",
    "DO $$ BEGIN SET LOCAL lock_timeout = 0; END $$;",
    "DO $$ BEGIN PERFORM set_config('lock_timeout', '0', true); END $$;",
    "UPDATE users SET nickname = set_config('lock_timeout', '0', true) WHERE id = 1;",
    "DO $$ DECLARE v text; BEGIN v := set_config('search_path', 'orders', true); END $$;",
    "DO $$ BEGIN RESET ALL; END $$;",
    "DO $$ BEGIN ALTER ROLE users_app SET search_path = orders; END $$;",
)
GOOD = ("SET LOCAL statement_timeout = '5min';", "SELECT current_setting('search_path');")

GUARDED = frozenset({"search_path", "role", "session_authorization"})


def _pinned(name: str) -> str | None:
    """Why the runner refuses a revision that changes `name` (it checks top-level statements;
    a DO block or set_config() would slip past it), or None."""
    from ...engine.statements import pinned_reason

    return pinned_reason(name)


def check(stmt: Statement, ctx: RevisionContext) -> Iterator[str]:
    node = stmt.node
    if isinstance(node, ast.VariableSetStmt) and node.name in GUARDED:
        yield f"changing {node.name} escapes the runner's role {ctx.service}_owner and schema"
        return
    if isinstance(node, ast.VariableSetStmt) and node.name and _pinned(node.name):
        yield f"changing {node.name}: {_pinned(node.name)}"
        return
    if isinstance(node, ast.VariableSetStmt) and node.kind == VariableSetKind.VAR_RESET_ALL:
        yield "RESET ALL undoes what the runner sets for every revision (lock_timeout, the idle "\
            "timeouts, search_path)"
        return
    if isinstance(node, ast.AlterRoleStmt | ast.AlterRoleSetStmt):
        yield "ALTER ROLE: a revision changes its service's schema, not roles"
        return
    for call in stmt.query_nodes:
        if not (isinstance(call, ast.FuncCall) and last_name(call.funcname) == "set_config"):
            continue
        first = seq(call.args)[:1]
        if not (first and isinstance(first[0], ast.A_Const)
                and isinstance(first[0].val, ast.String)):
            continue
        name = (first[0].val.sval or "").lower()
        if name in GUARDED:
            yield f"set_config({name!r}) escapes the runner's role {ctx.service}_owner and schema"
        elif _pinned(name):
            yield f"set_config({name!r}): {_pinned(name)}"


RULE = StatementRule(
    name="session-override",
    severity=Severity.ERROR,
    doc=__doc__ or "",
    hint="Write the migration for the service's own schema; qualify names only with the "
    "service's schema. Another service's objects change in that service's migrations.",
    check=check,
    bad=BAD,
    good=GOOD,
    kinds=(ast.VariableSetStmt, ast.AlterRoleStmt, ast.AlterRoleSetStmt, ast.SelectStmt,
           ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt, ast.MergeStmt),
)
