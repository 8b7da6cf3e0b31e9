"""Authoring: create a service (`svcmig new-service`) or the next revision of one
(`svcmig revision`), following the same conventions the loader enforces.

Everything is written to a temporary place first and moved into position only once it is
complete and loads, so a refusal or a crash never leaves half a service or half a file behind.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from string import Template as TextTemplate

from ..engine.discover import Service, service_name_problem
from ..engine.errors import MigrationFileError, ProjectError, UsageProblem
from ..engine.load import (
    Revision,
    load_revision,
    next_timestamp,
    parse_filename,
    revision_id,
    slugify,
)
from ..engine.validate import Graph, build_graph

VERSION_LOCATIONS_RE = re.compile(r"^(?P<key>version_locations[ \t]*=[ \t]*)(?P<value>.*)$",
                                  re.MULTILINE)
PATH_SEPARATOR_RE = re.compile(r"^path_separator[ \t]*=[ \t]*(?P<value>\S+)", re.MULTILINE)


@dataclass(frozen=True)
class Created:
    """What an authoring command wrote, for the CLI's text and JSON output."""

    service: str
    revision: str
    files: tuple[Path, ...]
    kind: str
    phase: str
    depends_on: tuple[str, ...] = ()

    def as_dict(self, root: Path) -> dict[str, object]:
        return {"service": self.service, "revision": self.revision,
                "files": [_relative(p, root) for p in self.files], "kind": self.kind,
                "phase": self.phase, "depends_on": list(self.depends_on)}


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _now() -> datetime:
    return datetime.now(UTC)


# --- new-service -------------------------------------------------------------------------------

# The scaffold copies the users service's layout (services/users/): a Powertools resolver with
# pydantic models, the shared tiny pool logging in as <name>_app, one log line and metrics per
# request. It starts read-only, so it needs no idempotency table yet.
HANDLER_TEMPLATE = TextTemplate('''"""The $name service: `GET /$name` (keyset pages) and
`GET /$name/{item_id}`.

Lambda handler: `services.$name.handler.handler`.
Tables come from services/$name/migrations/.
Built like the users service (services/users/handler.py), the reference to copy for writes: a
`POST` takes an `Idempotency-Key` (services.shared.idempotency) and needs an
`idempotency_records` table in this service's schema (see the users service's migrations).
"""

from __future__ import annotations

from typing import Annotated, Any

from aws_lambda_powertools.event_handler.openapi.params import Path, Query

from services.shared.db import Database
from services.shared.http import BIGINT_MAX, NotFound, decode_cursor, encode_cursor, make_resolver
from services.shared.observability import lambda_entrypoint
from services.shared.text import Text

from .models import Item, ItemPage

SERVICE = "$name"
TABLE = "$name.$name"
COLUMNS = "id, created_at"

app = make_resolver()
db = Database(SERVICE)

ItemId = Annotated[int, Path(gt=0, le=BIGINT_MAX, description="$name id")]


def _item(row: tuple[Any, ...]) -> Item:
    return Item(id=row[0], created_at=row[1])


@app.get("/$name/<item_id>")
def get_item(item_id: ItemId) -> Item:
    with db.transaction() as conn:
        row = conn.execute(f"SELECT {COLUMNS} FROM {TABLE} WHERE id = %s",
                           (item_id,)).fetchone()
    if row is None:
        raise NotFound(f"$name {item_id} does not exist")
    return _item(row)


@app.get("/$name")
def list_items(limit: Annotated[int, Query(ge=1, le=100)] = 20,
               cursor: Annotated[Text | None, Query(max_length=200)] = None) -> ItemPage:
    after = decode_cursor(cursor)
    with db.transaction() as conn:
        rows = conn.execute(f"SELECT {COLUMNS} FROM {TABLE} WHERE id > %s ORDER BY id "
                            "LIMIT %s", (after, limit + 1)).fetchall()
    items = [_item(row) for row in rows[:limit]]
    return ItemPage(items=items,
                    next_cursor=encode_cursor(items[-1].id) if len(rows) > limit else None)


handler, logger = lambda_entrypoint(SERVICE, app)
''')

