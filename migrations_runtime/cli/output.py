"""How `svcmig migrate` and `svcmig dev` report a run's events on stderr: JSON lines for machines
(CI, Lambda, a pipe, `--log-format json`), one compact line per event for a person at a terminal,
in colour unless `NO_COLOR` is set to anything non-empty (https://no-color.org) or `TERM=dumb`.

The events are the engine's log dicts (`engine.report.json_log` and the runner's `lock_wait`,
`migrator_lock_wait`, `warning`, `plan` lines); this module only renders them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, TextIO

import click

from ..engine.apply import json_log_to_stderr

LOG_FORMATS = ("auto", "json", "text")
LogLine = dict[str, object]

log_format_option = click.option(
    "--log-format", type=click.Choice(LOG_FORMATS), default="auto", show_default=True,
    help="How the run's events go to stderr: text (one line per revision, coloured unless "
    "NO_COLOR is set), json (one JSON object per line), auto (text on a terminal, else json).")


def use_colour(stream: TextIO) -> bool:
    return (stream.isatty() and os.environ.get("NO_COLOR", "") == ""
            and os.environ.get("TERM") != "dumb")


def event_log(log_format: str) -> Callable[[LogLine], None]:
    """The log function for a run: the engine's JSON lines, or `TerminalLog` for a person."""
    if log_format == "json" or (log_format == "auto" and not sys.stderr.isatty()):
        return json_log_to_stderr
    return TerminalLog(sys.stderr, use_colour(sys.stderr))


class TerminalLog:
    """`[3/14] applied  users_202611020900  services/users/…/x.sql  26 ms`, and short lines for
    lock waits and warnings. The lock summary is left out: the command prints it at the end."""

    def __init__(self, stream: TextIO, colour: bool) -> None:
        self.stream, self.colour = stream, colour
        self.steps, self.done = 0, 0

    def _paint(self, text: str, colour: str, bold: bool = False) -> str:
        return click.style(text, fg=colour, bold=bold) if self.colour else text

    def __call__(self, line: LogLine) -> None:
        text = self.render(line)
        if text is not None:
            print(text, file=self.stream, flush=True)

    def render(self, line: LogLine) -> str | None:
        event = line.get("event")
        if event == "plan":
            self.steps, self.done = int(str(line.get("steps", 0))), 0
            return None
        if event == "lock_summary":
            return None
        if event == "revision":
            return self._revision(line)
        if event == "lock_wait":
            blockers = line.get("blockers") or []
            who = "; ".join(_blocker(b) for b in blockers) if isinstance(blockers, list) else ""
            return self._paint(
                f"  waiting  {line.get('revision')}: a lock attempt gave up after "
                f"{line.get('waited_ms')} ms" + (f" behind {who}" if who else "")
                + (f"; retrying in {line.get('pause_ms')} ms" if line.get("pause_ms") else ""),
                "yellow")
        if event == "migrator_lock_wait":
            return self._paint(
                f"  waiting  for the migrator lock ({line.get('waited_s')} s of "
                f"{line.get('limit_s')} s), held by {line.get('holders')}", "yellow")
        if event == "warning":
            return self._paint(f"warning: {line.get('message')}", "yellow")
        rest = ", ".join(f"{k}={v}" for k, v in line.items() if k != "event")
        return f"  {event}  {rest}"

    def _revision(self, line: LogLine) -> str:
        self.done += 1
        count = f"[{self.done}/{self.steps}] " if self.steps else ""
        outcome = str(line.get("outcome"))
        direction = "" if line.get("direction", "up") == "up" else " (down)"
        mark = self._paint(f"{outcome:<8}", "red" if outcome == "failed" else "green",
                           bold=outcome == "failed")
        text = (f"{count}{mark} {line.get('revision')}{direction}  {line.get('file')}  "
                f"{line.get('duration_ms')} ms")
        if line.get("error"):
            text += "\n  " + self._paint(str(line["error"]), "red")
        return text


def _blocker(blocker: Any) -> str:
    if not isinstance(blocker, dict):
        return str(blocker)
    return f"pid {blocker.get('pid')} ({blocker.get('application_name') or 'no name'})"
