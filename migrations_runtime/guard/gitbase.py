"""`--base GIT_REV`: which revision and backfill files changed since the base, and the
append-only rules.

A revision on the base branch may already be applied somewhere, so editing, renaming or
deleting it is an error; a new revision must sort after every revision its service has on the
base, or the planner sees it as out of order. A backfill on the base branch may have started or
finished somewhere: editing it is an error (the runner refuses a changed checksum once it
started), and so is renaming it to another name (it would run again); deleting one is not (a
revision that requires it fails `svcmig check`), nor is its order. Whitespace-only edits (same
normalised checksum as the ledger uses) are not edits.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ..engine import load
from ..engine.backfill import BACKFILLS_FOLDER
from ..engine.errors import MigrationFileError, SvcmigError
from . import rules
from .findings import Finding


class GitError(SvcmigError):
    """git refused: not a repository, or an unknown base revision (a usage error)."""


@dataclass
class BaseDiff:
    changed: list[Path] = field(default_factory=list)
    """Added, edited or renamed revision files (current paths): the files to lint."""
    findings: list[Finding] = field(default_factory=list)


def _git(root: Path, *args: str) -> str:
    try:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                              check=False)
    except FileNotFoundError as err:
        raise GitError("git is not installed; --base needs it") from err
    if done.returncode != 0:
        raise GitError(f"git {' '.join(args[:2])} failed: {done.stderr.strip()}")
    return done.stdout


def _is_revision_path(rel: str) -> bool:
    parts = PurePosixPath(rel).parts
    return (len(parts) == 4 and parts[0] == "services" and parts[2] == "migrations"
            and not load.not_a_revision(parts[3]))


def _is_backfill_path(rel: str) -> bool:
    parts = PurePosixPath(rel).parts
    return (len(parts) == 4 and parts[0] == "services" and parts[2] == BACKFILLS_FOLDER
            and not load.not_a_revision(parts[3]))


def _backfill_name(rel: str) -> str | None:
    """`<service>.<slug>` of a backfill file name, or None for a name the loader refuses."""
    match = load.FILENAME_RE.match(PurePosixPath(rel).name)
    return f"{match['service']}.{match['slug']}" if match else None


def _newest_on_base(names: list[str]) -> dict[str, str]:
    """service → newest revision timestamp on the base."""
    newest: dict[str, str] = {}
    for rel in names:
        try:
            name = load.parse_filename(Path(rel))
        except MigrationFileError:
            continue
        if name.timestamp > newest.get(name.service, ""):
            newest[name.service] = name.timestamp
    return newest


def diff_against(root: Path, base: str) -> BaseDiff:
    """Compare the working tree (committed, staged, unstaged and untracked) with `base`."""
    try:
        _git(root, "rev-parse", "--verify", "--quiet", f"{base}^{{commit}}")
    except GitError as err:
        raise GitError(f"--base {base}: no such commit here; name a branch, tag or commit "
                       "(in CI, fetch it first: git fetch origin main)") from err
    status = _git(root, "diff", "--relative", "--name-status", "--no-renames", "-z", base, "--",
                  "services").split("\0")
    untracked = _git(root, "ls-files", "--others", "--exclude-standard", "-z", "--",
                     "services").split("\0")
    on_base = [n for n in _git(root, "ls-tree", "-r", "--name-only", "-z", base, "--",
                               "services").split("\0") if _is_revision_path(n)]
    result = BaseDiff()
    _diff_backfills(root, base, status, untracked, result)
    added: list[str] = [rel for rel in untracked if _is_revision_path(rel)]
    deleted: list[str] = []
    for code, rel in zip(status[0::2], status[1::2], strict=False):
        if not _is_revision_path(rel):
            continue
        if code.startswith("D"):
            deleted.append(rel)
        elif code.startswith("A"):
            added.append(rel)
        elif load.checksum(_git(root, "show", f"{base}:./{rel}")) != load.checksum(
                (root / rel).read_text(encoding="utf-8")):
            result.findings.append(Finding(
                root / rel, 1, 1, rules.APPEND_ONLY,
                f"revision {rel} from {base} was edited; databases that applied it will "
                "not run the change (and the ledger flags it as tampered)"))
            result.changed.append(root / rel)
    # Renames are paired by content ourselves: git's similarity guess pairs unrelated small files.
    by_checksum = {load.checksum((root / rel).read_text(encoding="utf-8")): rel for rel in added}
    renamed: set[str] = set()
    for rel in deleted:
        twin = by_checksum.get(load.checksum(_git(root, "show", f"{base}:./{rel}")))
        if twin is not None:
            renamed.add(twin)
            result.findings.append(Finding(
                root / twin, 1, 1, rules.APPEND_ONLY,
                f"revision {rel} from {base} was renamed; its id may already be applied"))
        else:
            result.findings.append(Finding(
                root / rel, 1, 1, rules.APPEND_ONLY,
                f"revision {rel} from {base} was deleted; it may already be applied"))
    newest = _newest_on_base(on_base)
    for rel in added:
        path = root / rel
        result.changed.append(path)
        if rel in renamed:
            continue
        try:
            name = load.parse_filename(path)
        except MigrationFileError:
            continue  # the filename rule reports it
        latest = newest.get(name.service)
        if latest is not None and name.timestamp <= latest:
            result.findings.append(Finding(
                path, 1, 1, rules.OUT_OF_ORDER,
                f"new revision {name.timestamp} is not newer than {latest}, the newest "
                f"{name.service} revision on {base}; databases that applied that one skip it"))
    return result


def _diff_backfills(root: Path, base: str, status: list[str], untracked: list[str],
                    result: BaseDiff) -> None:
    """Added and edited backfills are linted; an edited one, or one renamed to another
    `<service>.<slug>`, is an append-only error."""
    added = [rel for rel in untracked if _is_backfill_path(rel)]
    deleted: list[str] = []
    for code, rel in zip(status[0::2], status[1::2], strict=False):
        if not _is_backfill_path(rel):
            continue
        if code.startswith("D"):
            deleted.append(rel)
        elif code.startswith("A"):
            added.append(rel)
        else:
            result.changed.append(root / rel)
            if load.checksum(_git(root, "show", f"{base}:./{rel}")) != load.checksum(
                    (root / rel).read_text(encoding="utf-8")):
                result.findings.append(Finding(
                    root / rel, 1, 1, rules.APPEND_ONLY,
                    f"backfill {rel} from {base} was edited; where it started, the runner "
                    "refuses its new checksum, and where it finished the change never runs: "
                    "write a new backfill (a new slug) for the change"))
    by_checksum = {load.checksum((root / rel).read_text(encoding="utf-8")): rel for rel in added}
    for rel in deleted:
        twin = by_checksum.get(load.checksum(_git(root, "show", f"{base}:./{rel}")))
        if twin is not None and _backfill_name(twin) != _backfill_name(rel):
            result.findings.append(Finding(
                root / twin, 1, 1, rules.APPEND_ONLY,
                f"backfill {rel} from {base} was renamed to {_backfill_name(twin)}; a backfill "
                f"is known by its name ({_backfill_name(rel)}), so where it ran it would run "
                "again"))
    result.changed.extend(root / rel for rel in added)
