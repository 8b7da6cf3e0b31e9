"""The migrator's worker: `python -m infra.migrator.task` in an ECS Fargate task that the
migrator's `on_event` started (see `handler.start_worker`), with no 15-minute limit. It runs
one CloudFormation request's phase exactly as the migrator would, and writes the outcome to the
run's record (`runs`), which `handler.is_complete_handler` reads.

Environment (from the task's overrides): SVCMIG_RUN_ID (the request), SVCMIG_PHASE,
SVCMIG_PHYSICAL_ID, SVCMIG_DEADLINE (epoch seconds by which the run must be over),
SVCMIG_MIGRATIONS_HASH (the release's migration files: the image must hold the same). Exit code 0
when the run succeeded or was already claimed, 1 when it failed, 2 for a malformed start.
With SVCMIG_TASK=backfills the task runs the pending backfills instead (`backfills.main`).
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Mapping
from typing import cast

import psycopg

from migrations_runtime.engine.load import Phase

from . import runs
from .digest import migrations_digest
from .handler import (
    PHASES,
    SAFETY_MARGIN_SECONDS,
    MigrationError,
    database_error,
    log,
    master_url,
    project_root,
    run_phase,
    run_settings,
)

MIN_WORK_SECONDS = 10.0  # less than this left for work after the reporting margin: refused


def main(environ: Mapping[str, str] = os.environ) -> int:
    """Claim the run, run its phase within the deadline, record the outcome."""
    if environ.get("SVCMIG_TASK") == "backfills":  # the same task, started for the backfills
        from . import backfills

        return backfills.main(environ)
    run_id, phase = environ.get("SVCMIG_RUN_ID", ""), environ.get("SVCMIG_PHASE")
    physical_id = environ.get("SVCMIG_PHYSICAL_ID", "")
    try:
        deadline = float(environ.get("SVCMIG_DEADLINE", ""))
    except ValueError:
        deadline = float("nan")
    if not run_id or phase not in PHASES or not physical_id or not math.isfinite(deadline):
        log({"event": "worker_refused", "reason": "SVCMIG_RUN_ID, SVCMIG_PHASE (expand or "
             "contract), SVCMIG_PHYSICAL_ID and SVCMIG_DEADLINE (epoch seconds) are required"})
        return 2
    url = master_url()
    try:
        claimed = runs.claim(url, run_id, phase)
    except psycopg.Error as err:  # nothing claimed, nothing run: the poller says why
        log({"event": "failed", "phase": phase, "reason": database_error(err)})
        return 1
    if not claimed:
        log({"event": "worker_duplicate", "run": run_id, "phase": phase})
        return 0
    log({"event": "worker_claimed", "run": run_id, "phase": phase})
    if migrations_digest(project_root()) != environ.get("SVCMIG_MIGRATIONS_HASH"):
        reason = ("the worker's image holds other migration files than the release being "
                  "deployed (MigrationsHash differs): redeploy from one synth (cdk deploy --all)")
        log({"event": "failed", "phase": phase, "reason": reason})
        runs.finish(url, run_id, reason=reason)
        return 1
    left = deadline - time.time()
    if left < SAFETY_MARGIN_SECONDS + MIN_WORK_SECONDS:
        reason = (f"the {phase} run's deadline was {max(left, 0):.0f} s away when its worker "
                  "started (the task took most of the budget to start): nothing was run; "
                  "deploy again, or raise migration_timeout_minutes")
        log({"event": "failed", "phase": phase, "reason": reason})
        runs.finish(url, run_id, reason=reason)
        return 1
    try:
        answer = run_phase(cast(Phase, phase), physical_id, run_settings(left))
    except MigrationError as err:
        runs.finish(url, run_id, reason=str(err))
        return 1
    except Exception as err:  # recorded, so the poller reports it instead of "stopped"
        runs.finish(url, run_id, reason=f"the worker failed: {err!r}"[:1500])
        raise
    runs.finish(url, run_id, result=answer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
