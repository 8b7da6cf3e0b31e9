"""Trace mode's cost per revision (`svcmig lint --trace`): the realistic revision bodies of
bench_lint.py, on a project of SERVICES × REVISIONS after one base revision per service, traced
on a throwaway database of SERVER (default: the embedded Postgres).

    .venv/bin/python bench/bench_trace.py [--services 2] [--revisions 40] [--server URL]

Prints a markdown table row: revisions traced, statements, seconds, ms per revision, and the
static lint of the same files for comparison (in-process, no start-up).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.bench_lint import TEMPLATES  # noqa: E402
from migrations_runtime.engine.discover import discover_services  # noqa: E402
from migrations_runtime.guard.linter import Linter  # noqa: E402
from migrations_runtime.tools.trace import trace  # noqa: E402

BASE = ("CREATE TABLE {t} (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, status text,\n"
        "  created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz);\n"
        "CREATE TABLE {t}_audit (id bigserial PRIMARY KEY, note text);\n"
        "-- migrate:down\nDROP TABLE {t}_audit, {t};\n")


def generate(root: Path, services: int, revisions: int) -> list[Path]:
    locations = " ".join(f"%(here)s/services/svc{s:03d}/migrations" for s in range(services))
    (root / "alembic.ini").write_text(
        "[alembic]\nscript_location = migrations_runtime:alembic\n"
        f"version_locations = {locations}\npath_separator = space\n", encoding="utf-8")
    traced = []
    for s in range(services):
        name = f"svc{s:03d}"
        folder = root / "services" / name / "migrations"
        folder.mkdir(parents=True)
        (folder / f"2026-01-01T0000__{name}__base.sql").write_text(BASE.format(t=name))
        for n in range(revisions):
            template = TEMPLATES[n % len(TEMPLATES)]
            # the VALIDATE template validates the constraint the revision before it added
            body = template.format(t=name, n=n - 1 if "VALIDATE" in template else n)
            path = folder / f"2026-02-01T{n // 60:02d}{n % 60:02d}__{name}__step_{n}.sql"
            path.write_text(f"-- migrate:up\n{body}", encoding="utf-8")
            traced.append(path)
    return traced


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=2)
    parser.add_argument("--revisions", type=int, default=40)
    parser.add_argument("--server", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="svcmig-bench-trace-") as tmp:
        root = Path(tmp)
        paths = generate(root, args.services, args.revisions)
        started = time.perf_counter()
        Linter(discover_services(root), workers=1).lint_paths(paths)
        static_s = time.perf_counter() - started
        result = trace(root, paths, args.server)
    print("| revisions | statements | trace s | trace ms/revision | static lint ms/revision |")
    print("|--:|--:|--:|--:|--:|")
    print(f"| {result.revisions} | {result.statements} | {result.seconds:.2f} | "
          f"{result.ms_per_revision:.0f} | {1000 * static_s / len(paths):.1f} |")


if __name__ == "__main__":
    main()
