"""Adding a FOREIGN KEY or CHECK without NOT VALID scans an existing table while holding locks."""

from __future__ import annotations

from collections.abc import Iterator

from pglast import ast
from pglast.enums import ConstrType

from ..findings import Severity, StatementRule
from ..sqltree import RevisionContext, Statement, constraints_added_to_existing_tables

BAD = (
    "ALTER TABLE users ADD CONSTRAINT users_org_fk FOREIGN KEY (org_id) REFERENCES orgs (id);",
    "ALTER TABLE users ADD CONSTRAINT users_age_check CHECK (age >= 0);",
)
GOOD = (
    "ALTER TABLE users ADD CONSTRAINT users_org_fk FOREIGN KEY (org_id) REFERENCES orgs (id)"
    " NOT VALID;",
    "ALTER TABLE users ADD CONSTRAINT users_age_check CHECK (age >= 0) NOT VALID;\n"
    "-- next revision\n"
    "ALTER TABLE users VALIDATE CONSTRAINT users_age_check;",
    "CREATE TABLE devices (id int, user_id int);\n"
    "ALTER TABLE devices ADD FOREIGN KEY (user_id) REFERENCES users (id);",
)

_KINDS = {ConstrType.CONSTR_FOREIGN: "FOREIGN KEY", ConstrType.CONSTR_CHECK: "CHECK"}


def check(stmt: Statement, ctx: RevisionContext) -> Iterator[str]:
    for alter, constraint in constraints_added_to_existing_tables(stmt, ctx):
        if constraint.contype in _KINDS and not constraint.skip_validation:
            name = f" {constraint.conname}" if constraint.conname else ""
            yield (f"{_KINDS[constraint.contype]}{name} on {'.'.join(ctx.qualify(alter.relation))}"
                   " is validated while the table is locked")


RULE = StatementRule(
    name="constraint-without-not-valid",
    severity=Severity.ERROR,
    doc=__doc__ or "",
    hint="Add the constraint with NOT VALID, then VALIDATE CONSTRAINT in a later revision "
    "(validation takes only a SHARE UPDATE EXCLUSIVE lock).",
    check=check,
    bad=BAD,
    good=GOOD,
    kinds=(ast.AlterTableStmt,),
)
