"""What `env.py` runs for stock `alembic` commands, so they keep svcmig's guarantees: the same
advisory lock, the same bootstrap of schemas and roles, the version table and the ledger in the
`svcmig` schema, one transaction per revision with its ledger row inside it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..engine.database import connect, sqlalchemy_url
from ..engine.discover import FRAMEWORK_SCHEMA, discover_services
from ..engine.ledger import (
    FRAMEWORK_DDL,
    VERSION_TABLE,
    bootstrap,
    forget,
    record,
    service_bootstrap_sql,
)
from ..engine.lock import migrator_lock

DEFAULT_LOCK_WAIT_SECONDS = 60.0


def lock_wait_seconds() -> float:
    return float(os.environ.get("SVCMIG_LOCK_WAIT_SECONDS", DEFAULT_LOCK_WAIT_SECONDS))


def run(context: Any) -> None:
    """Entry point for `migrations_runtime/alembic/env.py`."""
    root = Path(context.config.config_file_name).resolve().parent
    common = {
        "version_table": VERSION_TABLE,
        "version_table_schema": FRAMEWORK_SCHEMA,
        "transaction_per_migration": True,
    }
    if context.is_offline_mode():
        url = os.environ.get("DATABASE_URL", "postgresql://")
        context.configure(url=sqlalchemy_url(url), literal_binds=True, **common)
        with context.begin_transaction():
            # What `svcmig migrate` bootstraps, so the script also runs on an empty database.
            for sql in FRAMEWORK_DDL[:2]:
                context.execute(sql)
            for service in discover_services(root):
                for sql in service_bootstrap_sql(service):
                    context.execute(sql)
            context.run_migrations()
        return

    from sqlalchemy import create_engine
    from sqlalchemy.pool import StaticPool

    from ..dev.embedded import resolve_url
    from .plugin import _load_for_alembic, service_for

    raw = connect(resolve_url(None, root))
    try:
        with migrator_lock(raw, lock_wait_seconds()):
            bootstrap(raw, discover_services(root))
            raw.autocommit = False  # from here SQLAlchemy's transactions are real ones
            engine = create_engine(sqlalchemy_url("postgresql://"), creator=lambda: raw,
                                   poolclass=StaticPool, pool_reset_on_return=None)

            def write_ledger(ctx: Any, step: Any, heads: Any, run_args: Any) -> None:
                path = Path(step.up_revision.path) if step.up_revision is not None else None
                service = service_for(path) if path is not None else None
                if service is None or path is None:
                    return
                if step.is_upgrade:
                    revision = _load_for_alembic(path, service)
                    record(raw, revision, "baselined" if step.is_stamp else "applied", None)
                else:
                    forget(raw, step.up_revision_id)

            with engine.connect() as connection:
                context.configure(connection=connection, on_version_apply=write_ledger, **common)
                with context.begin_transaction():
                    context.run_migrations()
                connection.commit()
            raw.autocommit = True
    finally:
        raw.close()
