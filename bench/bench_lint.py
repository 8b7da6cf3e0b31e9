"""Benchmark `svcmig lint --all` on a generated tree of 10,000 SQL revisions (50 services ×
200 files), and squawk on the same files when `squawk` is on PATH.

    .venv/bin/python bench/bench_lint.py [--services 50] [--revisions 200]

Prints a markdown table row: files, seconds and files/s for each tool, then the CPU time
(user + system) of each, which counts every process and thread of the tool (svcmig lints
services in one process per CPU: `--jobs`), and the load average when the run began. Both runs
include process start-up, as in CI. `--jobs N` is passed to `svcmig lint`.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Realistic revision bodies: {t} is a table of the service, {n} the revision number.
TEMPLATES = (
    "CREATE TABLE {t}_{n} (\n  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,\n"
    "  name text NOT NULL,\n  created_at timestamptz NOT NULL DEFAULT now()\n);\n"
    "CREATE INDEX {t}_{n}_name_idx ON {t}_{n} (name);\n"
    "-- migrate:down\nDROP TABLE {t}_{n};\n",
    "-- add a nullable column, then a constant default\n"
    "ALTER TABLE {t} ADD COLUMN c{n} text;\n"
    "ALTER TABLE {t} ADD COLUMN f{n} boolean NOT NULL DEFAULT false;\n"
    "-- migrate:down\nALTER TABLE {t} DROP COLUMN c{n}, DROP COLUMN f{n};\n",
    "-- migrate:no-transaction\n"
    "CREATE INDEX CONCURRENTLY IF NOT EXISTS {t}_c{n}_idx ON {t} (created_at);\n"
    "-- migrate:down\nDROP INDEX CONCURRENTLY IF EXISTS {t}_c{n}_idx;\n",
    "ALTER TABLE {t} ADD CONSTRAINT {t}_chk{n} CHECK (id > 0) NOT VALID;\n"
    "-- migrate:down\nALTER TABLE {t} DROP CONSTRAINT {t}_chk{n};\n",
    "ALTER TABLE {t} VALIDATE CONSTRAINT {t}_chk{n};\n-- migrate:down\n",
    "UPDATE {t} SET status = 'active' WHERE status IS NULL AND id < 100000;\n"
    "INSERT INTO {t}_audit (note) VALUES ('backfill {n}; DELETE FROM x');\n"
    "-- migrate:down\nSELECT 1;\n",
    "CREATE OR REPLACE FUNCTION {t}_touch_{n}() RETURNS trigger LANGUAGE plpgsql AS $$\n"
    "BEGIN\n  NEW.updated_at := now();\n  RETURN NEW;\nEND\n$$;\n"
    "-- migrate:down\nDROP FUNCTION {t}_touch_{n}();\n",
    "ALTER TABLE {t} ALTER COLUMN id TYPE bigint;\n"  # a finding, as real trees have some
    "-- migrate:down\nSELECT 1;\n",
)


def generate(root: Path, services: int, revisions: int) -> int:
    (root / "alembic.ini").write_text("[alembic]\n", encoding="utf-8")
    for s in range(services):
        name = f"svc{s:03d}"
        folder = root / "services" / name / "migrations"
        folder.mkdir(parents=True)
        for n in range(revisions):
            day, minute = divmod(n, 24 * 60)
            hhmm = f"{minute // 60:02d}{minute % 60:02d}"
            stamp = f"2026-{1 + day // 28:02d}-{1 + day % 28:02d}T{hhmm}"
            body = TEMPLATES[n % len(TEMPLATES)].format(t=name, n=n)
            (folder / f"{stamp}__{name}__step_{n}.sql").write_text(
                f"-- migrate:up\n{body}", encoding="utf-8")
    return services * revisions


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(command: list[str], cwd: Path) -> tuple[float, int, float]:
    """Wall seconds, exit code and CPU seconds of `command` (with the processes it waited for:
    svcmig's workers)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "SVCMIG_PROJECT_ROOT": str(cwd)}
    cpu = _children_cpu()
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                          check=False)
    return time.perf_counter() - start, done.returncode, _children_cpu() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=50)
    parser.add_argument("--revisions", type=int, default=200)
    parser.add_argument("--jobs", type=int, default=None,
                        help="passed to svcmig lint (default: its own, one process per CPU)")
    args = parser.parse_args()
    jobs = [] if args.jobs is None else ["--jobs", str(args.jobs)]
    with tempfile.TemporaryDirectory(prefix="svcmig-bench-") as tmp:
        root = Path(tmp)
        files = generate(root, args.services, args.revisions)
        load = os.getloadavg()[0]
        svcmig_s, svcmig_rc, svcmig_cpu = timed(
            [sys.executable, "-m", "migrations_runtime.cli", "lint", "--all", "--format", "json",
             *jobs], cwd=root)
        if svcmig_rc not in (0, 1):
            sys.exit(f"svcmig lint failed with exit code {svcmig_rc}")
        squawk = shutil.which("squawk")
        squawk_cell, squawk_cpu_cell = "n/a | n/a", "n/a"
        if squawk:
            squawk_s, _, squawk_cpu = timed([squawk, "services/*/migrations/*.sql"], cwd=root)
            squawk_cell = f"{squawk_s:.2f} | {files / squawk_s:,.0f}"
            squawk_cpu_cell = f"{squawk_cpu:.2f}"
    print("| files | svcmig lint s | svcmig files/s | squawk s | squawk files/s "
          "| svcmig CPU s | squawk CPU s | load avg (1 min) |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {files:,} | {svcmig_s:.2f} | {files / svcmig_s:,.0f} | {squawk_cell} "
          f"| {svcmig_cpu:.2f} | {squawk_cpu_cell} | {load:.2f} |")


if __name__ == "__main__":
    main()
