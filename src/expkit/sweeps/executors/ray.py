"""A sweep's units of work as Ray tasks: `expkit run SWEEP --executor ray [--address HOST:PORT]`.

Each unit (a trial, or a vectorised group trained as one JAX program) is one Ray task (`sweep.resources`:
`num_cpus`, and `num_gpus`, which may be a fraction to pack several units onto one GPU) that runs
units.run_unit on whichever node Ray picks, with
its threads and its GPU memory held to its share (`backend.share_env`, `backend.cap_gpu_memory`).
The workers write the run folders straight into the sweep folder, so the runs dir must be on storage
every node sees, at the same path; a worker that cannot see it fails the sweep with one clear error.

The claims (docs/run-folder.md) make tasks safe to repeat: a task whose worker died is retried
(MAX_RETRIES) and the retry takes the dead worker's claim over, sets the half-written attempt aside
and trains, so the trial is recorded once; a second driver on the same sweep, or a killed driver
started again, trains only what is unfinished. The driver imports no Keras backend; Ray itself is
imported only here, only when this executor is chosen (`pip install 'expkit[ray]'`).
"""

from __future__ import annotations

import io
import math
import os
import signal
import socket
import threading
import time
from pathlib import Path

from ... import stopping
from ...errors import ConfigError, RunWriteError, from_wire, to_wire
from ...runfolder import FAILED, INTERRUPTED, PENDING, RUNNING, read_status
from ...stopping import Terminated
from ..procs import STOP_GRACE_SECONDS
from ..trials import GroupUnit, unit_backend, unit_trials
from ..units import run_unit
from ..work import DatasetCache, TrialOutcome, preflight

MAX_RETRIES = 3            # times Ray re-runs a trial's task whose worker process or node died
STATUS_POLL_SECONDS = 1.0  # how often the driver looks which submitted trials have started
# The driver's settings that travel with every task (a worker node has its own environment).
FORWARDED = ("EXPKIT_", "KERAS_", "TF_CPP_MIN_LOG_LEVEL")
INSTALL_HINT = "pip install 'expkit[ray]'"


def import_ray():
    """Ray, or a ConfigError saying how to install it."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
    except ImportError:
        raise ConfigError(f"--executor ray needs Ray, which is not installed here ({INSTALL_HINT})",
                          path="sweep.executor") from None
    return ray


def connect(address: str | None = None):
    """Join the Ray cluster at `address` (or $RAY_ADDRESS); without one, start a Ray instance on this
    machine, on 127.0.0.1 only. Returns (ray, whether this call started the connection)."""
    ray = import_ray()
    if ray.is_initialized():
        return ray, False
    address = address or os.environ.get("RAY_ADDRESS") or None
    options = dict(log_to_driver=False, logging_level="ERROR")
    # Ray's core installs a C-level SIGTERM handler that ends the process at once; the driver's own
    # (SIGTERM handled like Ctrl-C: cancel the tasks, which record their trials) is put back after. Ray's
    # waits turn any signal into KeyboardInterrupt: stopping.pending() says whether it was SIGTERM.
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    if address and address != "auto" and "://" not in address:
        _reachable(address)  # Ray itself retries an address where nothing listens for minutes
    try:
        if address:
            ray.init(address=address, **options)
        else:
            # "local": a new instance, never one found running on this machine
            ray.init(address="local", include_dashboard=False, _node_ip_address="127.0.0.1", **options)
    except ConnectionError as exc:
        raise ConfigError(f"cannot reach the Ray cluster at {address}: {exc}", path="sweep.address") from None
    finally:
        if threading.current_thread() is threading.main_thread():
            for sig, handler in handlers.items():
                if handler is not None:
                    signal.signal(sig, handler)
    return ray, True


CONNECT_SECONDS = 5.0  # how long a cluster's address may take to accept a connection


def _reachable(address: str) -> None:
    """A ConfigError naming sweep.address when nothing accepts a connection at HOST:PORT."""
    host, _, port = address.rpartition(":")
    try:
        port_number = int(port)
    except ValueError:
        raise ConfigError(f"expected HOST:PORT, found {address!r}", path="sweep.address") from None
    try:
        with socket.create_connection((host or "127.0.0.1", port_number), timeout=CONNECT_SECONDS):
            pass
    except OSError as exc:
        raise ConfigError(f"no Ray cluster answers at {address} ({exc.strerror or exc}); start one there "
                          "(`ray start --head`) or leave --address out to start one on this machine",
                          path="sweep.address") from None


def check_resources(cluster: dict, cpus: float, gpus: float) -> None:
    """A ConfigError when one task's reservation (sweep.resources) exceeds what the whole cluster has:
    Ray would wait for it forever."""
    have_gpus, have_cpus = float(cluster.get("GPU", 0)), float(cluster.get("CPU", 0))
    if gpus > have_gpus:
        raise ConfigError(f"each task reserves {gpus:g} GPU, and the Ray cluster has {have_gpus:g}: no task could "
                          "ever be scheduled (set sweep.resources.gpus to 0 or at most what the cluster has)",
                          path="sweep.resources.gpus")
    if cpus > have_cpus:
        raise ConfigError(f"each task reserves {cpus:g} CPU, and the Ray cluster has {have_cpus:g}: no task could "
                          "ever be scheduled", path="sweep.resources.cpus")


def _interruption() -> BaseException:
    """What to raise when Ray's wait was interrupted: SIGTERM as Terminated (exit 143)."""
    return Terminated() if stopping.pending() is Terminated else KeyboardInterrupt()


