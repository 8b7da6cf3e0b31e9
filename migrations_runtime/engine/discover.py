"""Step 1 of the flow: find the project root and its services.

A service is a folder `services/<name>/` with a `migrations/` folder inside. Its name is the
folder name, its Postgres schema is the same name, and its roles are `<name>_owner` and
`<name>_app`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import ProjectError

SERVICE_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
# Revision ids are `<service>_<YYYYMMDDhhmm>` and must fit Alembic's 32-char version_num.
MAX_SERVICE_NAME = 32 - len("_202611251405")
FRAMEWORK_SCHEMA = "svcmig"
RESERVED_NAMES = frozenset(
    {
        FRAMEWORK_SCHEMA,
        "public",
        "information_schema",
        "shared",
        "common",
        "postgres",
        "template0",
        "template1",
        "base",
        "head",
        "heads",
    }
)


@dataclass(frozen=True)
class Service:
    name: str
    folder: Path

    @property
    def schema(self) -> str:
        return self.name

    @property
    def migrations_dir(self) -> Path:
        return self.folder / "migrations"

    @property
    def owner_role(self) -> str:
        return f"{self.name}_owner"

    @property
    def app_role(self) -> str:
        return f"{self.name}_app"


def service_name_problem(name: str) -> str | None:
    """Why `name` cannot be a service name, or None when it can."""
    if not SERVICE_NAME_RE.match(name):
        return "must be a lowercase identifier: a letter, then letters, digits or _"
    if len(name) > MAX_SERVICE_NAME:
        return f"must be at most {MAX_SERVICE_NAME} characters (revision ids must fit 32)"
    if name in RESERVED_NAMES or name.startswith("pg_"):
        return "is reserved (a Postgres or svcmig name)"
    return None


def find_project_root(start: Path | None = None) -> Path:
    """The nearest folder at or above `start` that holds `alembic.ini` and `services/`.

    `SVCMIG_PROJECT_ROOT` overrides the search (tests and the Lambda bundle use it).
    """
    env_root = os.environ.get("SVCMIG_PROJECT_ROOT")
    if env_root:
        root = Path(env_root).resolve()
        if not (root / "services").is_dir():  # a typo must not read as "no services at all"
            raise ProjectError(f"SVCMIG_PROJECT_ROOT is {env_root}, which has no services/ "
                               "folder; point it at the project root (or unset it)")
        return root
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "services").is_dir() and (folder / "alembic.ini").is_file():
            return folder
    raise ProjectError(
        f"no svcmig project at or above {here}: expected a folder with alembic.ini and services/; "
        "run svcmig from the repository root or set SVCMIG_PROJECT_ROOT"
    )


def discover_services(root: Path) -> list[Service]:
    """Every `services/<name>/migrations/` folder, sorted by name; bad names are refused."""
    services_dir = root / "services"
    found: list[Service] = []
    for entry in sorted(services_dir.iterdir()) if services_dir.is_dir() else []:
        if not entry.is_dir() or entry.name.startswith(("_", ".")):
            continue
        if not (entry / "migrations").is_dir():
            continue
        problem = service_name_problem(entry.name)
        if problem:
            raise ProjectError(f"{entry}: service name {entry.name!r} {problem}; rename the folder")
        found.append(Service(entry.name, entry))
    return found
