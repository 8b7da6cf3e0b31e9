"""A backfill under live traffic: what requests see while `svcmig backfill run` fills a new
column over 1,000,000 rows, against no backfill and against the same fill as one `UPDATE`.

The load is bench_traffic.py's (imported, not copied): the real users handlers through
`svcmig dev --concurrency 8`, open loop at 150 requests/s, 60 % GET /users/{id}, 20 % GET
/users?limit=20, 20 % POST /users; a request's latency counts from when it was due, so a stall
shows as the queue it builds. The project is a copy of the repository's services with one more
revision adding a nullable column per case (catalog-only) and a backfill file per runner case:

    UPDATE users SET <column> = length(email) WHERE id >= :start AND id < :end
      AND <column> IS NULL;

Cases, one after another under the same load:

- baseline: the load and nothing else, before each fill and after the last (other work on a
  shared machine moves the figures from minute to minute: each fill is compared with the
  baselines on either side of it, their requests pooled);
- runner: `svcmig backfill run` with its default pacing (batches adapt to 200 ms, 100 ms pause
  between them, back-off on lock waits and old transactions), as a subprocess as an operator
  would start it;
- one UPDATE: the same fill as a single statement (what docs/writing-migrations.md says not to
  do), outside any migration, so that no table lock is involved: only its length;
- runner, tight: the runner with `--target-ms 50` (smaller batches, same pause).

Before each case (outside its window) `users` is rewritten with `VACUUM FULL` and a checkpoint
is taken, so every fill starts on the same packed table (after a plain VACUUM the next fill
would find half of each page free and update in place: cheaper) and no WAL-triggered
checkpoint is already due. A case's window runs from 2 s before the fill to 2 s after it.

Usage:
    python bench/bench_backfill.py [--private-server | --database-url URL] [--rows 1000000]
                                   [--quick] [--cases baseline runner update tight]

`--private-server` (also the default without `--database-url`) runs on a private in-memory
cluster of this machine's PostgreSQL (`private_postgres.py`); `--database-url` creates and
drops a database `bench_backfill_<pid>` on the server given (svcmig's roles are cluster-wide:
not a server whose roles matter). `--quick`: 100,000 rows and short windows, a smoke run of
about 35 s. The full run takes about 4.5 minutes on 2 cores. `--write-rate` sets the row
writes beside the load (`RowWriter`, default 10/s; 0 for none). Nothing asserts on timings:
the table is for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_handlers import percentile, start_dev  # noqa: E402
from bench_traffic import (  # noqa: E402
    Load,
    Project,
    bench_server,
    environment_line,
    seed,
    settle,
)

FILL = "length(email)"


@dataclass
class RowWriter(Load):
    """Writes to existing users, open loop, straight in SQL (the users handlers never update a
    row): `UPDATE … SET display_name … WHERE id = <random seeded id>`, as a profile edit
    would. What a fill does to writers of the rows it has locked: a batch holds its rows until
    it commits, one UPDATE holds every row it passed until the end."""

    url: str = ""

    def _worker(self) -> None:
        conn = psycopg.connect(self.url, autocommit=True, application_name="row-writer")
        try:
            for i, due in self._turns():
                try:
                    conn.execute("UPDATE users.users SET display_name = %s WHERE id = %s",
                                 (f"writer {i}", random.randint(1, self.user_ids)))
                    status = 200
                except psycopg.Error:
                    status = 0
                    if conn.closed:
                        conn = psycopg.connect(self.url, autocommit=True,
                                               application_name="row-writer")
                self.results.append((due, (time.monotonic() - due) * 1000, status))
        finally:
            conn.close()


@dataclass(frozen=True)
class Case:
    key: str
    label: str
    kind: str  # "none", "runner", "update"
    flags: tuple[str, ...] = ()

    @property
    def column(self) -> str:
        return f"bf_{self.key}"

    @property
    def backfill(self) -> str:
        return f"users.bench_{self.key}"


BASELINE = Case("baseline", "baseline: no backfill", "none")
CASES = [
    Case("runner", "svcmig backfill run (default pacing: 200 ms target, 100 ms pause)", "runner"),
    Case("update", "one UPDATE of every row", "update"),
    Case("tight", "svcmig backfill run --target-ms 50", "runner", ("--target-ms", "50")),
]


@dataclass
class Fill:
    """What one fill did: its duration (the runner's own, from its JSON result), rows,
    batches, and for the runner what its log said."""

    seconds: float = 0.0
    wall_s: float = 0.0
    rows: int = 0
    batches: int = 0
    outcome: str = ""
    batch_ms: list[float] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)
    events: dict[str, int] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)

    @property
    def longest_ms(self) -> float:
        """The longest transaction that wrote users: a batch's statement, or the UPDATE."""
        return max(self.batch_ms) if self.batch_ms else self.seconds * 1000


@dataclass
class Result:
    case: Case
    fill: Fill | None
    latencies: list[float]
    errors: int
    window_s: float
    writes: list[float] = field(default_factory=list)

    def stats(self) -> tuple[float, float, float]:
        ms = sorted(self.latencies)
        return statistics.median(ms), percentile(ms, 99), ms[-1]


def write_project(folder: Path, cases: list[Case]) -> Project:
    """bench_traffic's copy of the services, with a revision adding every case's column and a
    backfill file for each runner case."""
    project = Project(folder)
    filled = [c for c in cases if c.kind != "none"]
    if filled:
        project.add("-- bench_backfill.py: a nullable column per case (catalog-only)\n"
                    "ALTER TABLE users " + ", ".join(f"ADD COLUMN {c.column} int"
                                                     for c in filled) + ";\n")
    backfills = project.root / "services" / "users" / "backfills"
    backfills.mkdir(exist_ok=True)
    for number, case in enumerate(c for c in cases if c.kind == "runner"):
        stamp = time.strftime("%Y-%m-%dT%H%M", time.gmtime(1_893_456_000 + 3600 + 60 * number))
        (backfills / f"{stamp}__users__bench_{case.key}.sql").write_text(
            f"-- bench_backfill.py: fill {case.column} over every user\n"
            f"UPDATE users SET {case.column} = {FILL}\n"
            f"WHERE id >= :start AND id < :end AND {case.column} IS NULL;\n")
    return project


def repack(url: str) -> float:
    """VACUUM FULL and a checkpoint, outside the window: each fill starts on a packed table.
    The load queues meanwhile (ACCESS EXCLUSIVE); `settle` waits its backlog out."""
    began = time.monotonic()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM (FULL, ANALYZE) users.users")
        conn.execute("CHECKPOINT")
    return time.monotonic() - began


def run_runner(case: Case, project: Project, url: str) -> Fill:
    env = {**os.environ, "SVCMIG_PROJECT_ROOT": str(project.root)}
    began = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "migrations_runtime.cli", "backfill", "run", case.backfill,
         "--database-url", url, "--json", "--log-format", "json", *case.flags],
        cwd=project.root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    fill = Fill()
    other: list[str] = []

    def read_log() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                other.append(line.rstrip())
                continue
            name = str(event.get("event"))
            fill.events[name] = fill.events.get(name, 0) + 1
            if name == "backfill_batch":
                fill.batch_ms.append(float(event["ms"]))
                fill.batch_sizes.append(int(event["end"]) - int(event["start"]))
            elif name in ("backfill_throttled", "backfill_retry"):
                fill.reasons.append(str(event.get("reason")))

    reader = threading.Thread(target=read_log, daemon=True)
    reader.start()
    assert process.stdout is not None
    out = process.stdout.read()  # not communicate(): it would read stderr too, beside `reader`
    process.wait()
    reader.join(10)
    fill.wall_s = time.monotonic() - began
    try:
        result = json.loads(out)["backfills"][0]
    except (json.JSONDecodeError, KeyError, IndexError):
        fill.outcome = f"exit {process.returncode}: " + " ".join(other[-2:])[:120]
        return fill
    fill.seconds, fill.rows, fill.batches = result["seconds"], result["rows"], result["batches"]
    fill.outcome = result["outcome"]
    return fill


