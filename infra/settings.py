"""Stage settings (dev, prod, preview-<n>) read from CDK context, so a stage differs from another
by `-c stage=...` and cdk.json, never by a code edit."""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import Any

STAGE_RE = re.compile(r"^(dev|prod|preview-[0-9]{1,6})$")
STAGES_KEY = "svcmig:stages"
MIN_RUN_MINUTES, MAX_RUN_MINUTES = 5, 50


@dataclass(frozen=True)
class StageSettings:
    """What a stage decides; defaults are the cheap, disposable dev shape."""

    name: str
    writer_instance: str = "serverless"  # "serverless" (Aurora Serverless v2) or a class: r7g.large
    readers: int = 0
    min_capacity_acu: float = 0.5
    max_capacity_acu: float = 2.0
    deletion_protection: bool = False
    retain_data: bool = False  # True: snapshot/retain the cluster, keep secrets and logs
    backup_retention_days: int = 1
    log_retention_days: int = 14
    reserve_concurrency: bool = True  # False where the account's concurrency quota is small
    provisioned_concurrency: int = 0  # per latency-critical function
    rotation_days: int = 30
    # Who the stage's alarms reach (email subscriptions to its alarm topic); none: the topic
    # only, for a subscription made outside the stack (chat, paging).
    alarm_emails: tuple[str, ...] = ()
    latency_p99_alarm_ms: int = 3000  # per route
    connections_alarm: int = 400  # database connections on the writer
    # A deploy's migration run (each phase), from its start to the point its worker is stopped.
    # CloudFormation waits at most an hour for a custom resource; start and answer margins
    # (6 min) come on top, hence the 50-minute cap.
    migration_timeout_minutes: int = 30

    @property
    def kind(self) -> str:
        """`preview-42` shares the `preview` settings."""
        return "preview" if self.name.startswith("preview-") else self.name

    @property
    def prefix(self) -> str:
        return f"svcmig-{self.name}"


def stage_settings(context: dict[str, Any] | Any, stage: str) -> StageSettings:
    """The settings of `stage` from the `svcmig:stages` context map (keyed dev/prod/preview)."""
    if not STAGE_RE.match(stage):
        raise ValueError(f"stage {stage!r}: use dev, prod or preview-<number> (-c stage=...)")
    kind = "preview" if stage.startswith("preview-") else stage
    table = context or {}
    if kind not in table:
        raise ValueError(f"cdk.json context {STAGES_KEY} has no entry for {kind!r}")
    known = {f.name for f in fields(StageSettings)} - {"name"}
    values = dict(table[kind])
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"{STAGES_KEY}.{kind}: unknown settings {sorted(unknown)}")
    emails = values.get("alarm_emails", [])
    if not isinstance(emails, list) or not all(isinstance(e, str) and "@" in e for e in emails):
        raise ValueError(f"{STAGES_KEY}.{kind}.alarm_emails: a list of email addresses")
    values["alarm_emails"] = tuple(emails)
    minutes = values.get("migration_timeout_minutes", 30)
    if not isinstance(minutes, int) or not MIN_RUN_MINUTES <= minutes <= MAX_RUN_MINUTES:
        raise ValueError(f"{STAGES_KEY}.{kind}.migration_timeout_minutes: whole minutes from "
                         f"{MIN_RUN_MINUTES} to {MAX_RUN_MINUTES} (CloudFormation waits at most "
                         "an hour for a custom resource)")
    return StageSettings(name=stage, **values)