def task_env(backend: str, cpus: float, gpus: float, environ=None) -> dict[str, str]:
    """The environment of a trial's task: the driver's expkit settings, its backend, its share of the
    node (threads from `cpus`; below one GPU, that fraction of the GPU's memory) and the driver's
    command line (the record's `command`, not the Ray worker's)."""
    from ...backend import share_env
    from ...repro import COMMAND_ENV, command_line

    environ = os.environ if environ is None else environ
    env = {k: v for k, v in environ.items() if k.startswith(FORWARDED)}
    env[COMMAND_ENV] = environ.get(COMMAND_ENV) or command_line()
    env.update(share_env(max(1, math.ceil(cpus)), gpus if 0 < gpus < 1 else None, environ))
    env["KERAS_BACKEND"] = backend
    return env


# --- on the worker ------------------------------------------------------------------------------------

_DATASETS: DatasetCache | None = None  # a worker process reused for the next task keeps the last dataset


def _start_backend(backend: str, device: str, deterministic: bool) -> None:
    from ...backend import activate, cap_gpu_memory

    activate(backend, device=device, deterministic=deterministic)
    cap_gpu_memory(backend)


def preflight_task(trials: list, device: str) -> tuple | None:
    """Every trial's checks on a worker: None, or the first mistake as wire data (errors.to_wire)."""
    try:
        _start_backend(unit_backend(trials[0]), device, any(t.config.train.deterministic for t in trials))
        preflight(trials)
    except ConfigError as exc:
        return to_wire(exc)
    return None


def check_task(trials: list, numbers: list[int], device: str) -> tuple:
    """Candidates for a vectorised group, checked on JAX on a worker (executors.pool._check's answer)."""
    from ..vectorize.plan import check_candidates

    _start_backend("jax", device, False)
    return check_candidates(trials, numbers)


