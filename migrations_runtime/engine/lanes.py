"""Step 5 of the flow, across services: a plan's steps applied on up to `jobs` lanes at once.

Every revision already runs in its service's own session, and a revision waits only for its
parents (the previous revision of its service, and its `depends_on`): services that do not
depend on each other need not wait for each other. A lane is a thread with its own runner
(its sessions, tokens and blocker watch). All of a service's steps go to one lane (its session
and tokens are that lane's), and so do the steps of services linked to it (`linked`: one can
see the other's schema, or depends on it), so linked services run in plan order as in a serial
run; groups are assigned in plan order to the lane with the fewest steps so far. A lane runs
its steps in plan order, each once every parent in the plan has committed. The plan's order
honours the same parents, so the earliest step not yet applied can always run: no lane waits
for ever.

Python revisions run on the calling thread, which the lanes hand them to: one at a time (
Alembic's `op` and stdout are the process's), where signals are delivered and `signal.signal`
works, as in a serial run. The calling thread also takes Ctrl-C and SIGTERM: the run stops
then, and the lanes' running statements are cancelled.

A revision without a transaction (a concurrent index build) runs alone, once every revision
before it in the plan has committed: no other lane starts one while it waits or runs, as its
build waits for every older transaction. A transactional revision that fails while a revision
before it in the plan had not committed yet runs once more after all of them have (`_run_lane`):
linking reads text, and a grant can come from code the text does not show.

A revision that fails for good ends the run as a serial run would end: the revisions before
it in the plan still run on every lane, none after it starts, and one after it waiting for its
locks makes no further attempt (each revision commits or rolls back whole, with its ledger
row); the run then raises the earliest failure in the plan (naming the other lanes'), with
every revision that committed, in plan order. Ctrl-C or SIGTERM stops every lane after its
running revision.
`jobs = 1` is the serial run, in plan order, on the calling thread.

At 50 services x 200 revisions, two lanes apply the plan in about 0.56 of the serial time on
a 2-CPU machine (`bench/bench_migrate.py`, docs/benchmarks.md): one lane waits on the server
most of the time.
"""

from __future__ import annotations

import queue
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from .discover import Service
from .errors import MigrationFailed
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
    stopping: threading.Event  # set: waits for locks end, the revision is not applied
    retry_on_failure: bool  # set: a failure's log line waits for `log_held`

    def issue_tokens(self, revisions: Iterable[Revision], upgrade: bool = True) -> None: ...
    def prefetch(self, service: Service, python: bool) -> None: ...
    def apply(self, revision: Revision, upgrade: bool = True) -> RevisionResult: ...
    def release(self, service: str) -> None: ...
    def cancel(self) -> None: ...
    def log_held(self, again: bool) -> None: ...


def assign_lanes(steps: Sequence[Revision], jobs: int,
                 group_of: Mapping[str, str] | None = None) -> list[list[int]]:
    """The steps' indexes, per lane: at most `jobs` lanes, each service's steps on one lane
    with those of its group (`group_of`: service → its group's name, from `linked_services`;
    a service not in it is a group of its own), in plan order."""
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, not {jobs}")
    group_of = group_of or {}
    groups = [group_of.get(revision.service, revision.service) for revision in steps]
    sizes: dict[str, int] = {}  # per group, in plan order (a dict keeps insertion order)
    for group in groups:
        sizes[group] = sizes.get(group, 0) + 1
    loads = [0] * min(jobs, len(sizes))
    lane_of: dict[str, int] = {}
    for name, size in sizes.items():
        lane_of[name] = min(range(len(loads)), key=loads.__getitem__)
        loads[lane_of[name]] += size
    lanes: list[list[int]] = [[] for _ in loads]
    for index, group in enumerate(groups):
        lanes[lane_of[group]].append(index)
    return lanes


