"""Progress of long runs on stderr: a bar with the revision name and elapsed time on a terminal,
one plain line per step elsewhere (CI logs keep every step, and no control characters).

stdout stays free for the command's result (`--json`), so progress never corrupts it.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

BAR_WIDTH = 24


class Progress:
    """Counts steps of one phase of work (`start`), one `step` call per revision."""

    def __init__(self, stream: TextIO | None = None, enabled: bool = True,
                 tty: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = self.stream.isatty() if tty is None else tty
        self.title = ""
        self.total = 0
        self.done = 0
        self.started = time.monotonic()
        self._open_line = False

    def start(self, title: str, total: int) -> None:
        self.finish()
        self.title, self.total, self.done = title, total, 0
        self.started = time.monotonic()

    def step(self, label: str) -> None:
        self.done += 1
        if not self.enabled:
            return
        elapsed = time.monotonic() - self.started
        count = f"{self.done}/{self.total}" if self.total else str(self.done)
        if self.tty:
            filled = BAR_WIDTH * self.done // self.total if self.total else BAR_WIDTH
            bar = "#" * filled + "." * (BAR_WIDTH - filled)
            self.stream.write(f"\r\x1b[2K{self.title} [{bar}] {count} {label} {elapsed:5.1f}s")
            self._open_line = True
        else:
            self.stream.write(f"{self.title} {count} {label} ({elapsed:.1f}s)\n")
        self.stream.flush()

    def note(self, message: str) -> None:
        """A line that stays, printed above the bar."""
        if not self.enabled:
            return
        self.finish()
        self.stream.write(message + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self._open_line:
            self.stream.write("\n")
            self.stream.flush()
            self._open_line = False