def unit_task(unit, sweep_dir: str, device: str, stale_after: float) -> dict:
    """A unit's task: train it (its trials unless finished or held) through run_unit; what happened."""
    global _DATASETS
    where = f"{socket.gethostname()} (pid {os.getpid()})"
    if not Path(sweep_dir).is_dir():
        return {"storage_error": f"the sweep folder does not exist on the Ray worker {where}: the runs dir must "
                                 "be on storage every node sees, mounted at the same path (docs/distributed.md)"}
    log = io.StringIO()
    try:
        _start_backend(unit_backend(unit), device, any(t.config.train.deterministic for t in unit_trials(unit)))
        _DATASETS = _DATASETS or DatasetCache()
        with stopping.interrupt_on_sigint():  # Ray's cancel: noted, so that a swallowed interrupt is raised again
            outcomes = run_unit(unit, Path(sweep_dir), device=device, datasets=_DATASETS, stale_after=stale_after,
                                log=log)
    except (ConfigError, RunWriteError) as exc:  # found with the data, or an unwritable sweep folder: stops the sweep
        return {"error": to_wire(exc), "log": log.getvalue(), "where": where}
    return {"outcomes": [(t.id, o.status, o.trained, o.message) for t, o in outcomes], "log": log.getvalue(),
            "where": where}


# --- on the driver ------------------------------------------------------------------------------------