def linked_services(steps: Sequence[Revision], text_of: Callable[[Revision], str],
                    known: Mapping[str, Revision],
                    access: Iterable[tuple[str, str]] = ()) -> dict[str, str]:
    """Each of the plan's services → the first service in the plan of its group: the services
    that must share a lane (`assign_lanes`), so they run in
    plan order as in a serial run: one depends on the other (`depends_on`); one's owner may
    already use the other's schema (`access`: pairs of any services, from the database,
    followed through services outside the plan); a pending revision of one names the other's
    owner role (a grant, default privileges); or a pending revision grants to anyone but its
    own service's roles, or in a way the text cannot tell to whom (PUBLIC, a role of no
    service, SQL built at run time), which links it to every service. Erring on the side of
    linking costs only parallelism."""
    services = list(dict.fromkeys(revision.service for revision in steps))
    group: dict[str, str] = {}

    def root(name: str) -> str:
        while group.setdefault(name, name) != name:
            name = group[name]
        return name

    def link(one: str, other: str) -> None:
        group[root(other)] = root(one)

    for one, other in access:
        link(one, other)
    for revision in steps:
        for target in revision.depends_on:
            if target in known:
                link(revision.service, known[target].service)
        text = text_of(revision)
        for name in {name.lower() for name in _ROLE.findall(text)}:
            link(revision.service, name)
        if _GRANT.search(text) and _grants_beyond(text, revision.service):
            for other in services:
                link(revision.service, other)
    first: dict[str, str] = {}  # group → its first service in the plan
    for name in services:
        first.setdefault(root(name), name)
    return {name: first[root(name)] for name in services}


def _grants_beyond(text: str, service: str) -> bool:
    """Whether a revision's text may grant to anyone but `service`'s own roles: a word after
    any `TO` (up to the statement's end or WITH) that is not one of them (PUBLIC, a role of
    another service or of none, SQL built at run time), or text built at run time."""
    own = {f"{service}_owner", f"{service}_app"}
    if _BUILT.search(text):
        return True
    return any(word.lower() not in own for clause in _TO_CLAUSE.findall(text)
               for word in _WORD.findall(clause))


# a role named in a revision: `<service>_owner` or `<service>_app`, as the server folds it
_ROLE = re.compile(r"\b([a-z][a-z0-9_]*?)_(?:owner|app)\b", re.IGNORECASE)
_GRANT = re.compile(r"\bgrant\b", re.IGNORECASE)
_TO_CLAUSE = re.compile(r"\bto\b(.*?)(?:;|\bwith\b|\bgranted\b|$)",
                        re.IGNORECASE | re.DOTALL)
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
# text put together at run time: dynamic SQL, string formatting or concatenation
_BUILT = re.compile(r"\bexecute\b|\bformat\s*\(|\|\||[{%+]", re.IGNORECASE)


def next_services(steps: Sequence[Revision]) -> list[Service | None]:
    """For each step, the service whose revisions come next after its own run of revisions
    (its session is logged in meanwhile, `RevisionSessions.prefetch`); None for the last."""
    found: list[Service | None] = [None] * len(steps)
    for index in range(len(steps) - 2, -1, -1):
        after = steps[index + 1]
        found[index] = service_of(after) if after.service != steps[index].service \
            else found[index + 1]
    return found


class _Stopped(Exception):
    """The run stopped (or failed before it in the plan) before a lane's Python revision began
    on the calling thread: it is not applied, and not a failure."""


