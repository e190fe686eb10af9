"""Trials side by side on this machine: `expkit run SWEEP --jobs N`.

Each trial runs in a worker process started with 'spawn' (a process with TensorFlow or JAX loaded
is never forked), and each worker gets its share of the cores through `backend.share_env`, set in
its environment before its backend initialises. A worker keeps its backend, its thread pools and
its last dataset for the trials it runs; in a sweep whose trials name different Keras backends a
worker runs the trials of one backend (KERAS_BACKEND), so one table compares backends. Workers train
through `execute.run_trial`, whose claims keep them, and any other process on the same sweep, from
training a trial twice. The driver (this module's WorkerPool) imports no Keras backend.

Stopping: workers ignore the terminal's Ctrl-C; the driver sends each one SIGTERM once, and a
worker records its trial as `interrupted` and exits. A worker whose driver dies gets SIGTERM from
the kernel (Linux: PR_SET_PDEATHSIG), so no worker outlives its driver.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import time
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path

from .errors import ConfigError, RunWriteError
from .execute import DatasetCache, TrialOutcome, preflight, run_trial, trial_backend
from .runfolder import FAILED, read_status
from .stopping import on_sigterm
from .trials import Trial

STOP_GRACE_SECONDS = 60.0  # a stopped worker's time to record its trial before it is killed
CLOSE_SECONDS = 10.0       # an idle worker's time to exit when the sweep is over


def available_cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def threads_per_worker(jobs: int, cores: int | None = None) -> int:
    """Each of `jobs` workers' share of the cores: at least one thread."""
    return max(1, (cores or available_cores()) // jobs)


@contextlib.contextmanager
def _environ(env: dict[str, str]):
    """`env` in os.environ while a worker is spawned (a spawned process copies it at exec time, so
    the variables are in place before the worker imports anything), restored afterwards."""
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


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


@dataclass
class _Worker:
    number: int
    proc: multiprocessing.Process
    conn: object          # the driver's end of the worker's pipe
    backend: str
    busy: tuple[int, Trial] | None = None
    retiring: bool = False


class WorkerPool:
    """`jobs` trials at once, each in a worker process of this machine."""

    in_process = False

    def __init__(self, jobs: int, sweep_dir: Path, *, device: str, stale_after: float, log, quiet_stdout: bool = False,
                 cores: int | None = None):
        self.jobs = jobs
        self.sweep_dir = Path(sweep_dir)
        self.device, self.stale_after, self.log = device, stale_after, log
        self.quiet_stdout = quiet_stdout
        self.threads = threads_per_worker(jobs, cores)
        self._ctx = multiprocessing.get_context("spawn")
        self._workers: list[_Worker] = []
        self._started = 0
        self.in_flight: dict[str, tuple[int, Trial]] = {}

    # --- workers ----------------------------------------------------------------------------------

    def _start(self, backend: str, deterministic: bool = False) -> _Worker:
        from .backend import share_env

        env = {**share_env(self.threads), "KERAS_BACKEND": backend}
        parent, child = self._ctx.Pipe()
        self._started += 1
        proc = self._ctx.Process(target=worker_main, args=(child, os.getpid(), backend, self.device, deterministic,
                                                           self.quiet_stdout),
                                 name=f"expkit-worker-{self._started}", daemon=True)
        with _environ(env):
            proc.start()
        child.close()
        worker = _Worker(self._started, proc, parent, backend)
        self._workers.append(worker)
        return worker

    def _retire(self, worker: _Worker) -> None:
        worker.retiring = True
        try:
            worker.conn.send(None)
        except OSError:
            pass

    def _live(self) -> list[_Worker]:
        return [w for w in self._workers if not w.retiring]

    # --- the executor interface (execute._drive) ----------------------------------------------------

    def preflight(self, trials: list[Trial]) -> None:
        """Every trial's checks, in one worker per backend; the workers the first trials need start
        now too, so their backends load while the checks run."""
        groups: dict[str, list[Trial]] = {}
        for trial in trials:
            groups.setdefault(trial_backend(trial), []).append(trial)
        asked = []
        for backend, group in groups.items():
            worker = self._start(backend, any(t.config.train.deterministic for t in group))
            worker.conn.send(("preflight", group))
            asked.append(worker)
        for trial in trials[:self.jobs][len(self._workers):]:
            self._start(trial_backend(trial), trial.config.train.deterministic)
        for worker in asked:
            reply = self._reply(worker)
            if reply is None:
                self._workers.remove(worker)
                raise ConfigError(f"a worker process ({worker.backend} backend) stopped while checking the "
                                  f"trials ({_describe_exit(worker.proc.exitcode)})")
            kind, error = reply
            if kind == "fatal":
                raise ConfigError(error)
            if error is not None:
                message, file, path = error
                raise ConfigError(message, file=file, path=path)

    def _reply(self, worker: _Worker):
        """The worker's next message other than log lines; None when it exits first."""
        while True:
            wait([worker.conn, worker.proc.sentinel])
            try:
                msg = worker.conn.recv()
            except (EOFError, OSError):
                worker.proc.join(5)
                return None
            if msg[0] == "log":
                self.log.write(msg[1] + "\n")
                continue
            return msg

    def room(self, trial: Trial) -> bool:
        return len(self.in_flight) < self.jobs

    def submit(self, index: int, trial: Trial, total: int) -> None:
        backend = trial_backend(trial)
        idle = [w for w in self._live() if w.busy is None]
        worker = next((w for w in idle if w.backend == backend), None)
        if worker is None:
            others = [w for w in idle if w.backend != backend]
            if others and len(self._live()) >= self.jobs:
                self._retire(others[0])  # a worker runs one backend: make room for this one's
            worker = self._start(backend, trial.config.train.deterministic)
        worker.busy = (index, trial)
        self.in_flight[trial.id] = (index, trial)
        worker.conn.send(("trial", trial, str(self.sweep_dir), index, total, self.device, self.stale_after))

    def started(self) -> set[str]:
        return set(self.in_flight)

    def collect(self, timeout: float) -> list[tuple[Trial, TrialOutcome]]:
        """Outcomes of the trials that ended within `timeout` seconds; worker log lines are passed on."""
        out: list[tuple[Trial, TrialOutcome]] = []
        watched = {}
        for w in self._workers:
            watched[w.conn] = w
            watched[w.proc.sentinel] = w
        for ready in wait(list(watched), timeout):
            worker = watched[ready]
            if worker not in self._workers:
                continue
            self._drain(worker, out)
        return out

    def _drain(self, worker: _Worker, out: list) -> None:
        """Every message the worker has sent; if it has exited, its busy trial's outcome too."""
        gone = False
        while True:
            try:
                if not worker.conn.poll():
                    break
                msg = worker.conn.recv()
            except (EOFError, OSError):
                gone = True
                break
            self._handle(worker, msg, out)
        if gone or not worker.proc.is_alive():
            worker.proc.join(5)  # reap it now: a zombie's pid would still look alive to the claims
            self._workers.remove(worker)
            try:
                worker.conn.close()
            except OSError:
                pass
            if worker.busy is not None:
                index, trial = worker.busy
                worker.busy = None
                self.in_flight.pop(trial.id, None)
                status = read_status(self.sweep_dir / trial.id, self.stale_after)
                out.append((trial, TrialOutcome(status, True, f"{status}: the worker process died "
                                                f"({_describe_exit(worker.proc.exitcode)}); the next run retries it")))

    def _handle(self, worker: _Worker, msg, out: list) -> None:
        kind = msg[0]
        if kind == "log":
            self.log.write(msg[1] + "\n")
        elif kind == "outcome":
            _, trial_id, status, trained, message = msg
            index, trial = worker.busy
            worker.busy = None
            self.in_flight.pop(trial_id, None)
            out.append((trial, TrialOutcome(status, trained, message)))
        elif kind == "config_error":
            _, trial_id, message, file, path = msg
            worker.busy = None
            self.in_flight.pop(trial_id, None)
            raise ConfigError(message, file=file, path=path)
        elif kind == "write_error":
            _, trial_id, message = msg
            worker.busy = None
            self.in_flight.pop(trial_id, None)
            raise RunWriteError(message)
        elif kind == "fatal":
            self.log.write(f"expkit: worker {worker.number}: {msg[1]}\n")

    def stop(self) -> list[tuple[Trial, TrialOutcome]]:
        """SIGTERM to every worker, once; their trials record themselves as interrupted."""
        out: list[tuple[Trial, TrialOutcome]] = []
        for w in self._workers:
            if w.proc.is_alive():
                try:
                    os.kill(w.proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        while self._workers and time.monotonic() < deadline:
            try:
                out += self.collect(0.2)
            except (ConfigError, RunWriteError):
                continue
        for w in list(self._workers):  # past the grace period: no worker outlives the driver
            w.proc.kill()
            self._drain(w, out)
        return out

    def close(self) -> None:
        """Let idle workers exit; kill any that do not within CLOSE_SECONDS."""
        for w in self._workers:
            self._retire(w)
        deadline = time.monotonic() + CLOSE_SECONDS
        for w in self._workers:
            w.proc.join(max(0.0, deadline - time.monotonic()))
            if w.proc.is_alive():
                w.proc.kill()
                w.proc.join(5)
            try:
                w.conn.close()
            except OSError:
                pass
        self._workers.clear()


# --- the worker process -------------------------------------------------------------------------------


def _die_with_parent(parent_pid: int) -> None:
    """SIGTERM this worker when its driver dies (Linux), so it never trains on as an orphan."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:  # it died before the line above took effect
        os.kill(os.getpid(), signal.SIGTERM)


class _PipeLog:
    """run_trial's log lines, sent to the driver (which prints them above its progress line)."""

    def __init__(self, conn, prefix: str):
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


def worker_main(conn, parent_pid: int, backend: str, device: str, deterministic: bool, quiet_stdout: bool) -> None:
    """A worker: import the backend, then run what the driver sends until it sends None."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches workers through the driver, once
    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        _die_with_parent(parent_pid)
        # Keras' per-epoch lines must not reach the driver's standard output (it ends with the sweep's
        # path) nor, under a live progress line, the terminal.
        target = os.open(os.devnull, os.O_WRONLY) if quiet_stdout else 2
        os.dup2(target, 1)
        from .backend import activate, cap_gpu_memory

        try:
            activate(backend, device=device, deterministic=deterministic)
            cap_gpu_memory(backend)
        except (ImportError, ConfigError) as exc:
            conn.send(("fatal", f"the Keras backend '{backend}' cannot start in a worker process: {exc}"))
            return
        _serve(conn)
    except KeyboardInterrupt:  # stopped while idle or while starting
        return
    finally:
        try:
            conn.close()
        except OSError:
            pass


def _serve(conn) -> None:
    datasets = DatasetCache()
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        if msg[0] == "preflight":
            try:
                preflight(msg[1])
                conn.send(("preflight", None))
            except ConfigError as exc:
                conn.send(("preflight", (exc.message, exc.file, exc.path)))
            continue
        _, trial, sweep_dir, index, total, device, stale_after = msg
        path = Path(sweep_dir)
        log = _PipeLog(conn, f"[{index}/{total}] ")
        try:
            outcome = run_trial(trial, path, device=device, datasets=datasets, stale_after=stale_after, log=log)
        except KeyboardInterrupt:
            status = read_status(path / trial.id, stale_after)
            try:
                conn.send(("outcome", trial.id, status, True, status))
                conn.close()
            except OSError:
                pass  # the driver is gone (killed): the trial's folder says it all
            os._exit(0)  # everything is recorded: skip the backend's slow teardown, the driver is waiting
        except ConfigError as exc:  # found with the data: recorded in the trial's folder, stops the sweep
            conn.send(("config_error", trial.id, exc.message, exc.file, exc.path))
            continue
        except RunWriteError as exc:  # the sweep folder cannot be written: every later trial would fail too
            conn.send(("write_error", trial.id, str(exc)))
            continue
        except Exception as exc:  # a run folder that cannot be written, a bug: this trial fails, others go on
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            conn.send(("outcome", trial.id, FAILED, True, f"failed: {first}"))
            continue
        conn.send(("outcome", trial.id, outcome.status, outcome.trained, outcome.message))
