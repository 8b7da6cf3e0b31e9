"""What the migrator custom resources carry, so CloudFormation re-runs them exactly when a
migration file changes: a hash of every migration file, and each service's code head (the
newest revision id, whose timestamp makes a rollback to older code recognisable)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from migrations_runtime.engine.validate import build_graph

SKIP_PARTS = frozenset({"__pycache__"})


def migration_files(root: Path) -> list[Path]:
    """Every file under services/*/migrations/, in a stable order."""
    found = [p for p in (root / "services").glob("*/migrations/**/*")
             if p.is_file() and not SKIP_PARTS.intersection(p.parts) and p.suffix != ".pyc"]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


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


@dataclass(frozen=True)
class MigrationsFingerprint:
    hash: str
    heads: dict[str, str]  # service → newest revision id in the code

    def properties(self, phase: str) -> dict[str, object]:
        """The custom resource's properties (CloudFormation passes them back on Update)."""
        return {"Phase": phase, "MigrationsHash": self.hash, "CodeHeads": dict(self.heads)}


def fingerprint(root: Path) -> MigrationsFingerprint:
    """Validate the migrations (a broken graph fails the synth, not the deploy) and hash them."""
    graph = build_graph(root)
    heads = {name: chain[-1].id for name, chain in sorted(graph.chains.items()) if chain}
    return MigrationsFingerprint(files_digest(root, migration_files(root)), heads)