class _Progress:
    """Which of the plan's revisions have committed, and whether the run is stopping: for every
    revision (`stopping`, each runner's event too, or an interrupt was `requested`), or for
    those after a revision that failed (`failed`)."""

    def __init__(self, steps: Sequence[Revision], stopping: threading.Event,
                 requested: Callable[[], bool], events: Sequence[threading.Event]) -> None:
        self._index = {revision.id: index for index, revision in enumerate(steps)}
        self._done: set[str] = set()
        self._committed = 0  # steps [0, _committed) of the plan have all committed
        self._limit = len(steps)  # no step after this one starts: it failed
        self._steps = steps
        self.stopping = stopping
        self._requested = requested
        self._events = events  # each runner's: set, it stops waiting for locks
        self._active: dict[str, threading.Event] = {}  # running revision → its runner's event
        self._to_retry: set[int] = set()  # failed once, to run again: nothing after them starts
        self._changed = threading.Condition()
        self._running = 0  # lanes inside a revision
        self._alone = False  # a revision without a transaction is running
        self._alone_waiting = 0  # revisions without a transaction waiting to run

    def stopped(self) -> bool:
        return self.stopping.is_set() or self._requested()

    def halted(self, revision: Revision) -> bool:
        """Whether `revision` must not start (or be waited for): the run is stopping, or a
        revision before it in the plan failed — a serial run would never have started it."""
        return self.stopped() or self._index[revision.id] > self._limit

    def _wait(self) -> None:
        self._changed.wait(0.1)  # an interrupt is a flag, not a notification: look again soon

    def begin(self, revision: Revision, event: threading.Event) -> bool:
        """Wait until `revision` may start: every parent of it in the plan has committed, and
        a revision without a transaction runs alone, once every revision before it in the plan
        has committed (a concurrent index build waits for every older transaction, so another
        lane's revision would hold it up, or outlast its lock budget, as no serial run does;
        and it cannot be run again as a failed transactional one is, `retry`). False when it
        is `halted` (then it must not start). `event` is its runner's."""
        needed = [p for p in parents(revision) if p in self._index]
        index = self._index[revision.id]
        with self._changed:
            while not self.halted(revision) and (
                    not all(p in self._done for p in needed)
                    or any(failed < index for failed in self._to_retry)):
                self._wait()
            if revision.transactional:
                while not self.halted(revision) and (self._alone or self._alone_waiting):
                    self._wait()
            else:
                while not self.halted(revision) and self._committed < self._index[revision.id]:
                    self._wait()
                self._alone_waiting += 1
                while not self.halted(revision) and (self._alone or self._running):
                    self._wait()
                self._alone_waiting -= 1
                self._changed.notify_all()
            if self.halted(revision):
                return False
            self._running += 1
            self._alone = not revision.transactional
            self._active[revision.id] = event
            return True

    def ended(self, revision: Revision, committed: bool) -> None:
        with self._changed:
            self._running -= 1
            self._alone = False
            self._active.pop(revision.id, None)
            self._to_retry.discard(self._index[revision.id])
            if committed:
                self._done.add(revision.id)
                while (self._committed < len(self._steps)
                       and self._steps[self._committed].id in self._done):
                    self._committed += 1
            self._changed.notify_all()

    def earlier_pending(self, revision: Revision) -> bool:
        """Whether a revision before `revision` in the plan has not committed yet."""
        with self._changed:
            return self._committed < self._index[revision.id]

    def wait_for_earlier(self, revision: Revision) -> bool:
        """Wait until every revision before `revision` in the plan has committed; False when
        it is `halted` first. Meanwhile, and while it runs again, no revision after it starts:
        if it fails again, a serial run would have started none of them."""
        index = self._index[revision.id]
        with self._changed:
            self._to_retry.add(index)  # until its second attempt ends (`ended`)
            while not self.halted(revision) and self._committed < index:
                self._wait()
            if self.halted(revision):
                self._to_retry.discard(index)
                self._changed.notify_all()
                return False
            return True

    def failed(self, into: LaneRun, failure: MigrationFailed) -> None:
        """A revision failed for good: the revisions before it in the plan still run, on every
        lane, as a serial run would have run them; none after it starts, and those running
        stop waiting for their locks. The run's failure is the earliest in the plan."""
        with self._changed:
            index = self._index.get(failure.revision, -1)
            into.failures.append(failure)
            first = into.failure
            if first is None or (isinstance(first, MigrationFailed)
                                 and index < self._index.get(first.revision, -1)):
                into.failure = failure
            self._limit = min(self._limit, index)
            for running, event in self._active.items():
                if self._index[running] > self._limit:
                    event.set()
            self._changed.notify_all()

    def stop(self, into: LaneRun, failure: BaseException) -> None:
        """Stop every lane after its running revision; `failure` is the run's when first."""
        with self._changed:
            into.failures.append(failure)
            if into.failure is None:
                into.failure = failure
            self.stopping.set()
            for event in self._events:
                event.set()
            self._changed.notify_all()


@dataclass
class LaneRun:
    """What the lanes did: `results` by plan index, `running` the revision each lane was
    applying when it stopped (by lane; none for a lane that stopped between revisions),
    `failure` the first exception, `failures` all of them."""

    results: dict[int, RevisionResult] = field(default_factory=dict)
    running: dict[int, Revision] = field(default_factory=dict)
    failure: BaseException | None = None
    failures: list[BaseException] = field(default_factory=list)  # every lane's, in time

    def applied(self) -> tuple[RevisionResult, ...]:
        return tuple(self.results[index] for index in sorted(self.results))


class _Call:
    """A Python revision a lane hands to the calling thread, and what came of it."""

    def __init__(self, runner: LaneRunner, revision: Revision) -> None:
        self.runner, self.revision = runner, revision
        self.result: RevisionResult | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()


