"""Child processes of a sweep, written once: how they are started (spawn, their environment in place
before they import anything), how they set themselves up (signals, dying with their parent, standard
output), how their log lines travel, and how they are stopped with a grace period.

Every process that trains for a sweep (a worker of the pool, a JAX process of a vectorised group, a
Ray task's worker) is stopped the same way: SIGTERM once, STOP_GRACE_SECONDS to record its trials as
interrupted, then SIGKILL. No Keras here: this module is imported by the sweep's own process.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time

STOP_GRACE_SECONDS = 60.0  # a stopped child's time to record its trials as interrupted before it is killed
CLOSE_SECONDS = 10.0       # an idle child's time to exit when the sweep is over


def available_cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


# The share of the memory available now that the vectorised programs of one machine may plan to use.
MEMORY_SHARE = 0.5


def available_bytes() -> float:
    """MemAvailable (Linux), else the physical memory."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def threads_per_worker(jobs: int, cores: int | None = None) -> int:
    """Each of `jobs` workers' share of the cores: at least one thread."""
    return max(1, (cores or available_cores()) // jobs)


@contextlib.contextmanager
def environ(env: dict[str, str]):
    """`env` in os.environ while a child is spawned (a spawned process copies it at exec time, so the
    variables are in place before the child imports anything), restored afterwards."""
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def spawn(ctx, target, args: tuple, *, name: str, env: dict[str, str]):
    """Start `target(*args)` in a new 'spawn' process with `env` added to its environment (a process
    with TensorFlow or JAX loaded is never forked)."""
    proc = ctx.Process(target=target, args=args, name=name, daemon=True)
    with environ(env):
        proc.start()
    return proc


def describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def die_with_parent(parent_pid: int) -> None:
    """SIGTERM this process when its parent dies (Linux), so it never trains on as an orphan."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:  # it died before the line above took effect
        os.kill(os.getpid(), signal.SIGTERM)


def child_setup(parent_pid: int, *, quiet_stdout: bool) -> None:
    """A child's first steps: Ctrl-C reaches it through its parent, once (the terminal's is ignored);
    SIGTERM records its trials as interrupted; it dies with its parent; and what Keras prints never
    reaches the parent's standard output (which ends with the sweep's path) nor, under a live progress
    line (`quiet_stdout`), the terminal."""
    from ..stopping import on_sigterm

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, on_sigterm)
    die_with_parent(parent_pid)
    target = os.open(os.devnull, os.O_WRONLY) if quiet_stdout else 2
    os.dup2(target, 1)


def stop(procs: list, drain=None, grace: float = STOP_GRACE_SECONDS) -> None:
    """SIGTERM to every live process in `procs`, once; `drain(timeout)` is called meanwhile (it reads
    their last messages) until all have exited or `grace` seconds have passed; the rest are killed."""
    for proc in procs:
        if proc.is_alive():
            try:
                os.kill(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + grace
    while any(p.is_alive() for p in procs) and time.monotonic() < deadline:
        if drain is not None:
            drain(0.2)
        else:
            time.sleep(0.05)
    for proc in procs:  # past the grace period: no child outlives the sweep
        if proc.is_alive():
            proc.kill()
        proc.join(5)


class PipeLog:
    """A child's log lines, sent to the sweep's process (which prints them above its progress line)."""

    def __init__(self, conn, prefix: str = ""):
        self._conn, self._prefix, self._partial = conn, prefix, ""

    def write(self, text: str) -> int:
        self._partial += text
        while "\n" in self._partial:
            line, self._partial = self._partial.split("\n", 1)
            if line.strip():
                self._conn.send(("log", self._prefix + line))
        return len(text)

    def flush(self) -> None:
        pass


class Prefixed:
    """A log stream that puts the trial's position before each line."""

    def __init__(self, stream, prefix: str):
        self._stream, self._prefix = stream, prefix

    def write(self, text: str) -> int:
        return self._stream.write(self._prefix + text if text.strip() else text)

    def flush(self) -> None:
        self._stream.flush()