MODELS_TEMPLATE = TextTemplate('''"""The $name API's response bodies. Request bodies, when routes
take them, refuse unknown fields and coerce nothing, as services/users/models.py does."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel


class Item(BaseModel):
    id: int
    created_at: datetime


class ItemPage(BaseModel):
    items: list[Item]
    next_cursor: str | None
''')

SERVICE_SPEC_TEMPLATE = """\
# What infra/ builds for this service (docs/deploy.md, "Declaring a service").
# The function is services.{name}.handler.handler; its dependencies go into the shared layer.
[function]
memory_mb = 512
timeout_seconds = 10
reserved_concurrency = 10
latency_critical = false
requirements = [
    "aws-lambda-powertools[tracer]>=3",
    "pydantic>=2",
    "psycopg[binary]>=3.2",
    "psycopg-pool>=3.2",
]

# API Gateway paths use {{param}}; every route needs SigV4 (IAM) unless `public = true` with a
# `why_public = "..."` reason.
[[routes]]
method = "GET"
path = "/{name}"

[[routes]]
method = "GET"
path = "/{name}/{{item_id}}"
"""

ROOT_SQL_TEMPLATE = """-- The {name} service's first table. Make it the service's real schema before
-- the first deploy; once applied, a migration is append-only.
-- migrate:up
CREATE TABLE {name} (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- migrate:down
DROP TABLE {name};
"""


def location_of(name: str) -> str:
    return f"%(here)s/services/{name}/migrations"


def with_version_location(ini_text: str, name: str) -> str:
    """alembic.ini with the service's migrations folder added to `version_locations` (sorted,
    space-separated); every other byte of the file is kept."""
    match = VERSION_LOCATIONS_RE.search(ini_text)
    if match is None:
        raise ProjectError(
            "alembic.ini has no version_locations line; add `version_locations = "
            f"{location_of(name)}` (space-separated, one per service) under [alembic]")
    separator = PATH_SEPARATOR_RE.search(ini_text)
    if separator is None or separator["value"] != "space":
        raise ProjectError(
            "alembic.ini must say `path_separator = space` under [alembic] (version_locations "
            "is a space-separated list); add it and run again")
    locations = set(match["value"].split()) | {location_of(name)}
    key = match["key"] if match["key"].endswith((" ", "\t")) else match["key"] + " "
    line = key + " ".join(sorted(locations))
    return ini_text[: match.start()] + line + ini_text[match.end():]


@contextmanager
def _staging(parent: Path, prefix: str) -> Iterator[Path]:
    """A hidden temporary folder in `parent` (same filesystem, so moving out of it is atomic),
    removed on the way out whatever happened. Loaders skip dot-folders."""
    folder = Path(tempfile.mkdtemp(prefix=f".{prefix}.", suffix=".svcmig-tmp", dir=parent))
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)  # mkdtemp makes 0700; the moved folder must look mkdir-made
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _scaffold_name_problem(name: str) -> str | None:
    """What the scaffold cannot use: `__` separates a file name's parts, and an SQL reserved
    word cannot name the root revision's table or the schema unquoted."""
    from pglast.keywords import RESERVED_KEYWORDS, TYPE_FUNC_NAME_KEYWORDS

    if "__" in name:
        return "contains '__', which separates the parts of a revision's file name"
    if name in RESERVED_KEYWORDS or name in TYPE_FUNC_NAME_KEYWORDS:
        return "is an SQL reserved word (its table and schema names would need quoting)"
    return None