def run_update(case: Case, url: str) -> Fill:
    with psycopg.connect(url, autocommit=True, application_name="one-update") as conn:
        began = time.monotonic()
        cur = conn.execute(f"UPDATE users.users SET {case.column} = {FILL} "
                           f"WHERE {case.column} IS NULL")
        seconds = time.monotonic() - began
    return Fill(seconds=seconds, wall_s=seconds, rows=max(cur.rowcount, 0), batches=1,
                outcome="finished")


def run_case(case: Case, project: Project, url: str, load: Load, writer: Load | None,
             baseline_s: float, lead: float) -> Result:
    packed = repack(url)
    settle(load)
    print(f"{case.key}: VACUUM FULL + CHECKPOINT {packed:.1f} s", file=sys.stderr, flush=True)
    start = time.monotonic()
    fill: Fill | None = None
    if case.kind == "none":
        time.sleep(baseline_s)
    else:
        time.sleep(lead)
        fill = run_runner(case, project, url) if case.kind == "runner" else run_update(case, url)
        time.sleep(lead)
    end = time.monotonic()
    window = load.since(start, end)
    writes = [ms for _, ms, _ in writer.since(start, end)] if writer else []
    return Result(case, fill, [ms for _, ms, _ in window],
                  sum(1 for *_, status in window if status == 0 or status >= 500), end - start,
                  writes)


