"""Units of work side by side on this machine: `expkit run SWEEP --jobs N`, and the JAX processes that
train vectorised groups.

Each unit runs in a worker process started with 'spawn' (procs.spawn), and each worker gets its share
of the cores through `backend.share_env`, set in its environment before its backend initialises. A
worker runs one Keras backend for life (KERAS_BACKEND; JAX for a vectorised group) and keeps its thread
pools and its datasets for the units it runs. Workers train through units.run_unit, whose claims keep
them, and any other process on the same sweep, from training a trial twice. The sweep's process imports
no Keras backend for them: the workers also run the trials' checks (`preflight`, `check`).

Stopping: procs.child_setup (the terminal's Ctrl-C ignored, SIGTERM recorded as interrupted, death with
the parent) and procs.stop (SIGTERM once, a grace period, then SIGKILL).
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from dataclasses import dataclass, replace
from multiprocessing.connection import wait
from pathlib import Path

from ...errors import ConfigError, RunWriteError, first_line, from_wire, to_wire
from ...runfolder import FAILED, read_status
from .. import procs
from ..shared import SharedDatasets, open_handed_over
from ..trials import GroupUnit, unit_backend, unit_trials
from ..units import run_unit
from ..vectorize.plan import check_candidates
from ..work import DatasetCache, TrialOutcome, preflight


@dataclass
class _Worker:
    number: int
    proc: multiprocessing.Process
    conn: object          # the sweep's end of the worker's pipe
    backend: str
    busy: tuple | None = None   # (index, unit) while it trains one
    retiring: bool = False


class WorkerPool:
    """`jobs` units at once, each in a worker process of this machine."""

    in_process = False

    def __init__(self, jobs: int, sweep_dir: Path, *, device: str, stale_after: float, log, quiet_stdout: bool = False,
                 cores: int | None = None):
        self.jobs = jobs
        self.sweep_dir = Path(sweep_dir)
        self.device, self.stale_after, self.log = device, stale_after, log
        self.quiet_stdout = quiet_stdout
        self.threads = procs.threads_per_worker(jobs, cores)
        self._ctx = multiprocessing.get_context("spawn")
        self._workers: list[_Worker] = []
        self._started = 0
        self.in_flight: dict[str, tuple[int, object]] = {}
        self.gpus: bool | None = None  # whether the JAX workers see a GPU, once they have checked trials
        self._shared = SharedDatasets()  # the datasets handed to the workers, in shared memory

    # --- workers ----------------------------------------------------------------------------------

    def start(self, backend: str, count: int = 1, deterministic: bool = False) -> None:
        """Start `count` workers on `backend` now (so that they import it while the sweep plans)."""
        for _ in range(count):
            self._start(backend, deterministic)

    def _start(self, backend: str, deterministic: bool = False) -> _Worker:
        from ...backend import share_env

        parent, child = self._ctx.Pipe()
        self._started += 1
        proc = procs.spawn(self._ctx, worker_main, (child, os.getpid(), backend, self.device, deterministic,
                                                    self.quiet_stdout),
                           name=f"expkit-worker-{self._started}",
                           env={**share_env(self.threads), "KERAS_BACKEND": backend})
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

    def _lost(self, worker: _Worker, doing: str) -> ConfigError:
        self._workers.remove(worker)
        return ConfigError(f"a worker process ({worker.backend} backend) stopped while {doing} "
                           f"({procs.describe_exit(worker.proc.exitcode)})")

    # --- the executor interface (executors/__init__.py) -------------------------------------------

    def preflight(self, trials: list) -> None:
        """Every trial's checks, in one worker per backend; the workers the first trials need start now
        too, so their backends load while the checks run."""
        groups: dict[str, list] = {}
        for trial in trials:
            groups.setdefault(unit_backend(trial), []).append(trial)
        asked = []
        for backend, group in groups.items():
            worker = next((w for w in self._live() if w.backend == backend and w.busy is None), None)
            worker = worker or self._start(backend, any(t.config.train.deterministic for t in group))
            worker.conn.send(("preflight", group))
            asked.append(worker)
        for trial in trials[:self.jobs][len(self._workers):]:
            self._start(unit_backend(trial), trial.config.train.deterministic)
        for worker in asked:
            reply = self._reply(worker)
            if reply is None:
                raise self._lost(worker, "checking the trials")
            if reply[1] is not None:
                raise from_wire(reply[1])

    def check(self, trials: list, numbers: list[int], say, meanwhile=None) -> dict | None:
        """The trials' checks and ModelShapes on the JAX workers (started by `start`), the trials split
        between them: trial id -> ModelShape. Raises the ConfigError of the first failing trial (by
        `numbers`); None when there is no JAX worker, or one ended without answering. `meanwhile()`
        runs here while they check."""
        workers = [w for w in self._live() if w.backend == "jax" and w.busy is None]
        if not workers:
            return None
        n = len(workers)
        asked = []
        for k, worker in enumerate(workers):
            if trials[k::n]:
                worker.conn.send(("check", trials[k::n], numbers[k::n]))
                asked.append(worker)
        if meanwhile is not None:
            meanwhile()
        shapes, errors = {}, []
        for worker in asked:
            reply = self._reply(worker)
            if reply is None:
                self._workers.remove(worker)
                return None
            _, measured, error, self.gpus = reply
            shapes.update(measured or {})
            if error is not None:
                errors.append(error)
        if errors:
            raise from_wire(min(errors, key=lambda e: e[4] or 0))
        return shapes

    def room(self, unit) -> bool:
        return len(self.in_flight) < self.jobs

    def submit(self, index: int, unit, total: int) -> None:
        backend = unit_backend(unit)
        idle = [w for w in self._live() if w.busy is None]
        worker = next((w for w in idle if w.backend == backend), None)
        if worker is None:
            others = [w for w in idle if w.backend != backend]
            if others and len(self._live()) >= self.jobs:
                self._retire(others[0])  # a worker runs one backend: make room for this one's
            worker = self._start(backend, any(t.config.train.deterministic for t in unit_trials(unit)))
        worker.busy = (index, unit)
        self.in_flight[unit.id] = (index, unit)
        sent = unit
        if isinstance(unit, GroupUnit) and unit.datasets:  # the arrays go through shared memory, not the pipe
            sent = replace(unit, datasets={k: self._shared.share(d) for k, d in unit.datasets.items()})
        worker.conn.send(("unit", sent, str(self.sweep_dir), index, total, self.device, self.stale_after))

    def started(self) -> set[str]:
        return set(self.in_flight)

    def collect(self, timeout: float) -> list[tuple]:
        """Outcomes of the units that ended within `timeout` seconds; worker log lines are passed on."""
        out: list[tuple] = []
        watched = {}
        for w in self._workers:
            watched[w.conn] = w
            watched[w.proc.sentinel] = w
        for ready in wait(list(watched), timeout):
            worker = watched[ready]
            if worker in self._workers:
                self._drain(worker, out)
        return out

    def _drain(self, worker: _Worker, out: list) -> None:
        """Every message the worker has sent; if it has exited, its busy unit's outcomes too."""
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
                _, unit = worker.busy
                worker.busy = None
                self.in_flight.pop(unit.id, None)
                why = f"the worker process died ({procs.describe_exit(worker.proc.exitcode)}); the next run retries it"
                for trial in unit_trials(unit):
                    status = read_status(self.sweep_dir / trial.id, self.stale_after)
                    out.append((trial, TrialOutcome(status, True, f"{status}: {why}")))

    def _handle(self, worker: _Worker, msg, out: list) -> None:
        kind = msg[0]
        if kind == "log":
            self.log.write(msg[1] + "\n")
        elif kind in ("outcomes", "error"):
            _, unit = worker.busy
            worker.busy = None
            self.in_flight.pop(unit.id, None)
            if kind == "error":
                raise from_wire(msg[1])
            trials = {t.id: t for t in unit_trials(unit)}
            out += [(trials[tid], TrialOutcome(status, trained, message)) for tid, status, trained, message in msg[1]]
        elif kind == "fatal":
            self.log.write(f"expkit: worker {worker.number}: {msg[1]}\n")

    def stop(self) -> list[tuple]:
        """SIGTERM to every worker, once; their units record their trials as interrupted."""
        out: list[tuple] = []

        def drain(timeout: float) -> None:
            try:
                out.extend(self.collect(timeout))
            except (ConfigError, RunWriteError):
                pass

        procs.stop([w.proc for w in self._workers], drain)
        for w in list(self._workers):
            self._drain(w, out)
        return out

    def close(self) -> None:
        """Let idle workers exit; kill any that do not within CLOSE_SECONDS."""
        import time

        for w in self._workers:
            self._retire(w)
        deadline = time.monotonic() + procs.CLOSE_SECONDS
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
        self._shared.close()


