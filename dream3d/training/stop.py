"""Stop a training loop at a step boundary on Ctrl-C or SIGTERM, so it can checkpoint first.

Background jobs started by a shell ignore SIGINT and batch schedulers stop workers with
SIGTERM, so both are caught; a second signal stops at once.
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopFlag:
    requested: bool = False
    signal_name: str | None = None

    def _on_signal(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = signal.Signals(signum).name


@contextmanager
def graceful_stop() -> Iterator[StopFlag]:
    """A flag set by the first SIGINT / SIGTERM while the block runs (main thread only;
    elsewhere the flag is never set and the signals keep their handlers)."""
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = {s: signal.signal(s, flag._on_signal) for s in SIGNALS}
    try:
        yield flag
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


class Interrupted(KeyboardInterrupt):
    """Raised at once by `interrupt_on_signal` on SIGINT or SIGTERM; `signal_name` says which."""

    def __init__(self, signal_name: str):
        super().__init__(signal_name)
        self.signal_name = signal_name


@contextmanager
def interrupt_on_signal() -> Iterator[None]:
    """Turn SIGINT and SIGTERM into `Interrupted` (a KeyboardInterrupt) raised wherever the
    block is, for work with no step boundary to wait for (an export): its `finally` clauses
    remove temporary files, and the caller can print a line instead of dying silently as
    SIGTERM's default action does. Main thread only, as `graceful_stop`."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Interrupted(signal.Signals(signum).name)

    previous = {s: signal.signal(s, handler) for s in SIGNALS}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
