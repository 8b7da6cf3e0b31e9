"""`svcmig backfill run|status|pause|resume|retry`: the backfill runner (`engine.backfill_runner`)
for a person or a job. Events go to stderr (a progress line on a terminal, JSON lines
elsewhere); `--json` puts the result on stdout. Exit 1 when a backfill failed (or is paused or
failed and was named), 2 for a usage error."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

import click

from ..dev.embedded import Database, resolve_database
from ..engine.backfill_runner import (
    BackfillResult,
    BackfillSettings,
    run_backfills,
    set_state,
    status_report,
    with_overrides,
)
from .common import (
    EXIT_INTERRUPTED,
    database_url_option,
    echo_json,
    fail,
    finite,
    json_option,
    project_root,
    run,
)
from .output import LOG_FORMATS, LogLine, json_log_to_stderr, use_colour

BAR_WIDTH = 24


@click.group("backfill")
def backfill() -> None:
    """Data changes too big for a deploy, run afterwards in resumable, throttled batches
    (files under services/<service>/backfills/; see docs/writing-migrations.md)."""


def _database(database_url: str | None) -> Database:
    root = project_root()
    return run(lambda: resolve_database(database_url, root))  # type: ignore[no-any-return]


class ProgressLine:
    """On a terminal: one line per backfill, redrawn after each batch
    (`users.fill_plan [######......] 41%  410,000 rows  batch 1,200 keys in 180 ms`);
    other events on lines of their own."""

    def __init__(self, stream: TextIO, colour: bool) -> None:
        self.stream, self.colour = stream, colour
        self.open = False
        self.rows = 0

    def __call__(self, line: LogLine) -> None:
        event, name = line.get("event"), line.get("backfill")
        if event == "backfill_batch":
            done = float(str(line.get("done", 0)))
            filled = int(done * BAR_WIDTH)
            self.rows += int(str(line.get("rows", 0)))
            width = int(str(line.get("end", 0))) - int(str(line.get("start", 0)))
            text = (f"\r{name} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {done:4.0%}  "
                    f"{self.rows:,} rows  batch {width:,} keys in {line.get('ms')} ms\x1b[K")
            self.stream.write(text)
            self.stream.flush()
            self.open = True
            return
        if self.open:
            self.stream.write("\n")
            self.open = False
        facts = ", ".join(f"{k}={v}" for k, v in line.items() if k not in ("event", "backfill",
                                                                            "message"))
        text = f"{event}  {name}" + (f"  {facts}" if facts else "")
        if line.get("message"):
            text += f"\n  {line['message']}"
        colour = "red" if event == "backfill_failed" else (
            "yellow" if event in ("backfill_throttled", "backfill_retry") else None)
        self.stream.write((click.style(text, fg=colour) if colour and self.colour else text)
                          + "\n")
        self.stream.flush()


def _log(log_format: str) -> Any:
    if log_format == "json" or (log_format == "auto" and not sys.stderr.isatty()):
        return json_log_to_stderr
    return ProgressLine(sys.stderr, use_colour(sys.stderr))


def _run_options(command: Any) -> Any:
    options = [
        click.option("--target-ms", type=click.IntRange(10, 60_000), default=None,
                     help="Batch sizes adapt towards this duration [default: 200]."),
        click.option("--sleep-ms", type=click.IntRange(0, 600_000), default=None,
                     help="Pause after each batch [default: 100]."),
        click.option("--max-batch-size", type=click.IntRange(1), default=None,
                     help="Widest key range of one batch [default: 1000000]."),
        click.option("--statement-timeout-ms", type=click.IntRange(100), default=None,
                     help="A batch running longer is halved and retried; one key longer fails "
                     "the backfill [default: 30000]."),
        click.option("--max-seconds", type=click.FloatRange(0, min_open=True), default=None,
                     callback=lambda ctx, param, value: None if value is None else
                     finite(ctx, param, value),
                     help="Stop after this long (resumable); default: run to the end."),
        click.option("--parallel", type=click.IntRange(1, 16), default=1, show_default=True,
                     help="Run this many backfills at once (one at a time unless asked)."),
        click.option("--log-format", type=click.Choice(LOG_FORMATS), default="auto",
                     show_default=True, help="Events on stderr: text (a progress line), json, "
                     "auto (text on a terminal)."),
        database_url_option, json_option,
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _run(names: tuple[str, ...] | None, database_url: str | None, as_json: bool,
         log_format: str, parallel: int, **pacing: Any) -> None:
    database = _database(database_url)
    settings = with_overrides(BackfillSettings(), target_batch_ms=pacing["target_ms"],
                              sleep_ms=pacing["sleep_ms"],
                              max_batch_size=pacing["max_batch_size"],
                              max_seconds=pacing["max_seconds"],
                              statement_timeout_ms=pacing["statement_timeout_ms"])
    started = time.monotonic()
    def action() -> list[BackfillResult]:
        try:
            return run_backfills(database.url, project_root(), names, settings,
                                 _log(log_format), parallel)
        except KeyboardInterrupt:
            fail("interrupted: the batch running then is rolled back with its session and "
                 "earlier batches stay done; `svcmig backfill run` continues from the last "
                 "committed batch", EXIT_INTERRUPTED)

    results: list[BackfillResult] = run(action)
    if as_json:
        echo_json({"backfills": [r.as_dict() for r in results],
                   "seconds": round(time.monotonic() - started, 3)})
    else:
        if not results:
            click.echo("no backfills in this project")
        for result in results:
            click.echo(f"{result.outcome:<9} {result.name}  {result.rows:,} rows, "
                       f"{result.batches:,} batches, {result.seconds:.1f} s"
                       + (f"\n  {result.message}" if result.outcome not in ("finished",)
                          and result.message else ""))
    if any(r.outcome == "failed" or (names and r.outcome == "waiting") for r in results):
        sys.exit(1)


@backfill.command("run")
@click.argument("names", nargs=-1)
@_run_options
def run_command(names: tuple[str, ...], **options: Any) -> None:
    """Run NAMES (default: every backfill not finished, paused or failed) to the end, in
    batches; resumes where an earlier run stopped. Exit 1 if one failed."""
    _run(names or None, **options)


@backfill.command("status")
@database_url_option
@json_option
def status_command(database_url: str | None, as_json: bool) -> None:
    """Every backfill and how far it is on the database. Exit 1 if one failed."""
    database = _database(database_url)
    report = run(lambda: status_report(database.url, project_root()))
    if as_json:
        echo_json(report)
    else:
        click.echo(status_text(report))
    if not status_ok(report):
        sys.exit(1)


def status_text(report: dict[str, list[dict[str, Any]]]) -> str:
    """`status_report` (local, or a stage's through `svcmig remote`) as lines for a person."""
    lines = []
    for row in report["backfills"]:
        done = "   -" if row["state"] == "pending" else (
            f"{float(row['done']):4.0%}  {int(row['rows']):,} rows")
        lines.append(f"{row['name']:<32} {row['state']:<11} {done}"
                     + (f"\n  {row['error']}" if row.get("error") else "")
                     + (f"\n  {row['note']}" if row.get("note") else ""))
    lines.extend(f"{row['name']:<32} {'invalid':<11}\n  {row['error']}"
                 for row in report.get("invalid", []))
    return "\n".join(lines) or "no backfills in this project"


def status_ok(report: dict[str, list[dict[str, Any]]]) -> bool:
    """No backfill failed and every file loads (else `status` exits 1)."""
    return not report.get("invalid") and all(row["state"] != "failed"
                                             for row in report["backfills"])


@backfill.command("pause")
@click.argument("name")
@database_url_option
def pause_command(name: str, database_url: str | None) -> None:
    """Stop NAME before its next batch (a running runner exits); `resume` continues it."""
    database = _database(database_url)
    click.echo(run(lambda: set_state(database.url, name, "pause", project_root())))


@backfill.command("resume")
@click.argument("name")
@_run_options
def resume_command(name: str, **options: Any) -> None:
    """Continue a paused backfill from its last batch, now."""
    _again(name, "resume", options)


@backfill.command("retry")
@click.argument("name")
@_run_options
def retry_command(name: str, **options: Any) -> None:
    """Run a failed backfill again from the batch that failed (after fixing its cause)."""
    _again(name, "retry", options)


def _again(name: str, action: str, options: dict[str, Any]) -> None:
    """`resume` or `retry`: let NAME run again, then run it with the run options."""
    database = _database(options["database_url"])
    run(lambda: set_state(database.url, name, action, project_root()))
    _run((name,), **options)
