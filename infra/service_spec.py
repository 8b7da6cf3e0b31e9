"""What a service folder declares to the infrastructure: `services/<name>/service.toml`.

Adding `services/billing` with a `service.toml` (and a `handler.py`) is all it takes to get a
function, its routes, its database secret and its alarms; no file under infra/ changes.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from migrations_runtime.engine.discover import service_name_problem

SPEC_FILE = "service.toml"
METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "ANY"})
ROUTE_RE = re.compile(r"^/[A-Za-z0-9_\-/{}+.]*$")


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    public: bool = False  # True: no IAM authorizer (documented reason required in `why_public`)


@dataclass(frozen=True)
class Uploads:
    """`[uploads]`: a private bucket the function presigns PUT URLs for; objects are transient
    hand-offs, so they expire."""

    expire_days: int = 7


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    folder: Path
    memory_mb: int = 512
    timeout_seconds: int = 10
    reserved_concurrency: int = 10
    latency_critical: bool = False
    requirements: tuple[str, ...] = ()
    routes: tuple[Route, ...] = ()
    uploads: Uploads | None = None  # None: no bucket, no UPLOAD_BUCKET (the route answers 503)

    @property
    def handler(self) -> str:
        return f"services.{self.name}.handler.handler"

    @property
    def has_function(self) -> bool:
        """A function is built only once the service has code to run."""
        return (self.folder / "handler.py").is_file()

    @property
    def has_schema(self) -> bool:
        return (self.folder / "migrations").is_dir()

    @property
    def app_user(self) -> str:
        """The database role the function logs in as (created by the migrator)."""
        return f"{self.name}_app"


def load_spec(folder: Path) -> ServiceSpec:
    """What `services/<name>/service.toml` declares, checked; defaults when it is absent."""
    path = folder / SPEC_FILE
    data = tomllib.loads(path.read_text()) if path.is_file() else {}
    function = dict(data.get("function", {}))
    problem = service_name_problem(folder.name)
    if problem:
        raise ValueError(f"{folder}: service name {folder.name!r} {problem}")
    routes = []
    for raw in data.get("routes", []):
        method, route_path = str(raw.get("method", "")).upper(), str(raw.get("path", ""))
        if method not in METHODS or not ROUTE_RE.match(route_path):
            raise ValueError(f"{path}: bad route {raw!r}: need method in {sorted(METHODS)} "
                             "and a path starting with /")
        if raw.get("public") and not raw.get("why_public"):
            raise ValueError(f"{path}: public route {route_path} needs why_public = \"...\"")
        routes.append(Route(method, route_path, bool(raw.get("public", False))))
    allowed = {"memory_mb", "timeout_seconds", "reserved_concurrency", "latency_critical",
               "requirements"}
    unknown = set(function) - allowed
    if unknown:
        raise ValueError(f"{path}: unknown [function] keys {sorted(unknown)}")
    if "requirements" in function:
        function["requirements"] = tuple(function["requirements"])
    spec = ServiceSpec(name=folder.name, folder=folder, routes=tuple(routes),
                       uploads=_uploads(path, data.get("uploads")), **function)
    if not 1 <= spec.timeout_seconds <= 29:  # API Gateway's integration limit is 30 s
        raise ValueError(f"{path}: timeout_seconds must be 1..29")
    return spec


def _uploads(path: Path, table: object) -> Uploads | None:
    """`[uploads]` checked strictly: a typo must not silently drop the bucket."""
    if table is None:
        return None
    if not isinstance(table, dict):
        raise ValueError(f"{path}: [uploads] must be a table")
    unknown = set(table) - {"enabled", "expire_days"}
    if unknown:
        raise ValueError(f"{path}: unknown [uploads] keys {sorted(unknown)}")
    enabled = table.get("enabled")
    if not isinstance(enabled, bool):
        raise ValueError(f"{path}: [uploads] needs enabled = true or false")
    days = table.get("expire_days", Uploads.expire_days)
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise ValueError(f"{path}: [uploads] expire_days must be a whole number of days >= 1")
    return Uploads(expire_days=days) if enabled else None


def discover_specs(root: Path) -> list[ServiceSpec]:
    """Every service folder with a `service.toml` or a `migrations/` folder, sorted by name."""
    services = root / "services"
    folders = sorted(p for p in services.iterdir() if p.is_dir()) if services.is_dir() else []
    return [load_spec(f) for f in folders
            if not f.name.startswith(("_", ".")) and f.name != "shared"
            and ((f / SPEC_FILE).is_file() or (f / "migrations").is_dir())]


def layer_requirements(specs: list[ServiceSpec]) -> list[str]:
    """The shared layer holds the union of what the services with a function declare."""
    return sorted({r for s in specs if s.has_function for r in s.requirements})
