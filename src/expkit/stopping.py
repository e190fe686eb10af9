"""Stop requests that are never lost: SIGTERM, and the interrupt of a cancelled Ray task.

A signal handler raises its exception in the main thread at the next bytecode. When that bytecode
belongs to a finalizer (a `__del__`, a weakref callback: Keras and JAX objects have them, and
`gc.collect()` between trials runs them), Python prints "Exception ignored in ..." and drops the
exception: the run would train on, with SIGTERM ignored from then on. So the handlers here also
note the request, and the loops that train or wait call `check()`, which raises it again.

Python also reports the dropped raise on stderr ("Exception ignored in ... Terminated"); while the
request is noted that report would say the opposite of what happens, so it is left out. And within
`deferred()` (Keras writing a checkpoint through h5py, whose object registry an exception half-way
leaves broken) a request is only noted, and raised when the block ends.

A noted SIGTERM holds for the rest of the process (the process is ending). Ctrl-C, and the interrupt
by which Ray cancels a task, are noted within `interrupt_on_sigint` (around a command, around a Ray
task) and forgotten when it ends (a Ray worker runs other tasks; a caller of `cli.main` goes on).
"""

from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C (the run is recorded as interrupted), exiting 128 + 15."""


_pending: type[KeyboardInterrupt] | None = None
_deferring = 0  # the depth of `deferred()` blocks (the main thread's: handlers run there)


def pending() -> type[KeyboardInterrupt] | None:
    """Terminated or KeyboardInterrupt when a stop was requested in this process, else None."""
    return _pending


def note(kind: type[KeyboardInterrupt] = KeyboardInterrupt) -> None:
    global _pending
    if _pending is not Terminated:  # SIGTERM's exit status wins over an interrupt's
        _pending = kind
    if sys.unraisablehook is not _unraisable:
        _unraisable.previous = sys.unraisablehook
        sys.unraisablehook = _unraisable


def _unraisable(unraisable) -> None:
    """Report what a finalizer dropped, except a stop request that `check()` raises again."""
    if isinstance(unraisable.exc_value, KeyboardInterrupt) and _pending is not None:
        return
    _unraisable.previous(unraisable)


_unraisable.previous = sys.__unraisablehook__


def _raise(kind: type[KeyboardInterrupt]) -> None:
    note(kind)
    if not _deferring:
        raise kind


@contextmanager
def deferred():
    """Within: a stop request is noted, not raised; it is raised when the block ends (for writes that an
    exception half-way would leave inconsistent inside a library)."""
    global _deferring
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
    if not _deferring:
        check()


def check() -> None:
    """Raise the requested stop, if any (again, if its first raise was dropped)."""
    if _pending is not None:
        raise _pending()


def on_sigterm(signum, frame):
    """The SIGTERM handler of expkit's processes: once only, so that a second SIGTERM cannot cut the
    interrupted record short."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _raise(Terminated)


@contextmanager
def interrupt_on_sigint():
    """Within: SIGINT (Ctrl-C, and `_thread.interrupt_main`, by which Ray cancels a task) raises
    KeyboardInterrupt and notes it. Outside the main thread, nothing changes."""
    global _pending

    def on_sigint(signum, frame):
        _raise(KeyboardInterrupt)

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