def ratio(value: float, base: float) -> str:
    return f"{value / base:.1f}×" if base > 0 else "–"


def fill_notes(fill: Fill) -> str:
    if fill.batches <= 1 and not fill.batch_ms:
        return ""
    ms = sorted(fill.batch_ms)
    notes = [f"batch p50 {statistics.median(ms):.0f} ms, max {ms[-1]:.0f} ms",
             f"rows/batch up to {max(fill.batch_sizes):,}",
             f"process {fill.wall_s:.1f} s"]
    throttled = fill.events.get("backfill_throttled", 0)
    retries = fill.events.get("backfill_retry", 0)
    notes.append(f"{throttled} throttled, {retries} retries")
    if fill.reasons:
        notes.append("first: " + fill.reasons[0][:60])
    return "; ".join(notes)


def reference(results: list[Result], index: int) -> Result | None:
    """The baselines on either side of results[index], pooled (what there is of them)."""
    around = [r for r in (results[index - 1] if index else None,
                          results[index + 1] if index + 1 < len(results) else None)
              if r is not None and r.case.kind == "none"]
    if not around:
        return None
    return Result(BASELINE, None, [ms for r in around for ms in r.latencies], 0, 0.0)


def table(results: list[Result]) -> list[str]:
    lines = ["| case | fill (s) | rows | batches | longest write txn (ms) | requests | p50 ms | "
             "p99 ms | max ms | > 1 s | errors | p50 × | p99 × | max × | row writes: p99 / max "
             "ms, > 1 s | notes |",
             "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|"]
    for index, result in enumerate(results):
        p50, p99, top = result.stats()
        around = reference(results, index) if result.fill is not None else None
        base = around.stats() if around else None
        fill = result.fill
        over = sum(1 for v in result.latencies if v > 1000)
        ratios = [ratio(v, b) for v, b in zip((p50, p99, top), base, strict=True)] if base \
            else ["–"] * 3
        writes = sorted(result.writes)
        written = (f"{percentile(writes, 99):.0f} / {writes[-1]:.0f}, "
                   f"{sum(1 for v in writes if v > 1000)}") if writes else "–"
        notes = f"{result.window_s:.0f} s window"
        if fill is not None:
            extra = fill_notes(fill)
            notes = "; ".join(x for x in (notes, extra) if x)
            if fill.outcome != "finished":
                notes += f"; outcome {fill.outcome}"
        lines.append("| " + " | ".join([
            result.case.label,
            "–" if fill is None else f"{fill.seconds:.1f}",
            "–" if fill is None else f"{fill.rows:,}",
            "–" if fill is None else f"{fill.batches:,}",
            "–" if fill is None else f"{fill.longest_ms:,.0f}",
            f"{len(result.latencies):,}", f"{p50:.1f}", f"{p99:.1f}", f"{top:.0f}", str(over),
            str(result.errors), *ratios, written, notes]) + " |")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=None,
                        help="users to fill (default 1,000,000; 100,000 with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 100,000 rows, 5 s baselines, 1 s lead and tail")
    parser.add_argument("--rate", type=float, default=150.0, help="requests per second")
    parser.add_argument("--write-rate", type=float, default=10.0,
                        help="row writes per second to existing users, straight in SQL "
                        "(0: none)")
    parser.add_argument("--concurrency", type=int, default=8,
                        help="handler instances in svcmig dev")
    parser.add_argument("--cases", nargs="*", choices=[c.key for c in CASES], default=None,
                        help="fills to run (default all; baselines run around each)")
    server = parser.add_mutually_exclusive_group()
    server.add_argument("--private-server", action="store_true",
                        help="a private in-memory cluster of this machine's PostgreSQL "
                        "(the default)")
    server.add_argument("--database-url", help="a server to create a database on instead")
    args = parser.parse_args(argv)
    args.rows = args.rows or (100_000 if args.quick else 1_000_000)
    args.baseline_s = 5.0 if args.quick else 20.0
    args.lead = 1.0 if args.quick else 2.0
    cases = [c for c in CASES if not args.cases or c.key in args.cases]
    with bench_server(args.database_url, "bench_backfill") as (url, what):
        run_all(args, cases, url, what)


