"""Step 6 of the flow: one result object for the CLI, the Lambda response and the tests, plus the
structured log line written per revision."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .errors import MigrationFailed, PlanError, RunStopped
from .load import Revision
from .lockwait import LockStats

# Held while a whole line goes to stderr: a log line, or a line a Python revision printed. The
# lanes (`lanes.py`) log from several threads while the calling thread runs a revision; a line
# written in pieces would be cut into.
OUTPUT_LOCK = threading.RLock()

if TYPE_CHECKING:
    from .plan import Plan


def _duration_ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


@dataclass(frozen=True)
class RevisionResult:
    service: str
    revision: str
    phase: str
    file: str
    duration_ms: int
    outcome: str

    @classmethod
    def of(cls, revision: Revision, started: float, outcome: str) -> RevisionResult:
        return cls(revision.service, revision.id, revision.phase, revision.file,
                   _duration_ms(started), outcome)

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class RunResult:
    plan: Plan  # as it stands after the run: what is still pending, and the warnings
    results: tuple[RevisionResult, ...]
    locks: LockStats = field(default_factory=LockStats)  # what the run's locks cost
    hold_warnings: tuple[dict[str, object], ...] = ()  # long or ill-placed strong-lock holds

    def as_dict(self) -> dict[str, object]:
        return {
            "phase": self.plan.phase,
            "applied": [r.as_dict() for r in self.results],
            "warnings": [a.as_dict() for a in self.plan.warnings] + [
                {k: v for k, v in w.items() if k != "event"} | {"severity": "warning"}
                for w in self.hold_warnings],
            "services": [s.as_dict() for s in self.plan.services],
            "locks": self.locks.as_dict(),
        }


def failure_dict(err: Exception, phase: str) -> dict[str, object]:
    """What `migrate --json` prints when the run did not complete: the revisions applied before
    it stopped and why it stopped."""
    if isinstance(err, PlanError):
        anomalies = [a.as_dict() for a in err.plan.anomalies] if err.plan is not None else []
        return {"phase": phase, "applied": [], "outcome": "refused", "error": str(err),
                "anomalies": anomalies}
    if isinstance(err, MigrationFailed):
        return {"phase": phase, "applied": [r.as_dict() for r in err.applied],
                "outcome": "failed", "error": str(err),
                "failed": {"revision": err.revision, "file": str(err.path), "line": err.line,
                           "error": err.message},
                **({"locks": err.locks.as_dict()} if err.locks is not None else {})}
    if isinstance(err, RunStopped):
        return {"phase": phase, "applied": [r.as_dict() for r in err.applied],
                "outcome": "interrupted" if err.interrupted else "error", "error": str(err)}
    return {"phase": phase, "applied": [], "outcome": "error", "error": str(err)}


def json_log(revision: Revision, upgrade: bool, started: float, outcome: str,
             error: str | None = None) -> dict[str, object]:
    """The structured line logged for each revision run."""
    line: dict[str, object] = {
        "event": "revision",
        "service": revision.service,
        "revision": revision.id,
        "phase": revision.phase,
        "direction": "up" if upgrade else "down",
        "file": revision.file,
        "duration_ms": _duration_ms(started),
        "outcome": outcome,
    }
    if error:
        line["error"] = error
    return line


def status_text(plan: Plan) -> str:
    """A table a person reads: one line per service, then anomalies."""
    rows = [("service", "applied head", "code head", "pending")]
    dirty = {a.revision for a in plan.anomalies if a.kind == "dirty"}
    for s in plan.services:
        head = s.applied_head or "-"
        if head in dirty:  # recorded as the head, but it stopped halfway: say so in the table
            head += " (DIRTY: stopped halfway)"
        rows.append((s.service, head, s.code_head or "-", str(len(s.pending))))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in rows]
    for anomaly in plan.anomalies:
        lines.append(f"{'error' if anomaly.fatal else 'warning'}: {anomaly.message}")
    return "\n".join(lines)


def lock_summary_text(locks: LockStats) -> str:
    """One line a person reads at the end of a run: what waiting for and holding locks cost."""
    hold = (f"; longest strong-lock hold on a pre-existing table {locks.longest_hold_ms} ms "
            f"({locks.longest_hold_mode} on {locks.longest_hold_table} by "
            f"{locks.longest_hold_revision})") if locks.longest_hold_table else \
        "; no strong lock on a pre-existing table"
    return (f"locks: {locks.attempts} attempt(s) gave up waiting, {locks.waited_ms_total} ms "
            f"waited in all, {locks.waited_ms_max} ms at most{hold}")