class RayExecutor:
    """Each unit of work a Ray task; as many in flight as the cluster's resources allow."""

    in_process = False

    def __init__(self, units, sweep_dir: Path, *, device: str, stale_after: float, log, resources=None,
                 address: str | None = None, **_):
        self.sweep_dir = Path(sweep_dir)
        self.device, self.stale_after, self.log = device, stale_after, log
        self.cpus = float(getattr(resources, "cpus", 1.0))
        self.gpus_per_task = float(getattr(resources, "gpus", 0.0))
        self.ray, self._owned = connect(address)
        try:
            check_resources(self.ray.cluster_resources(), self.cpus, self.gpus_per_task)
        except ConfigError:
            if self._owned:
                self.ray.shutdown()
            raise
        self._unit_task = self.ray.remote(unit_task)
        self.gpus = self.gpus_per_task > 0  # where a vectorised group trains: a task with or without a GPU
        self.in_flight: dict[str, tuple] = {}
        self._running: set[str] = set()
        self._looked = 0.0
        address = address or os.environ.get("RAY_ADDRESS")
        where = ("the Ray instance this process is connected to" if not self._owned
                 else f"the Ray cluster at {address}" if address else "a Ray instance on this machine (127.0.0.1)")
        log.write(f"Ray: {where}; each trial or vectorised group reserves {self.cpus:g} CPU"
                  + (f" and {self.gpus_per_task:g} GPU" if self.gpus_per_task else "") + "\n")

    def _options(self, backend: str, name: str) -> dict:
        return dict(num_cpus=self.cpus, num_gpus=self.gpus_per_task, name=name,
                    runtime_env={"env_vars": task_env(backend, self.cpus, self.gpus_per_task)})

    def preflight(self, trials: list) -> None:
        """Every trial's checks on the cluster (its nodes have the data and the backends), one task
        per backend; the first mistake is raised here, before anything is written."""
        groups: dict[str, list] = {}
        for trial in trials:
            groups.setdefault(unit_backend(trial), []).append(trial)
        task = self.ray.remote(preflight_task)
        refs = [task.options(max_retries=MAX_RETRIES, **self._options(backend, "expkit checks"))
                .remote(group, self.device) for backend, group in groups.items()]
        try:
            errors = self.ray.get(refs)
        except KeyboardInterrupt:
            raise _interruption() from None
        for error in errors:
            if error is not None:
                raise from_wire(error)

    def check(self, trials: list, numbers: list[int], say, meanwhile=None) -> dict | None:
        """Candidates for a vectorised group, checked on JAX in a task where the group would train;
        `meanwhile()` runs here while the task checks."""
        task = self.ray.remote(check_task)
        ref = task.options(max_retries=MAX_RETRIES, **self._options("jax", "expkit checks")).remote(
            trials, numbers, self.device)
        if meanwhile is not None:
            meanwhile()
        try:
            shapes, error, gpus = self.ray.get(ref)
        except KeyboardInterrupt:
            raise _interruption() from None
        if error is not None:
            raise from_wire(error)
        self.gpus = gpus
        return shapes

    def room(self, unit) -> bool:
        return True  # Ray queues what the cluster cannot run yet

    def submit(self, index: int, unit, total: int) -> None:
        name = f"expkit {unit.id}" if isinstance(unit, GroupUnit) else f"expkit {unit.id}"
        ref = self._unit_task.options(max_retries=MAX_RETRIES, retry_exceptions=False,
                                      **self._options(unit_backend(unit), name)).remote(
            unit, str(self.sweep_dir), self.device, self.stale_after)
        self.in_flight[unit.id] = (index, unit, total, ref)

    def started(self) -> set[str]:
        """The submitted units whose trials' folders say they are training (looked at once a second); the
        rest wait in Ray's queue. (The folder cannot say which driver's task trains it: a second
        driver's task finds the claim held and returns.)"""
        if time.monotonic() - self._looked >= STATUS_POLL_SECONDS:
            self._looked = time.monotonic()
            for key, (_, unit, _, _) in self.in_flight.items():
                if key not in self._running and any(read_status(self.sweep_dir / t.id, self.stale_after) == RUNNING
                                                    for t in unit_trials(unit)):
                    self._running.add(key)
        return self._running & set(self.in_flight)

    def collect(self, timeout: float) -> list[tuple]:
        refs = {entry[3]: key for key, entry in self.in_flight.items()}
        if not refs:
            return []
        try:
            self.ray.wait(list(refs), num_returns=1, timeout=timeout)
            ready, _ = self.ray.wait(list(refs), num_returns=len(refs), timeout=0)
        except KeyboardInterrupt:
            raise _interruption() from None
        out = []
        for ref in ready:
            index, unit, total, _ = self.in_flight.pop(refs[ref])
            self._running.discard(unit.id)
            out += self._outcomes(unit, index, total, ref)
        return out

    def _outcomes(self, unit, index: int, total: int, ref) -> list[tuple]:
        from ray.exceptions import RayError, TaskCancelledError

        trials = unit_trials(unit)
        try:
            result = self.ray.get(ref)
        except TaskCancelledError:
            return [(t, TrialOutcome(read_status(self.sweep_dir / t.id, self.stale_after), True,
                                     read_status(self.sweep_dir / t.id, self.stale_after))) for t in trials]
        except RayError as exc:  # the worker died more than MAX_RETRIES times, its node was lost, a bug
            lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
            first = lines[-1] if lines else type(exc).__name__  # a task's error ends with its cause
            out = []
            for t in trials:
                status = read_status(self.sweep_dir / t.id, self.stale_after)
                out.append((t, TrialOutcome(FAILED if status == RUNNING else status, True,
                                            f"{status}: the Ray task failed ({first})")))
            return out
        prefix = "" if isinstance(unit, GroupUnit) else f"[{index}/{total}] "
        for line in result.get("log", "").splitlines():  # what the unit said on the worker, and where
            if line.strip():
                self.log.write(f"{prefix}{line} on {result.get('where')}\n")
        if "storage_error" in result:
            raise ConfigError(result["storage_error"], file=self.sweep_dir)
        if "error" in result:
            raise from_wire(result["error"])
        by_id = {t.id: t for t in trials}
        return [(by_id[tid], TrialOutcome(status, trained, message)) for tid, status, trained, message in result["outcomes"]]

    def stop(self) -> list[tuple]:
        """Cancel every task: a running one gets KeyboardInterrupt and records its trials `interrupted`."""
        refs = [entry[3] for entry in self.in_flight.values()]
        for ref in refs:
            try:
                self.ray.cancel(ref)
            except Exception:  # finished meanwhile
                pass
        if refs:
            self.ray.wait(refs, num_returns=len(refs), timeout=STOP_GRACE_SECONDS)
        out = []
        for _, unit, _, _ in list(self.in_flight.values()):
            for t in unit_trials(unit):
                status = read_status(self.sweep_dir / t.id, self.stale_after)
                if status != PENDING:
                    out.append((t, TrialOutcome(status, True, status if status != RUNNING else INTERRUPTED)))
        self.in_flight.clear()
        return out

    def close(self) -> None:
        if self._owned:
            self.ray.shutdown()
