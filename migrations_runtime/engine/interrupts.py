"""Ctrl-C and SIGTERM during a run: remembered while it runs, held while it cleans up.

A revision that swallowed the KeyboardInterrupt (a bare `except:`) made a run carry on to the
end with exit 0 (`InterruptLatch`). A second signal used to cut a clean-up short: owners left
LOGIN, lint workers left running (the exit then waited for them), a traceback or exit -2
instead of the report and 130 (`InterruptsHeld`). Python delivers signals on the main thread
only, so both act there and are no-ops elsewhere.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
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


class InterruptLatch:
    """While entered (on the main thread), Ctrl-C and SIGTERM are remembered as well as handled
    as before: code that swallows the KeyboardInterrupt (a bare `except:` in a revision's retry
    loop) cannot make a run carry on, since the run reads `requested` between revisions. Only
    signals with a Python handler are wrapped (SIGTERM too once the CLI made it raise
    KeyboardInterrupt); one left at its default kills the process as before."""

    def __init__(self) -> None:
        self.requested = False
        self._saved: dict[int, Any] = {}

    def _remember(self, previous: Any) -> Any:
        def handler(number: int, frame: Any) -> Any:
            self.requested = True
            return previous(number, frame)
        return handler

    def __enter__(self) -> InterruptLatch:
        if threading.current_thread() is threading.main_thread():
            for number in InterruptsHeld.SIGNALS:
                previous = signal.getsignal(number)
                if callable(previous):
                    self._saved[number] = previous
                    signal.signal(number, self._remember(previous))
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        for number, handler in self._saved.items():
            signal.signal(number, handler)
        self._saved = {}


@contextmanager
def not_swallowed() -> Iterator[None]:
    """Run code that may catch Ctrl-C or SIGTERM itself (a Python revision, run or rendered):
    the handlers it leaves behind (`SIG_IGN`, one of its own) are put back to what they were,
    so the rest of the run still stops on a signal; and a signal that arrived meanwhile is
    raised as KeyboardInterrupt when it returns or fails, whatever it did with the first one
    (a bare `except:`, a statement the interrupt cancelled and the revision caught)."""
    latch = InterruptLatch()
    saved = {number: signal.getsignal(number) for number in InterruptsHeld.SIGNALS}
    try:
        with latch:
            yield
    except BaseException as err:
        if latch.requested and not isinstance(err, KeyboardInterrupt):
            raise KeyboardInterrupt from err
        raise
    finally:
        if threading.current_thread() is threading.main_thread():
            for number, handler in saved.items():
                if handler is not None:
                    signal.signal(number, handler)
    if latch.requested:
        raise KeyboardInterrupt