# --- the worker process -------------------------------------------------------------------------------


def worker_main(conn, parent_pid: int, backend: str, device: str, deterministic: bool, quiet_stdout: bool) -> None:
    """A worker: import the backend, then run what the sweep's process sends until it sends None."""
    try:
        procs.child_setup(parent_pid, quiet_stdout=quiet_stdout)
        from ...backend import activate, cap_gpu_memory, import_keras_for_worker

        try:
            activate(backend, device=device, deterministic=deterministic)
            cap_gpu_memory(backend)
        except (ImportError, ConfigError) as exc:
            conn.send(("fatal", f"the Keras backend '{backend}' cannot start in a worker process: {exc}"))
            return
        import_keras_for_worker()  # while the sweep's process still plans

        _serve(conn, backend)
    except KeyboardInterrupt:  # stopped while idle or while starting
        pass
    finally:
        try:
            conn.close()
        except OSError:
            pass
    # Everything is recorded and reported: end here, without the backend's exit-time teardown (a second
    # of clearing caches, during which a SIGTERM would land in an atexit hook).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _serve(conn, backend: str) -> None:
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
                conn.send(("preflight", to_wire(exc)))
            continue
        if msg[0] == "check":
            conn.send(("checked", *check_candidates(msg[1], msg[2])))
            continue
        _, unit, sweep_dir, index, total, device, stale_after = msg
        if isinstance(unit, GroupUnit):
            unit = replace(unit, datasets=open_handed_over(unit.datasets))
        path = Path(sweep_dir)
        log = procs.PipeLog(conn, "" if isinstance(unit, GroupUnit) else f"[{index}/{total}] ")
        try:
            outcomes = run_unit(unit, path, device=device, datasets=datasets, stale_after=stale_after, log=log)
        except KeyboardInterrupt:
            try:
                conn.send(("outcomes", [(t.id, read_status(path / t.id, stale_after), True,
                                         read_status(path / t.id, stale_after)) for t in unit_trials(unit)]))
                conn.close()
            except OSError:
                pass  # the sweep's process is gone (killed): the trials' folders say it all
            os._exit(0)  # everything is recorded: skip the backend's slow teardown, the sweep is waiting
        except (ConfigError, RunWriteError) as exc:  # a mistake found with the data, or an unwritable sweep folder
            conn.send(("error", to_wire(exc)))
            continue
        except Exception as exc:  # a bug: this unit's trials fail, others go on
            conn.send(("outcomes", [(t.id, FAILED, True, f"failed: {first_line(exc)}") for t in unit_trials(unit)]))
            continue
        conn.send(("outcomes", [(t.id, o.status, o.trained, o.message) for t, o in outcomes]))
