"""Stop requests that are never lost: SIGTERM, and the interrupt of a cancelled Ray task.

A signal handler raises its exception in the main thread at the next bytecode. When that bytecode
belongs to a finalizer (a `__del__`, a weakref callback: Keras and JAX objects have them, and
`gc.collect()` between trials runs them), Python prints "Exception ignored in ..." and drops the
exception: the run would train on, with SIGTERM ignored from then on. So the handlers here also
note the request, and the loops that train or wait call `check()`, which raises it again.

A noted SIGTERM holds for the rest of the process (the process is ending). Ctrl-C, and the interrupt
by which Ray cancels a task, are noted within `interrupt_on_sigint` (around a command, around a Ray
task) and forgotten when it ends (a Ray worker runs other tasks; a caller of `cli.main` goes on).
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C (the run is recorded as interrupted), exiting 128 + 15."""


_pending: type[KeyboardInterrupt] | None = None


def pending() -> type[KeyboardInterrupt] | None:
    """Terminated or KeyboardInterrupt when a stop was requested in this process, else None."""
    return _pending


def note(kind: type[KeyboardInterrupt] = KeyboardInterrupt) -> None:
    global _pending
    if _pending is not Terminated:  # SIGTERM's exit status wins over an interrupt's
        _pending = kind


def check() -> None:
    """Raise the requested stop, if any (again, if its first raise was dropped)."""
    if _pending is not None:
        raise _pending()


def on_sigterm(signum, frame):
    """The SIGTERM handler of expkit's processes: once only, so that a second SIGTERM cannot cut the
    interrupted record short."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    note(Terminated)
    raise Terminated


@contextmanager
def interrupt_on_sigint():
    """Within: SIGINT (Ctrl-C, and `_thread.interrupt_main`, by which Ray cancels a task) raises
    KeyboardInterrupt and notes it. Outside the main thread, nothing changes."""
    global _pending

    def on_sigint(signum, frame):
        note(KeyboardInterrupt)
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)
        if _pending is KeyboardInterrupt:
            _pending = None
