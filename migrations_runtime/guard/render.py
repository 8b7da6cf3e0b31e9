"""Python revisions → SQL, through Alembic's offline ("--sql") mode, so the guard lints what
`op.*` calls would run. Imported only when a Python revision is linted: Alembic and
SQLAlchemy cost ~0.3 s to import."""

from __future__ import annotations

import ast
import importlib.util
import io
import sys
from pathlib import Path

from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext

from ..engine.errors import MigrationFileError
from ..engine.interrupts import not_swallowed


def upgrade_line(text: str) -> int:
    """Line of `def upgrade` (findings of a Python revision point there), else 1."""
    for node in ast.parse(text).body:
        if isinstance(node, ast.FunctionDef) and node.name == "upgrade":
            return node.lineno
    return 1


def render_upgrade(text: str, path: Path) -> tuple[str, int]:
    """The SQL `upgrade()` emits in offline mode, and the line of `def upgrade`."""
    try:
        line = upgrade_line(text)
    except SyntaxError as err:
        raise MigrationFileError(path, f"Python syntax error: {err.msg}", err.lineno) from err
    name = f"_svcmig_guard_{path.stem.replace('-', '_')}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise MigrationFileError(path, "cannot import the revision module", line)
    module = importlib.util.module_from_spec(spec)
    buffer = io.StringIO()
    context = MigrationContext.configure(
        dialect_name="postgresql",
        opts={"as_sql": True, "output_buffer": buffer, "literal_binds": True},
    )
    try:
        with not_swallowed():  # Ctrl-C stops the guard even if the revision catches it
            spec.loader.exec_module(module)
            upgrade = getattr(module, "upgrade", None)
            if upgrade is None:
                raise MigrationFileError(path, "no upgrade() function", 1)
            with Operations.context(context):
                upgrade()
    except MigrationFileError:
        raise
    except (Exception, SystemExit) as err:  # a revision can raise anything (sys.exit too):
        # report it on its file; a revision must never end the guard's run, silently or not
        raise MigrationFileError(
            path, f"upgrade() failed to render as SQL: {type(err).__name__}: {err}", line,
        ) from err
    finally:
        sys.modules.pop(name, None)
    return buffer.getvalue(), line
