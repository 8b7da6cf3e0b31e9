"""Where a full apply spends the server's time: `svcmig migrate` of a generated project (the
same generator as bench_migrate.py) on a private in-memory cluster with pg_stat_statements,
then the statements that cost the most in all.

Usage: .venv/bin/python bench/server_time.py [--size 10x200] [--top 30]
Figures are for finding what to make cheaper; pg_stat_statements itself slows every statement.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import psycopg

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.bench_migrate import Bench, generate, parse_sizes  # noqa: E402
from bench.private_postgres import private_postgres  # noqa: E402
from migrations_runtime.engine.apply import migrate  # noqa: E402

TOP_SQL = """
    SELECT sum(calls)::bigint, round(sum(total_exec_time)::numeric, 1),
           round((sum(total_exec_time) / sum(calls) * 1000)::numeric, 1), text
    FROM (SELECT calls, total_exec_time,
                 left(regexp_replace(query, '\\s+', ' ', 'g'), 100) AS text
          FROM pg_stat_statements) s
    GROUP BY text ORDER BY 2 DESC LIMIT %s"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size", type=parse_sizes, default=parse_sizes("10x200"))
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
    [size] = args.size
    settings = {"shared_preload_libraries": "pg_stat_statements",
                "pg_stat_statements.track": "all"}
    with private_postgres(settings, durable=False) as admin, \
            tempfile.TemporaryDirectory(prefix="server_time_") as tmp:
        root = Path(tmp) / "svcmig"
        generate(size, root, Path(tmp) / "baseline")
        url = Bench(admin, Path(tmp)).fresh_database("server_time")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION pg_stat_statements")
            conn.execute("SELECT pg_stat_statements_reset()")
        started = time.perf_counter()
        migrate(url, root, log=lambda _line: None)
        wall = time.perf_counter() - started
        with psycopg.connect(url, autocommit=True) as conn:
            total = conn.execute("SELECT round(sum(total_exec_time)::numeric, 1), sum(calls) "
                                 "FROM pg_stat_statements").fetchone()
            rows = conn.execute(TOP_SQL, (args.top,)).fetchall()
    assert total is not None
    print(f"{size.label}: {size.total} revisions in {wall:.2f} s; the server executed "
          f"{total[1]} statements in {total[0]} ms")
    print("| calls | total ms | µs per call | statement |\n|--:|--:|--:|---|")
    for calls, total_ms, per_call, text in rows:
        print(f"| {calls} | {total_ms} | {per_call} | `{text}` |")


if __name__ == "__main__":
    main()
