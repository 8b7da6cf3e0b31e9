"""The `alembic.plugins` entry point: makes stock Alembic see svcmig's conventions.

Alembic (>= 1.18) imports this module when `alembic` itself is imported, before any revision is
loaded. It teaches `Script._from_path` three things:
- a `.sql` file under `services/<name>/migrations/` is a revision (no companion `.py` shim);
- every service revision (SQL or Python) runs as `<service>_owner` with `search_path=<service>`;
- `alembic revision --head users@head -m "add email"` names the file
  `<YYYY-MM-DDThhmm>__users__add_email.py` with a timestamp-derived revision id.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..engine.discover import Service
from ..engine.errors import MigrationFileError
from ..engine.load import (
    Revision,
    load_revision,
    next_timestamp,
    parse_filename,
    read_text,
    revision_files,
    revision_id,
    service_of_revision_id,
    slugify,
)
from ..engine.preflight import python_problems
from ..engine.statements import (
    SESSION_RESET_SQL,
    check_statements,
    enter_service_sql,
    leave_service_sql,
    revision_statements,
)

if TYPE_CHECKING:
    from alembic.script.base import Script, ScriptDirectory

_INSTALLED_FLAG = "_svcmig_installed"


def service_for(path: Path) -> Service | None:
    """The service whose migrations folder holds `path`, or None for an ordinary file."""
    folder = path.parent
    if folder.name != "migrations" or folder.parent.parent.name != "services":
        return None
    return Service(folder.parent.name, folder.parent)


# A project opts in by pointing alembic.ini's `script_location` at svcmig's environment
# (`migrations_runtime:alembic`): every other Alembic project in the same Python environment,
# whatever its folders are called, is left to Alembic alone.
SVCMIG_SCRIPT_LOCATION = Path(__file__).resolve().parent


def opted_in(scriptdir: Any) -> bool:
    """Whether the `ScriptDirectory` belongs to a svcmig project (its env is svcmig's)."""
    return Path(scriptdir.dir).resolve() == SVCMIG_SCRIPT_LOCATION


@functools.lru_cache(maxsize=256)
def _previous_ids(folder: Path, _mtime_ns: int) -> dict[str, str | None]:
    """file name → id of the previous revision file in the same folder (a SQL file's parent)."""
    previous: str | None = None
    parents: dict[str, str | None] = {}
    service = Service(folder.parent.name, folder.parent)
    for name in revision_files(service):
        parents[name.path.name] = previous
        previous = name.revision_id
    return parents


# In a script (`--sql`), after each statement of a revision: psql reads a backslash in a string
# literal by the server's standard_conforming_strings, which a DO block or a function could
# have turned off; the statements were checked with it on.
SCRIPT_PIN = "SET standard_conforming_strings = on"


def _emit(statements: list[str], pinned: bool = False) -> None:
    """Run (online) or print (offline, `--sql`) statements through the current Alembic context;
    `pinned` follows each printed statement with `SCRIPT_PIN`."""
    from alembic import op

    context = op.get_context()
    if context.as_sql:
        for sql in statements:
            context.impl.static_output(sql.strip() + context.impl.command_terminator)
            if pinned:
                context.impl.static_output(SCRIPT_PIN + context.impl.command_terminator)
    else:
        bind = op.get_bind()
        for sql in statements:
            bind.exec_driver_sql(sql)


def in_service(service: Service, transactional: bool,
               body: Callable[[], Any]) -> Callable[[], None]:
    """Wrap a revision's upgrade/downgrade so it runs inside its service."""

    @functools.wraps(body)
    def run() -> None:
        from alembic import op

        # in a script, nothing an earlier revision set reaches this one (what the runner's
        # session reset does, but temporary tables: Alembic keeps its version rows in one),
        # its transaction may write, and strings read as they were checked
        fresh = [*(s for s in SESSION_RESET_SQL if s != "DISCARD TEMP"), SCRIPT_PIN] \
            if op.get_context().as_sql else []
        if transactional:
            _emit([*fresh, "SET TRANSACTION READ WRITE"] if fresh else [])
            _emit(enter_service_sql(service, transactional=True, set_role=True))
            body()
            _emit(leave_service_sql())
            return
        with op.get_context().autocommit_block():
            _emit([*fresh, *enter_service_sql(service, transactional=False, set_role=True)])
            try:
                body()
            finally:
                _emit(leave_service_sql())

    return run


def _checked(revision: Revision, body: Callable[[], Any]) -> Callable[[], Any]:
    """A Python revision's upgrade/downgrade as Alembic runs it (only `--sql` does: online,
    svcmig's runner runs the file), checked first as `svcmig migrate` checks it."""

    @functools.wraps(body)
    def run() -> Any:
        from alembic.util import CommandError

        try:
            python_problems(read_text(revision.path), revision.path, revision.transactional)
        except MigrationFileError as err:
            raise CommandError(str(err)) from err
        return body()

    return run


def _sql_module(revision: Revision) -> types.ModuleType:
    """A module object standing for a SQL file, with what Alembic reads from a revision."""
    module = types.ModuleType(f"svcmig_sql_{revision.id}")
    module.__file__ = str(revision.path)
    module.__doc__ = revision.slug.replace("_", " ")
    module.revision = revision.id  # type: ignore[attr-defined]
    module.down_revision = revision.down_revision  # type: ignore[attr-defined]
    module.branch_labels = revision.branch_labels or None  # type: ignore[attr-defined]
    module.depends_on = revision.depends_on or None  # type: ignore[attr-defined]
    module.phase = revision.phase  # type: ignore[attr-defined]

    def statements(upgrade: bool) -> list[str]:
        from alembic.util import CommandError

        try:  # checked as `svcmig migrate` checks it (`--sql` renders through here)
            found = revision_statements(revision, upgrade)
            check_statements(found, revision.transactional, revision.path)
            return [s.sql for s in found]
        except MigrationFileError as err:
            raise CommandError(str(err)) from err

    def upgrade() -> None:
        _emit(statements(upgrade=True), pinned=True)

    def downgrade() -> None:
        _emit(statements(upgrade=False), pinned=True)

    module.upgrade = upgrade  # type: ignore[attr-defined]
    module.downgrade = downgrade  # type: ignore[attr-defined]
    return module


def _load_for_alembic(path: Path, service: Service) -> Revision:
    folder = path.parent
    previous = _previous_ids(folder, folder.stat().st_mtime_ns).get(path.name)
    name = parse_filename(path)
    if previous == name.revision_id:  # two files in the same minute: one id, a loop
        twins = sorted(f.path.name for f in revision_files(service)
                       if f.revision_id == name.revision_id)
        raise MigrationFileError(path, f"{' and '.join(twins)} are the same revision id "
                                 f"{name.revision_id} (one minute): give the later file a "
                                 "later timestamp")
    return load_revision(name, service, previous)


MERGE_REFUSED = (
    "svcmig does not merge: each service is one chain (one head), and heads of different "
    "services are meant to stay apart (`alembic upgrade heads` applies them all). Two heads "
    "in one service are two revisions with the same parent: rename the later file to a later "
    "timestamp (a SQL revision's parent is the previous file), or set its down_revision to "
    "the other one (a Python revision), then `svcmig repair <id> --accept-checksum` if it was "
    "applied. Nothing was written")


def install() -> None:
    """Patch Alembic once (idempotent). Alembic is imported here, not at module level: Alembic
    imports this module while `import alembic` is still running."""
    from alembic.script.base import Script, ScriptDirectory

    if getattr(Script, _INSTALLED_FLAG, False):
        return
    original_from_path = Script._from_path.__func__  # type: ignore[attr-defined]
    original_generate = ScriptDirectory.generate_revision
    original_rev_path = ScriptDirectory._rev_path

    def _from_path(cls: type[Script], scriptdir: ScriptDirectory, path: Any) -> Script | None:
        path = Path(path)
        service = service_for(path) if opted_in(scriptdir) else None
        if service is None:
            return original_from_path(cls, scriptdir, path)
        if path.suffix not in (".sql", ".py") or path.name == "__init__.py":
            return None
        try:
            revision = _load_for_alembic(path, service)
        except MigrationFileError as err:
            from alembic.util import CommandError

            raise CommandError(str(err)) from err
        if path.suffix == ".sql":
            module = _sql_module(revision)
            script = Script(module, revision.id, path)
        else:
            script = original_from_path(cls, scriptdir, path)
            if script is None:
                return None
            module = script.module
        for direction in ("upgrade", "downgrade"):
            body = getattr(module, direction)
            if path.suffix == ".py":
                body = _checked(revision, body)
            setattr(module, direction, in_service(service, revision.transactional, body))
        return script

    def generate_revision(self: ScriptDirectory, revid: str, message: str | None,
                          head: Any = None, *args: Any, **kw: Any) -> Script | None:
        from alembic.script.revision import RevisionError
        from alembic.util import CommandError

        if not opted_in(self):
            return original_generate(self, revid, message, head, *args, **kw)
        try:
            heads = self.revision_map.get_revisions(head or "head")
        except RevisionError:  # e.g. several heads and no --head: Alembic's own message
            return original_generate(self, revid, message, head, *args, **kw)
        ours = [service_for(Path(h.path)) for h in heads if isinstance(h, Script)]
        if len(heads) > 1 and any(ours):  # `alembic merge`, or --head heads: nothing written
            if len({service.name for service in ours if service}) > 1:
                raise CommandError("a revision belongs to one service: name its head, e.g. "
                                   "--head users@head (svcmig does not merge services)")
            raise CommandError(MERGE_REFUSED)
        tip = heads[0] if len(heads) == 1 else None
        service = service_for(Path(tip.path)) if isinstance(tip, Script) else None
        if service is not None:
            chain = revision_files(service)
            stamp = next_timestamp(chain[-1].timestamp if chain else None, datetime.now(UTC))
            revid = revision_id(service.name, stamp)
            try:  # refuse an empty slug up front
                slugify(message or "", service.migrations_dir)
            except MigrationFileError as err:
                raise CommandError(f"{err.message}: give the revision a message, "
                                   "-m \"add plan column\"") from err
            folder = kw.get("version_path")
            if folder and Path(folder).resolve() != service.migrations_dir.resolve():
                raise CommandError(f"--version-path {folder} is not {service.name}'s folder "
                                   f"({service.migrations_dir}): a revision of {service.name} "
                                   "goes there; leave --version-path out. Nothing was written")
        return original_generate(self, revid, message, head, *args, **kw)

    def _rev_path(self: ScriptDirectory, path: Any, rev_id: str, message: str | None,
                  create_date: datetime) -> Path:
        parsed = service_of_revision_id(rev_id)
        service = service_for(Path(path) / "x.py") if opted_in(self) else None
        if parsed is None or service is None or parsed[0] != service.name:
            return original_rev_path(self, path, rev_id, message, create_date)
        _, stamp = parsed
        return Path(path) / f"{stamp}__{service.name}__{slugify(message or '')}.py"

    Script._from_path = classmethod(_from_path)  # type: ignore[assignment,method-assign]
    ScriptDirectory.generate_revision = generate_revision  # type: ignore[method-assign]
    ScriptDirectory._rev_path = _rev_path  # type: ignore[method-assign]
    setattr(Script, _INSTALLED_FLAG, True)


def setup(plugin: Any) -> None:
    """Entry point called by Alembic's plugin loader."""
    install()