def run_all(args: argparse.Namespace, cases: list[Case], url: str, server: str) -> None:
    began = time.monotonic()
    load_before = os.getloadavg()[0]
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="svcmig-backfill-") as folder:
        project = write_project(Path(folder), cases)
        dev, port = start_dev(url, project.root, args.concurrency)  # migrates first
        try:
            seeded = time.monotonic()
            seed(url, args.rows)
            print(f"seeded {args.rows:,} users in {time.monotonic() - seeded:.1f} s",
                  file=sys.stderr, flush=True)
            load = Load(port, args.rate, args.rows)
            writer = RowWriter(0, args.write_rate, args.rows, workers=4, url=url) \
                if args.write_rate > 0 else None
            time.sleep(3.0)  # warm every handler instance and pool
            for case in [BASELINE, *[x for c in cases for x in (c, BASELINE)]]:
                results.append(run_case(case, project, url, load, writer, args.baseline_s,
                                        args.lead))
                print(table(results)[-1], file=sys.stderr, flush=True)
            load.stop()
            if writer is not None:
                writer.stop()
        finally:
            dev.terminate()
            dev.wait(20)
        machine = environment_line(url, server)
    print(f"{machine}; load average (1 min) {load_before:.1f} at the start, "
          f"{os.getloadavg()[0]:.1f} at the end")
    print(f"- {args.rate:g} req/s open loop (bench_traffic.py's mix), `svcmig dev --concurrency "
          f"{args.concurrency}`, {args.rows:,} users; {args.write_rate:g} row writes/s "
          f"to existing users beside it (straight in SQL, 4 connections); fill "
          f"`SET <column> = {FILL}`; whole run {time.monotonic() - began:.0f} s")
    print(f"- each fill's window runs {args.lead:g} s before it to {args.lead:g} s after it; "
          f"baselines {args.baseline_s:g} s; ratios against the baselines before and after "
          "the fill, their requests pooled\n")
    for line in table(results):
        print(line)


if __name__ == "__main__":
    main()
