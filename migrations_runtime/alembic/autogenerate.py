"""Autogenerate per service, for stock `alembic revision --autogenerate` and `alembic check`.

A service may describe its tables as SQLAlchemy metadata in `services/<svc>/schema.py` (a
module-level `metadata = MetaData(schema="<svc>")`). Alembic then compares only the schemas of
the services in scope with their metadata: one service for `--head <svc>@head` (the revision is
written into that service's folder by the plugin), every service that has metadata for `alembic
check` (or `--head heads`). Other schemas (other services, `public`, `svcmig`) are never
compared, so a service's revision can only be about its own tables.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

from ..engine.discover import Service
from ..engine.errors import SvcmigError
from ..engine.validate import Graph

SCHEMA_MODULE = "schema.py"
log = logging.getLogger("alembic.autogenerate")


def service_metadata(service: Service) -> Any | None:
    """The `metadata` of `services/<svc>/schema.py`, or None when the service has no such file.
    Raises `SvcmigError` (one line: which file, what to do) when the module fails to import,
    has no `metadata`, or describes tables outside the service's schema."""
    from sqlalchemy import MetaData

    path = service.folder / SCHEMA_MODULE
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location(f"svcmig_schema_{service.name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except KeyboardInterrupt:
        raise
    except BaseException as err:  # SystemExit too: the module's, not Alembic's, exit
        raise SvcmigError(f"{path}: cannot import it: {type(err).__name__}: {err}") from err
    metadata = getattr(module, "metadata", None)
    if not isinstance(metadata, MetaData):
        raise SvcmigError(f"{path}: define `metadata = sa.MetaData(schema={service.schema!r})` "
                          "with the service's tables")
    outside = sorted(t.fullname for t in metadata.tables.values() if t.schema != service.schema)
    if outside:
        raise SvcmigError(f"{path}: {', '.join(outside)} not in schema {service.schema!r}: a "
                          f"service describes only its own tables (MetaData(schema="
                          f"{service.schema!r}))")
    for table in metadata.tables.values():
        for key in table.foreign_keys:
            try:
                key.column  # noqa: B018 (resolves the referenced table)
            except Exception as err:
                raise SvcmigError(
                    f"{path}: {table.fullname} refers to {key.target_fullname}, which this "
                    "metadata does not describe: for another service's table, describe the "
                    "referenced columns in a MetaData of its own (`_users = sa.Table('users', "
                    "sa.MetaData(schema='users'), sa.Column('id', sa.BigInteger, "
                    "primary_key=True))`) and refer to `_users.c.id`") from err
    return metadata


def services_in_scope(graph: Graph, head: str | None) -> list[Service]:
    """The services `--head` names: one for `<svc>@head`, `<svc>@<rev>`, `<svc>` or a (partial)
    revision id of a service; every service for `head`, `heads` or none (`alembic check`,
    pytest-alembic; a revision written then is refused by the plugin unless the project has
    one service)."""
    if head in (None, "head", "heads"):
        return list(graph.services)
    name = head.split("@", 1)[0]
    found = [s for s in graph.services if s.name == name] or sorted(  # a (partial) revision id
        (s for s in graph.services if name.startswith(f"{s.name}_")),
        key=lambda s: len(s.name))[-1:]
    if not found:
        raise SvcmigError(f"--head {head}: name one service's head, e.g. --head "
                          f"{graph.services[0].name if graph.services else 'users'}@head")
    return found


def autogenerate_options(context: Any, graph: Graph) -> dict[str, Any]:
    """`context.configure` options for an autogenerate run (none for other commands): the
    metadata of the services in scope and a filter that keeps Alembic to their schemas."""
    # `alembic.context` is a module proxying the EnvironmentContext the command built (with the
    # command's RevisionContext among its options)
    environment = getattr(context, "_proxy", context)
    revision_context = getattr(environment, "context_opts", {}).get("revision_context")
    if revision_context is None or not revision_context.command_args.get("autogenerate"):
        return {}
    head = revision_context.command_args.get("head")
    scope = services_in_scope(graph, head)
    found = {service.name: service_metadata(service) for service in scope}
    described = [name for name, metadata in found.items() if metadata is not None]
    missing = [name for name, metadata in found.items() if metadata is None]
    if len(scope) == 1 and missing:
        raise SvcmigError(f"{missing[0]} has no services/{missing[0]}/{SCHEMA_MODULE}: write one "
                          "(docs/writing-migrations.md, Autogenerate) or write the revision "
                          f"yourself: alembic revision --head {missing[0]}@head -m ...")
    if not described:
        raise SvcmigError(f"no service has a {SCHEMA_MODULE} to compare: write services/<svc>/"
                          f"{SCHEMA_MODULE} (docs/writing-migrations.md, Autogenerate)")
    if missing:
        log.info("svcmig: not compared (no %s): %s", SCHEMA_MODULE, ", ".join(missing))
    schemas = set(described)  # a service's schema is named after it

    def include_name(name: str | None, type_: str, _parents: Any) -> bool:
        return name in schemas if type_ == "schema" else True

    return {"target_metadata": [found[name] for name in described], "include_schemas": True,
            "include_name": include_name, "compare_server_default": True}