def new_service(root: Path, name: str, now: datetime | None = None) -> Created:
    """Create `services/<name>/` (handler skeleton, `service.toml` for infra/, root revision) and
    register its migrations folder in alembic.ini, so `alembic heads`, `svcmig plan` and the CDK
    app see it at once."""
    problem = service_name_problem(name) or _scaffold_name_problem(name)
    if problem:
        raise UsageProblem(f"service name {name!r} {problem}; choose a name like 'payments'")
    services_dir = root / "services"
    folder = services_dir / name
    if folder.exists():
        raise UsageProblem(f"{folder} already exists; pick another name (new-service never "
                           f"overwrites) or add a revision with `svcmig revision {name} -m ...`")
    ini_path = root / "alembic.ini"
    ini_text = ini_path.read_text(encoding="utf-8")
    new_ini = with_version_location(ini_text, name)
    stamp = next_timestamp(None, now or _now())
    filename = f"{stamp}__{name}__create_{name}.sql"
    services_dir.mkdir(exist_ok=True)
    with _staging(services_dir, name) as staging:
        (staging / "__init__.py").write_text("", encoding="utf-8")
        (staging / "handler.py").write_text(HANDLER_TEMPLATE.substitute(name=name),
                                            encoding="utf-8")
        (staging / "models.py").write_text(MODELS_TEMPLATE.substitute(name=name),
                                           encoding="utf-8")
        (staging / "service.toml").write_text(SERVICE_SPEC_TEMPLATE.format(name=name),
                                              encoding="utf-8")
        migrations = staging / "migrations"
        migrations.mkdir()
        (migrations / filename).write_text(ROOT_SQL_TEMPLATE.format(name=name), encoding="utf-8")
        staged_service = Service(name, staging)
        root_revision = load_revision(parse_filename(migrations / filename), staged_service, None)
        ini_tmp = root / f".alembic.ini.{name}.svcmig-tmp"  # beside it: the swap is atomic
        try:
            ini_tmp.write_text(new_ini, encoding="utf-8")
            shutil.copymode(ini_path, ini_tmp)
            os.rename(staging, folder)
            try:
                os.replace(ini_tmp, ini_path)
            except OSError:
                shutil.rmtree(folder, ignore_errors=True)
                raise
        finally:
            ini_tmp.unlink(missing_ok=True)
    return Created(name, root_revision.id,
                   (folder / "handler.py", folder / "models.py", folder / "service.toml",
                    folder / "migrations" / filename, ini_path),
                   "sql", root_revision.phase)


# --- revision ----------------------------------------------------------------------------------

# After the phase line of a Python revision made with --no-transaction.
NO_TRANSACTION_PY = ("# Each statement commits on its own (CREATE INDEX CONCURRENTLY and the "
                     "like);\n# the revision is marked dirty if it stops halfway.\n"
                     "transactional = False\n")
SQL_REVISION_TEMPLATE = """-- {message}
{directives}-- migrate:up
-- Write the change here (it runs as {service}_owner with search_path = {service}), e.g.
--   ALTER TABLE {service} ADD COLUMN note text;
SELECT 1;

-- migrate:down
-- Undo it here, e.g. ALTER TABLE {service} DROP COLUMN note;
-- If it cannot be undone, delete the SQL here and say why on a line of its own
-- starting `-- irreversible:`.
SELECT 1;
"""


def _service_of(graph: Graph, service: str) -> Service:
    for candidate in graph.services:
        if candidate.name == service:
            return candidate
    known = ", ".join(s.name for s in graph.services) or "none yet"
    raise UsageProblem(f"unknown service {service!r} (known: {known}); create it with "
                       f"`svcmig new-service {service}`")


def resolve_depends_on(graph: Graph, service: str, targets: Sequence[str]) -> tuple[str, ...]:
    """Revision ids, or service names meaning that service's current head."""
    resolved: list[str] = []
    for target in targets:
        head = graph.head(target) if target in graph.chains else None
        rev = head or graph.revisions.get(target)
        if rev is None:
            raise UsageProblem(f"--depends-on {target!r} is neither a revision id nor a service; "
                               "`svcmig plan --offline --json` lists revision ids")
        if rev.service == service:
            raise UsageProblem(f"--depends-on {target!r} is in service {service!r} itself; "
                               "order within a service comes from the file names, drop it")
        if rev.id not in resolved:
            resolved.append(rev.id)
    return tuple(resolved)