def run_lanes(steps: Sequence[Revision], runners: Sequence[LaneRunner],
              lanes: Sequence[Sequence[int]], into: LaneRun,
              interrupted: Callable[[], None] = lambda: None,
              requested: Callable[[], bool] = lambda: False) -> None:
    """Apply `steps`, lane k's (`lanes[k]`, from `assign_lanes`) with `runners[k]`. One lane
    runs on this thread; more run on threads of their own while this one applies the Python
    revisions they hand it. Returns once every lane has stopped; raises the run's failure
    (`into` keeps what was applied either way). `interrupted` is called first when Ctrl-C or
    SIGTERM arrives (the caller ignores further ones while the lanes are cancelled);
    `requested` says whether one arrived, in case a revision swallowed its KeyboardInterrupt
    (`interrupts.InterruptLatch`): the lanes stop after their running revision, and this
    raises KeyboardInterrupt."""
    stopping = threading.Event()
    for runner in runners:
        runner.stopping = threading.Event()
    progress = _Progress(steps, stopping, requested, [runner.stopping for runner in runners])
    if len(lanes) == 1:
        _run_lane(steps, runners[0], lanes[0], progress, into, 0,
                  lambda runner, revision: runner.apply(revision), retry=False)
        if requested():
            raise KeyboardInterrupt
        return
    calls: queue.SimpleQueue[_Call] = queue.SimpleQueue()

    def on_this_thread(runner: LaneRunner, revision: Revision) -> RevisionResult:
        if revision.kind != "python":
            return runner.apply(revision)
        call = _Call(runner, revision)
        calls.put(call)
        call.done.wait()
        if call.error is not None:
            raise call.error
        assert call.result is not None
        return call.result

    ended = [threading.Event() for _ in lanes]

    def lane(number: int) -> None:
        try:
            _run_lane(steps, runners[number], lanes[number], progress, into, number,
                      on_this_thread, retry=True)
        except MigrationFailed as err:
            progress.failed(into, err)
        except _Stopped:  # halted between its start and the calling thread's turn
            pass
        except BaseException as err:
            progress.stop(into, err)
        finally:
            ended[number].set()

    threads = [threading.Thread(target=lane, args=(number,), name=f"svcmig-lane-{number}")
               for number in range(len(lanes))]
    for thread in threads:
        thread.start()
    call: _Call | None = None
    while True:
        try:  # the whole loop: a signal may land on any of its lines
            if requested() and not stopping.is_set():  # a revision swallowed it
                raise KeyboardInterrupt
            if all(event.is_set() for event in ended):
                break
            try:
                call = calls.get(timeout=0.05)
            except queue.Empty:
                continue
            if progress.halted(call.revision):
                call.error = _Stopped()
            else:
                try:
                    call.result = call.runner.apply(call.revision)
                except KeyboardInterrupt as err:
                    call.error = err
                    raise
                except BaseException as err:  # the lane raises it
                    call.error = err
            call.done.set()
        except KeyboardInterrupt as err:  # Ctrl-C, SIGTERM: stop now, cancel what runs
            interrupted()
            progress.stop(into, err)
            if call is not None and not call.done.is_set():
                if call.result is None:  # a revision that committed is reported as applied
                    call.error = call.error or _Stopped()
                call.done.set()
            for runner in runners:
                runner.cancel()
    for thread in threads:
        thread.join()
    if into.failure is not None:
        raise into.failure


def _run_lane(steps: Sequence[Revision], runner: LaneRunner, indexes: Sequence[int],
              progress: _Progress, into: LaneRun, lane: int,
              apply: Callable[[LaneRunner, Revision], RevisionResult], retry: bool) -> None:
    """Lane `lane`'s steps in plan order. With `retry` (more than one lane), a transactional
    revision that fails while a revision before it in the plan had not committed yet runs once
    more after all of them have: one of those may have been about to give it what it needs (a
    grant from a function or a helper module, which no reading of the text finds), and a
    serial run would have run them first. So a failure is final only when a serial run would
    meet it too."""
    own = [steps[index] for index in indexes]
    runner.issue_tokens(own)
    last = {revision.service: position for position, revision in enumerate(own)}
    upcoming = next_services(own)
    python = {revision.service for revision in own if revision.kind == "python"}
    for position, (index, revision) in enumerate(zip(indexes, own, strict=True)):
        again = retry and revision.transactional
        while True:
            if not progress.begin(revision, runner.stopping):
                return
            committed = False
            runner.retry_on_failure = again = again and progress.earlier_pending(revision)
            try:
                following = upcoming[position]
                if following is not None:
                    runner.prefetch(following, following.name in python)
                into.running[lane] = revision
                into.results[index] = apply(runner, revision)
                del into.running[lane]
                committed = True
            except MigrationFailed as err:
                if not again or err.dirty:
                    raise
                del into.running[lane]
                failure = err
            finally:
                progress.ended(revision, committed)
                runner.retry_on_failure = False
            if committed:
                break
            again = progress.wait_for_earlier(revision)
            runner.log_held(again)
            if not again:
                raise failure
        if last[revision.service] == position:
            runner.release(revision.service)
