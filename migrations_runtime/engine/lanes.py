"""Step 5 of the flow, across services: a plan's steps applied on up to `jobs` lanes at once.

Every revision already runs in its service's own session, and a revision waits only for its
parents (the previous revision of its service, and its `depends_on`): services that do not
depend on each other need not wait for each other. A lane is a thread with its own runner
(its sessions, tokens and blocker watch); all of a service's steps go to one lane (its session
and tokens are that lane's), services assigned in plan order to the lane with the fewest steps
so far. A lane runs its steps in plan order, each once every parent in the plan has committed.
The plan's order honours the same parents, so the earliest step not yet applied can always
run: no lane waits for ever.

The first failure stops every lane after the revision it is running (each revision commits or
rolls back whole, with its ledger row): the run then reports the failure, and every revision
that committed, in plan order. `jobs = 1` is the serial run, in plan order, on the calling
thread.

At 50 services x 200 revisions, two lanes apply the plan in 0.56 of the serial time on a
2-CPU machine (`bench/bench_migrate.py`, docs/benchmarks.md): one lane waits on the server
most of the time.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from .discover import Service
from .load import Revision
from .lockwait import LockStats
from .report import RevisionResult
from .statements import service_of
from .validate import parents

DEFAULT_JOBS = 2


class LaneRunner(Protocol):
    """What a lane needs of a runner (`apply.Runner`)."""

    stats: LockStats
    warnings: list[dict[str, object]]

    def issue_tokens(self, revisions: Iterable[Revision], upgrade: bool = True) -> None: ...
    def prefetch(self, service: Service, python: bool) -> None: ...
    def apply(self, revision: Revision, upgrade: bool = True) -> RevisionResult: ...
    def release(self, service: str) -> None: ...
    def cancel(self) -> None: ...


def assign_lanes(steps: Sequence[Revision], jobs: int) -> list[list[int]]:
    """The steps' indexes, per lane: at most `jobs` lanes (no more than there are services),
    each service's steps on one lane, in plan order."""
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, not {jobs}")
    counts: dict[str, int] = {}
    for revision in steps:
        counts[revision.service] = counts.get(revision.service, 0) + 1
    loads = [0] * min(jobs, len(counts))
    lane_of: dict[str, int] = {}
    for service, count in counts.items():  # in plan order: a dict keeps insertion order
        lane = min(range(len(loads)), key=loads.__getitem__)
        lane_of[service] = lane
        loads[lane] += count
    lanes: list[list[int]] = [[] for _ in loads]
    for index, revision in enumerate(steps):
        lanes[lane_of[revision.service]].append(index)
    return lanes


def next_services(steps: Sequence[Revision]) -> list[Service | None]:
    """For each step, the service whose revisions come next after its own run of revisions
    (its session is logged in meanwhile, `RevisionSessions.prefetch`); None for the last."""
    found: list[Service | None] = [None] * len(steps)
    for index in range(len(steps) - 2, -1, -1):
        after = steps[index + 1]
        found[index] = service_of(after) if after.service != steps[index].service \
            else found[index + 1]
    return found


class _Progress:
    """Which of the plan's revisions have committed, and whether the run is stopping."""

    def __init__(self, steps: Sequence[Revision]) -> None:
        self._in_plan = {revision.id for revision in steps}
        self._done: set[str] = set()
        self._stopping = False
        self._changed = threading.Condition()

    def wait_for_parents(self, revision: Revision) -> bool:
        """Wait until every parent of `revision` in the plan has committed; False when the run
        is stopping (then the revision must not start)."""
        needed = [p for p in parents(revision) if p in self._in_plan]
        with self._changed:
            while not self._stopping and not all(p in self._done for p in needed):
                self._changed.wait()
            return not self._stopping

    def committed(self, revision: Revision) -> None:
        with self._changed:
            self._done.add(revision.id)
            self._changed.notify_all()

    def stop(self, into: LaneRun | None = None, failure: BaseException | None = None) -> None:
        """Stop every lane after its running revision; `failure` (kept in `into` when it is
        the first) says why."""
        with self._changed:
            self._stopping = True
            if into is not None and into.failure is None:
                into.failure = failure
            self._changed.notify_all()


@dataclass
class LaneRun:
    """What the lanes did: `results` by plan index, `running` the revision each lane was
    applying when it stopped (None when between revisions), `failure` the first exception
    raised in a lane."""

    results: dict[int, RevisionResult] = field(default_factory=dict)
    running: list[Revision | None] = field(default_factory=list)
    failure: BaseException | None = None

    def applied(self) -> tuple[RevisionResult, ...]:
        return tuple(self.results[index] for index in sorted(self.results))


def run_lanes(steps: Sequence[Revision], runners: Sequence[LaneRunner],
              lanes: Sequence[Sequence[int]], into: LaneRun) -> None:
    """Apply `steps`, lane k's (`lanes[k]`, from `assign_lanes`) with `runners[k]`: lane 0 on
    this thread (so Ctrl-C and SIGTERM reach a running revision, as in a serial run), the
    others on threads of their own. Returns once every lane has stopped; raises the first
    failure (`into` keeps what was applied, and what was running, either way)."""
    progress = _Progress(steps)
    into.running = [None] * len(lanes)

    def run(lane: int) -> None:
        try:
            _run_lane(steps, runners[lane], lanes[lane], progress, into, lane)
        except BaseException as err:
            progress.stop(into, err)
            if lane == 0:
                raise

    threads = [threading.Thread(target=run, args=(lane,), name=f"svcmig-lane-{lane}")
               for lane in range(1, len(lanes))]
    for thread in threads:
        thread.start()
    try:
        run(0)  # on failure, the other lanes end the revision they are running, then stop
    except KeyboardInterrupt:
        _cancel(runners[1:])
        raise
    finally:
        for thread in threads:
            _join(thread, runners[1:])
    if into.failure is not None:
        raise into.failure


def _join(thread: threading.Thread, others: Sequence[LaneRunner]) -> None:
    """Wait for a lane (stopped or stopping); a Ctrl-C meanwhile cancels what it runs."""
    while True:
        try:
            thread.join()
            return
        except KeyboardInterrupt:
            _cancel(others)


def _cancel(runners: Sequence[LaneRunner]) -> None:
    """Ctrl-C (or SIGTERM) stops the run now: the other lanes' running statements are
    cancelled too (their revisions roll back, or a non-transactional one fails as it would
    alone), not waited for."""
    for runner in runners:
        runner.cancel()


def _run_lane(steps: Sequence[Revision], runner: LaneRunner, indexes: Sequence[int],
              progress: _Progress, into: LaneRun, lane: int) -> None:
    own = [steps[index] for index in indexes]
    runner.issue_tokens(own)
    last = {revision.service: position for position, revision in enumerate(own)}
    upcoming = next_services(own)
    python = {revision.service for revision in own if revision.kind == "python"}
    for position, (index, revision) in enumerate(zip(indexes, own, strict=True)):
        if not progress.wait_for_parents(revision):
            return
        following = upcoming[position]
        if following is not None:
            runner.prefetch(following, following.name in python)
        into.running[lane] = revision
        into.results[index] = runner.apply(revision)
        into.running[lane] = None
        progress.committed(revision)
        if last[revision.service] == position:
            runner.release(revision.service)
