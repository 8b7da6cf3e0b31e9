"""What the migrator custom resources carry, so CloudFormation re-runs them exactly when a
migration file changes: the digest of every migration file (which also tells the migrator
whether its bundle is the release being deployed or the one being left, `migrator.digest`),
and each service's code head (for the logs)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from migrations_runtime.engine.validate import build_graph

from .migrator.digest import files_digest, migration_files


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