def _python_text(root: Path, rev_id: str, head: Revision, message: str,
                 depends_on: tuple[str, ...], contract: bool, now: datetime,
                 no_transaction: bool = False) -> str:
    """Render the project's `script.py.mako` exactly as `alembic revision` does."""
    from alembic import util
    from alembic.config import Config
    from alembic.script import revision as alembic_revision
    from mako.template import Template

    config = Config(str(root / "alembic.ini"))
    location = config.get_main_option("script_location")
    if not location:
        raise ProjectError("alembic.ini has no script_location; set it to "
                           "migrations_runtime:alembic")
    template = Path(util.coerce_resource_to_filename(location)) / "script.py.mako"
    text: str = Template(filename=str(template)).render_unicode(
        up_revision=rev_id,
        down_revision=head.id,
        branch_labels=None,
        depends_on=alembic_revision.tuple_rev_as_scalar(depends_on or None),
        create_date=now,
        comma=util.format_as_comma,
        message=message,
        imports=None,
        upgrades=None,
        downgrades=None,
    )
    if contract:
        text, count = re.subn(r'^phase = "expand"', 'phase = "contract"', text, flags=re.M)
        if count != 1:
            raise ProjectError(f"{template}: no `phase = \"expand\"` line to turn into contract; "
                               "restore the line in the template")
    if no_transaction:
        text, count = re.subn(r'^(phase = "\w+"\n)', r"\1" + NO_TRANSACTION_PY, text, flags=re.M)
        if count != 1:
            raise ProjectError(f"{template}: no `phase = ...` line to put `transactional = "
                               "False` after; restore the line in the template")
    return text


def _sql_text(service: str, message: str, depends_on: tuple[str, ...], contract: bool,
              no_transaction: bool = False) -> str:
    directives = "-- migrate:no-transaction\n" if no_transaction else ""
    if contract:
        directives += "-- phase: contract\n"
    if depends_on:
        directives += f"-- depends-on: {', '.join(depends_on)}\n"
    first_line = " ".join(message.split())
    return SQL_REVISION_TEMPLATE.format(message=first_line, directives=directives,
                                        service=service)


def new_revision(root: Path, service: str, message: str, *, sql: bool = False,
                 contract: bool = False, depends_on: Sequence[str] = (),
                 now: datetime | None = None, no_transaction: bool = False) -> Created:
    """Create the service's next revision after its head, with a timestamp later than its
    newest file. Refuses when the project does not validate (e.g. the service has two heads)."""
    now = now or _now()
    try:
        graph = build_graph(root)
    except ProjectError as err:
        raise ProjectError(f"{err}; fix that before adding a revision") from err
    target = _service_of(graph, service)
    try:
        slug = slugify(message, target.migrations_dir)
    except MigrationFileError as err:
        raise UsageProblem(err.message) from err
    head = graph.head(service)
    if head is None:
        raise ProjectError(f"service {service!r} has no revisions; create it with "
                           f"`svcmig new-service {service}` or add a root revision by hand")
    deps = resolve_depends_on(graph, service, depends_on)
    stamp = next_timestamp(head.timestamp, now)
    rev_id = revision_id(service, stamp)
    filename = f"{stamp}__{service}__{slug}.{'sql' if sql else 'py'}"
    final = target.migrations_dir / filename
    if sql:
        text = _sql_text(service, message, deps, contract, no_transaction)
    else:
        text = _python_text(root, rev_id, head, message, deps, contract, now, no_transaction)
    with _staging(target.migrations_dir, service) as staging:
        staged = staging / filename
        staged.write_text(text, encoding="utf-8")
        loaded = load_revision(parse_filename(staged), target, head.id)
        if final.exists():
            raise ProjectError(f"{final} appeared while writing; run again")
        os.rename(staged, final)
    return Created(service, loaded.id, (final,), loaded.kind, loaded.phase, loaded.depends_on)
