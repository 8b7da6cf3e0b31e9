"""The record of each deploy-time run (one per CloudFormation request), in the database the
run migrates: the worker task claims its run before it touches anything and writes the outcome
at the end; the `is_complete` poller reads it. A run is claimed once, so a duplicate worker
(a repeated start) does nothing, and a worker that was killed leaves `running` behind, which the
poller reports as a failure instead of starting the work again."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import psycopg

TABLE = "svcmig.deploy_runs"
STATEMENT_TIMEOUT = "-c statement_timeout=10000"  # a poll must answer within its Lambda
CREATE = (
    "CREATE SCHEMA IF NOT EXISTS svcmig; "
    f"CREATE TABLE IF NOT EXISTS {TABLE} ("
    "run_id text PRIMARY KEY, phase text NOT NULL, "
    "status text NOT NULL CHECK (status IN ('running', 'succeeded', 'failed')), "
    "result jsonb, reason text, started_at timestamptz NOT NULL DEFAULT now(), "
    "finished_at timestamptz)")


@dataclass(frozen=True)
class Run:
    """One run's record: `status` running, succeeded (with `result`, what the custom resource
    answers) or failed (with `reason`, what CloudFormation shows)."""

    run_id: str
    phase: str
    status: str
    result: dict[str, Any] | None
    reason: str | None


def claim(url: str, run_id: str, phase: str) -> bool:
    """Record the run as running; False when it was already claimed (by this worker or another),
    and then the caller must not run it."""
    with psycopg.connect(url, autocommit=True, connect_timeout=10,
                         options=STATEMENT_TIMEOUT) as conn:
        with conn.transaction():  # concurrent first claims: one creates, the others wait
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('svcmig.deploy_runs'))")
            conn.execute(CREATE)
        row = conn.execute(
            f"INSERT INTO {TABLE} (run_id, phase, status) VALUES (%s, %s, 'running') "
            "ON CONFLICT (run_id) DO NOTHING RETURNING run_id", (run_id, phase)).fetchone()
    return row is not None


def finish(url: str, run_id: str, *, result: dict[str, Any] | None = None,
           reason: str | None = None) -> None:
    """Record the outcome: `result` for a success, `reason` for a failure."""
    status = "failed" if reason is not None else "succeeded"
    with psycopg.connect(url, autocommit=True, connect_timeout=10,
                         options=STATEMENT_TIMEOUT) as conn:
        conn.execute(f"UPDATE {TABLE} SET status = %s, result = %s, reason = %s, "
                     "finished_at = now() WHERE run_id = %s AND status = 'running'",
                     (status, None if result is None else json.dumps(result), reason, run_id))


def read(url: str, run_id: str) -> Run | None:
    """The run's record, or None when no worker claimed it (yet)."""
    with psycopg.connect(url, autocommit=True, connect_timeout=10,
                         options=STATEMENT_TIMEOUT) as conn:
        exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (TABLE,)).fetchone()
        if not exists or not exists[0]:
            return None
        row = conn.execute(f"SELECT run_id, phase, status, result, reason FROM {TABLE} "
                           "WHERE run_id = %s", (run_id,)).fetchone()
    return None if row is None else Run(*row)
