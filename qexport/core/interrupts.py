"""Holding Ctrl-C back across a step that must not be cut in half.

Starting a child process is such a step: a Ctrl-C after the fork but before the parent has
recorded the child (or, for a fork-server child, before the parent has finished sending it its
job) leaves a child nobody can stop, or one that dies printing a traceback of half a pickle.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def ctrl_c_held_back() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) back for the block; one that came meanwhile is delivered when it ends,
    and a second one at once, so that a block that hangs never swallows Ctrl-C.

    Python runs signal handlers in the main thread only, so only there can one be held back; in
    another thread the block runs as it is, and the main thread's Ctrl-C reaches it by other means
    (a cancel flag)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []

    def hold(signum: int, frame) -> None:
        if pending:  # pressed again: the user means now, whatever is cut short
            pending.clear()
            raise KeyboardInterrupt
        pending.append(signum)

    previous = signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if pending:
            signal.raise_signal(signal.SIGINT)  # as the previous handler would have had it
