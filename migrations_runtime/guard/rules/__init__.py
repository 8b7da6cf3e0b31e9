"""The guard's rules, one per module, each with its doc, hint and examples.

SQL rules (`STATEMENT_RULES`) run on every statement of a revision's up section (and some on a
backfill's statement: guard.backfills.BACKFILL_RULES); framework rules are checked by the
engine on file names, history, backfill batches and the git base.
"""

from ..findings import Rule, StatementRule
from . import (
    append_only,
    backfill_outside_range,
    blocking_table_operation,
    cluster,
    column_type_change,
    concurrently_in_transaction,
    constraint_without_not_valid,
    create_index_non_concurrently,
    cross_service_write,
    destructive_change_in_expand,
    dml_without_where,
    drop_index_non_concurrently,
    filename_convention,
    invalid_suppression,
    lock_held_during_work,
    lock_table,
    missing_down,
    not_null_column_without_default,
    one_head,
    out_of_order,
    parse_error,
    refused_by_runner,
    reindex_non_concurrently,
    session_override,
    set_not_null_without_check,
    traced,
    truncate,
    unbatched_data_change,
    unique_without_index,
    vacuum_full,
    volatile_default,
    wrong_service_folder,
)

STATEMENT_RULES: tuple[StatementRule, ...] = (
    dml_without_where.RULE,
    unbatched_data_change.RULE,
    truncate.RULE,
    create_index_non_concurrently.RULE,
    drop_index_non_concurrently.RULE,
    concurrently_in_transaction.RULE,
    not_null_column_without_default.RULE,
    volatile_default.RULE,
    column_type_change.RULE,
    set_not_null_without_check.RULE,
    constraint_without_not_valid.RULE,
    unique_without_index.RULE,
    destructive_change_in_expand.RULE,
    vacuum_full.RULE,
    cluster.RULE,
    reindex_non_concurrently.RULE,
    lock_table.RULE,
    lock_held_during_work.RULE,
    blocking_table_operation.RULE,
    cross_service_write.RULE,
    session_override.RULE,
)

PARSE_ERROR = parse_error.RULE
INVALID_SUPPRESSION = invalid_suppression.RULE
FILENAME_CONVENTION = filename_convention.RULE
WRONG_SERVICE_FOLDER = wrong_service_folder.RULE
APPEND_ONLY = append_only.RULE
OUT_OF_ORDER = out_of_order.RULE
ONE_HEAD = one_head.RULE
MISSING_DOWN = missing_down.RULE
REFUSED_BY_RUNNER = refused_by_runner.RULE
BACKFILL_OUTSIDE_RANGE = backfill_outside_range.RULE
CROSS_SERVICE_WRITE = cross_service_write.RULE
SESSION_OVERRIDE = session_override.RULE
TRACED_REWRITE = traced.REWRITE
TRACED_LOCK_HELD = traced.LOCK_HELD
TRACED_UNBOUNDED_SCAN = traced.UNBOUNDED_SCAN
TRACED_ERROR = traced.ERROR

FRAMEWORK_RULES: tuple[Rule, ...] = (
    PARSE_ERROR, INVALID_SUPPRESSION, FILENAME_CONVENTION, WRONG_SERVICE_FOLDER, APPEND_ONLY,
    OUT_OF_ORDER, ONE_HEAD, MISSING_DOWN, REFUSED_BY_RUNNER, BACKFILL_OUTSIDE_RANGE,
)
TRACED_RULES: tuple[Rule, ...] = (TRACED_REWRITE, TRACED_LOCK_HELD, TRACED_UNBOUNDED_SCAN,
                                  TRACED_ERROR)
_BY_KIND: dict[type, tuple[StatementRule, ...]] = {}


def for_node(node: object) -> tuple[StatementRule, ...]:
    """The SQL rules that can find something in a statement of `node`'s type, in order."""
    kind = type(node)
    found = _BY_KIND.get(kind)
    if found is None:
        found = _BY_KIND[kind] = tuple(r for r in STATEMENT_RULES
                                       if r.kinds is None or issubclass(kind, r.kinds))
    return found


ALL_RULES: tuple[Rule, ...] = STATEMENT_RULES + FRAMEWORK_RULES + TRACED_RULES
BY_NAME: dict[str, Rule] = {rule.name: rule for rule in ALL_RULES}
