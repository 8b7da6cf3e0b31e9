"""Holding Ctrl-C and SIGTERM while a run cleans up after the first one.

A second signal used to cut a clean-up short: owners left LOGIN, lint workers left running
(the exit then waited for them), a traceback or exit -2 instead of the report and 130.
Python delivers signals on the main thread only, so holding is done there and is a no-op
elsewhere.
"""

from __future__ import annotations

import signal
import threading
from types import TracebackType
from typing import Any


class InterruptsHeld:
    """Ignore SIGINT and SIGTERM from `hold` until `release`, which puts the previous handlers
    back; also a context manager. A signal already on its way when `hold` begins (two Ctrl-C in
    quick succession) is swallowed rather than raised out of `hold`."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self._saved: dict[int, Any] = {}

    def hold(self) -> None:
        if self._saved or threading.current_thread() is not threading.main_thread():
            return
        saved: dict[int, Any] = {}
        while True:
            try:  # each step may be repeated: a pending handler can raise between any two
                for number in self.SIGNALS:
                    if number not in saved:
                        saved[number] = signal.getsignal(number)
                    signal.signal(number, signal.SIG_IGN)
                break
            except KeyboardInterrupt:
                continue
        self._saved = saved

    def release(self) -> None:
        for number, handler in self._saved.items():
            signal.signal(number, handler)
        self._saved = {}

    def __enter__(self) -> InterruptsHeld:
        self.hold()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.release()
