"""The digest of a project's migration files: what the custom resources carry as
`MigrationsHash` (computed at synth) and what the migrator's bundle holds (computed when the
bundle is built, `DIGEST_FILE`). Equal digests mean the same files, so the migrator knows which
release's code it holds: the new properties' (a deploy) or the old ones' (CloudFormation
rolling back while the function still holds the failed release)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

SKIP_PARTS = frozenset({"__pycache__"})
DIGEST_FILE = "migrations.digest"  # in the bundle's root


def migration_files(root: Path) -> list[Path]:
    """Every file under services/*/migrations/, in a stable order."""
    found = [p for p in (root / "services").glob("*/migrations/**/*")
             if p.is_file() and not SKIP_PARTS.intersection(p.parts) and p.suffix != ".pyc"]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def backfill_paths(root: Path) -> list[Path]:
    """Every file under services/*/backfills/, in a stable order: what the deploy's backfill
    start carries as `BackfillsHash`, so it starts the runner again when one changes."""
    found = [p for p in (root / "services").glob("*/backfills/**/*")
             if p.is_file() and not SKIP_PARTS.intersection(p.parts) and p.suffix != ".pyc"]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def backfills_digest(root: Path) -> str:
    """The digest of the backfill files under `root` (computed: they are few and small)."""
    return files_digest(root, backfill_paths(root))


def _relative(path: Path, roots: tuple[Path, ...]) -> str:
    for base in roots:
        if path.is_relative_to(base):
            return path.relative_to(base).as_posix()
    raise ValueError(f"{path} is outside {', '.join(map(str, roots))}")


def files_digest(roots: Path | tuple[Path, ...], files: Iterable[Path]) -> str:
    """sha256 over each file's path (relative to the first root holding it) and bytes, so the
    digest is the same on every machine."""
    bases = (roots,) if isinstance(roots, Path) else roots
    digest = hashlib.sha256()
    for path in files:
        digest.update(_relative(path, bases).encode() + b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def migrations_digest(root: Path) -> str:
    """The digest of the migration files under `root`: read from `DIGEST_FILE` when the bundle
    has one (written with the bundle), else computed."""
    saved = root / DIGEST_FILE
    if saved.is_file():
        return saved.read_text().strip()
    return files_digest(root, migration_files(root))
