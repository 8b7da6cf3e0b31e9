"""What the migrator custom resources carry, so CloudFormation re-runs them exactly when a
migration file changes: the digest of every migration file (which also tells the migrator
whether its bundle is the release being deployed or the one being left, `migrator.digest`),
each service's code head (for the logs), and the digest of every backfill file (the deploy
starts the backfill runner again when it or the migrations change)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from migrations_runtime.engine.backfill import load_backfills
from migrations_runtime.engine.validate import build_graph

from .migrator.digest import backfills_digest, files_digest, migration_files


@dataclass(frozen=True)
class MigrationsFingerprint:
    hash: str
    heads: dict[str, str]  # service → newest revision id in the code
    backfills: str = ""  # digest of services/*/backfills/

    def properties(self, phase: str) -> dict[str, object]:
        """The custom resource's properties (CloudFormation passes them back on Update)."""
        return {"Phase": phase, "MigrationsHash": self.hash, "CodeHeads": dict(self.heads)}

    def backfill_properties(self) -> dict[str, object]:
        """The backfill start's properties: a change to either hash starts the runner again
        (a new backfill, or a revision a waiting backfill needed, e.g. its key's index)."""
        return {"Phase": "backfills", "MigrationsHash": self.hash,
                "BackfillsHash": self.backfills}


def fingerprint(root: Path) -> MigrationsFingerprint:
    """Validate the migrations and backfills (a broken file fails the synth, not the deploy)
    and hash them."""
    graph = build_graph(root)
    load_backfills(list(graph.services))
    heads = {name: chain[-1].id for name, chain in sorted(graph.chains.items()) if chain}
    return MigrationsFingerprint(files_digest(root, migration_files(root)), heads,
                                 backfills_digest(root))
