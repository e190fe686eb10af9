"""A sweep's trials as Ray tasks: `expkit run SWEEP --executor ray [--address HOST:PORT]`.

Each trial is one Ray task (`sweep.resources`: `num_cpus`, and `num_gpus`, which may be a fraction
to pack several trials onto one GPU) that runs `execute.run_trial` on whichever node Ray picks, with
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

from . import stopping
from .errors import ConfigError, RunWriteError
from .execute import DatasetCache, TrialOutcome, preflight, run_trial, trial_backend
from .runfolder import FAILED, INTERRUPTED, PENDING, RUNNING, read_status
from .stopping import Terminated
from .trials import Trial

MAX_RETRIES = 3            # times Ray re-runs a trial's task whose worker process or node died
STOP_GRACE_SECONDS = 60.0  # after Ctrl-C: time for the cancelled tasks to record themselves
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


def _interruption() -> BaseException:
    """What to raise when Ray's wait was interrupted: SIGTERM as Terminated (exit 143)."""
    return Terminated() if stopping.pending() is Terminated else KeyboardInterrupt()


def task_env(backend: str, cpus: float, gpus: float, environ=None) -> dict[str, str]:
    """The environment of a trial's task: the driver's expkit settings, its backend, its share of the
    node (threads from `cpus`; below one GPU, that fraction of the GPU's memory) and the driver's
    command line (the record's `command`, not the Ray worker's)."""
    from .backend import share_env
    from .repro import COMMAND_ENV, command_line

    environ = os.environ if environ is None else environ
    env = {k: v for k, v in environ.items() if k.startswith(FORWARDED)}
    env[COMMAND_ENV] = environ.get(COMMAND_ENV) or command_line()
    env.update(share_env(max(1, math.ceil(cpus)), gpus if 0 < gpus < 1 else None, environ))
    env["KERAS_BACKEND"] = backend
    return env


# --- on the worker ------------------------------------------------------------------------------------

_DATASETS: DatasetCache | None = None  # a worker process reused for the next task keeps the last dataset


def _start_backend(backend: str, device: str, deterministic: bool) -> None:
    from .backend import activate, cap_gpu_memory

    activate(backend, device=device, deterministic=deterministic)
    cap_gpu_memory(backend)


def preflight_task(trials: list[Trial], device: str) -> tuple | None:
    """Every trial's checks on a worker: None, or a ConfigError's (message, file, path)."""
    try:
        _start_backend(trial_backend(trials[0]), device, any(t.config.train.deterministic for t in trials))
        preflight(trials)
    except ConfigError as exc:
        return exc.message, exc.file, exc.path
    return None


def trial_task(trial: Trial, sweep_dir: str, device: str, stale_after: float) -> dict:
    """A trial's task: train it (unless finished or held) through run_trial; what happened, as a dict."""
    global _DATASETS
    where = f"{socket.gethostname()} (pid {os.getpid()})"
    if not Path(sweep_dir).is_dir():
        return {"storage_error": f"the sweep folder does not exist on the Ray worker {where}: the runs dir must "
                                 "be on storage every node sees, mounted at the same path (docs/distributed.md)"}
    log = io.StringIO()
    try:
        _start_backend(trial_backend(trial), device, trial.config.train.deterministic)
        _DATASETS = _DATASETS or DatasetCache()
        with stopping.interrupt_on_sigint():  # Ray's cancel: noted, so that a swallowed interrupt is raised again
            outcome = run_trial(trial, Path(sweep_dir), device=device, datasets=_DATASETS, stale_after=stale_after,
                                log=log)
    except ConfigError as exc:  # found with the data: recorded in the trial's folder; it stops the sweep
        return {"config_error": (exc.message, exc.file, exc.path), "log": log.getvalue(), "where": where}
    except RunWriteError as exc:  # the sweep folder cannot be written: every later trial would fail too
        return {"write_error": str(exc), "log": log.getvalue(), "where": where}
    return {"status": outcome.status, "trained": outcome.trained, "message": outcome.message, "log": log.getvalue(),
            "where": where}


# --- on the driver ------------------------------------------------------------------------------------


class RayExecutor:
    """Each trial a Ray task; as many in flight as the cluster's resources allow."""

    in_process = False

    def __init__(self, sweep_dir: Path, *, device: str, stale_after: float, log, resources=None,
                 address: str | None = None):
        self.sweep_dir = Path(sweep_dir)
        self.device, self.stale_after, self.log = device, stale_after, log
        self.cpus = float(getattr(resources, "cpus", 1.0))
        self.gpus = float(getattr(resources, "gpus", 0.0))
        self.ray, self._owned = connect(address)
        self._trial_task = self.ray.remote(trial_task)
        self.in_flight: dict[str, tuple[int, Trial, int, object]] = {}
        self._running: set[str] = set()
        self._looked = 0.0
        address = address or os.environ.get("RAY_ADDRESS")
        where = ("the Ray instance this process is connected to" if not self._owned
                 else f"the Ray cluster at {address}" if address else "a Ray instance on this machine (127.0.0.1)")
        log.write(f"Ray: {where}; each trial reserves {self.cpus:g} CPU"
                  + (f" and {self.gpus:g} GPU" if self.gpus else "") + "\n")

    def _options(self, backend: str, name: str) -> dict:
        return dict(num_cpus=self.cpus, num_gpus=self.gpus, name=name,
                    runtime_env={"env_vars": task_env(backend, self.cpus, self.gpus)})

    def preflight(self, trials: list[Trial]) -> None:
        """Every trial's checks on the cluster (its nodes have the data and the backends), one task
        per backend; the first mistake is raised here, before anything is written."""
        groups: dict[str, list[Trial]] = {}
        for trial in trials:
            groups.setdefault(trial_backend(trial), []).append(trial)
        task = self.ray.remote(preflight_task)
        refs = [task.options(max_retries=MAX_RETRIES, **self._options(backend, "expkit checks"))
                .remote(group, self.device) for backend, group in groups.items()]
        for error in self.ray.get(refs):
            if error is not None:
                message, file, path = error
                raise ConfigError(message, file=file, path=path)

    def room(self, trial: Trial) -> bool:
        return True  # Ray queues what the cluster cannot run yet

    def submit(self, index: int, trial: Trial, total: int) -> None:
        ref = self._trial_task.options(max_retries=MAX_RETRIES, retry_exceptions=False,
                           **self._options(trial_backend(trial), f"expkit {trial.id}")).remote(
            trial, str(self.sweep_dir), self.device, self.stale_after)
        self.in_flight[trial.id] = (index, trial, total, ref)

    def started(self) -> set[str]:
        """The submitted trials whose folders say they are training (looked at once a second); the
        rest wait in Ray's queue. (The folder cannot say which driver's task trains it: a second
        driver's task finds the claim held and returns.)"""
        if time.monotonic() - self._looked >= STATUS_POLL_SECONDS:
            self._looked = time.monotonic()
            for key in self.in_flight:
                if key not in self._running and read_status(self.sweep_dir / key, self.stale_after) == RUNNING:
                    self._running.add(key)
        return self._running & set(self.in_flight)

    def collect(self, timeout: float) -> list[tuple[Trial, TrialOutcome]]:
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
            index, trial, total, _ = self.in_flight.pop(refs[ref])
            self._running.discard(trial.id)
            out.append((trial, self._outcome(trial, index, total, ref)))
        return out

    def _outcome(self, trial: Trial, index: int, total: int, ref) -> TrialOutcome:
        from ray.exceptions import RayError, TaskCancelledError

        path = self.sweep_dir / trial.id
        try:
            result = self.ray.get(ref)
        except TaskCancelledError:
            status = read_status(path, self.stale_after)
            return TrialOutcome(status, True, status)
        except RayError as exc:  # the worker died more than MAX_RETRIES times, its node was lost, a bug
            status = read_status(path, self.stale_after)
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            return TrialOutcome(FAILED if status == RUNNING else status, True,
                                f"{status}: the Ray task failed ({type(exc).__name__}: {first})")
        for line in result.get("log", "").splitlines():  # what run_trial said on the worker, and where
            if line.strip():
                self.log.write(f"[{index}/{total}] {line} on {result.get('where')}\n")
        if "storage_error" in result:
            raise ConfigError(result["storage_error"], file=self.sweep_dir)
        if "write_error" in result:
            raise RunWriteError(result["write_error"])
        if "config_error" in result:
            message, file, path_ = result["config_error"]
            raise ConfigError(message, file=file, path=path_)
        return TrialOutcome(result["status"], result["trained"], result["message"])

    def stop(self) -> list[tuple[Trial, TrialOutcome]]:
        """Cancel every task: a running one gets KeyboardInterrupt and records itself `interrupted`."""
        refs = [entry[3] for entry in self.in_flight.values()]
        for ref in refs:
            try:
                self.ray.cancel(ref)
            except Exception:  # finished meanwhile
                pass
        if refs:
            self.ray.wait(refs, num_returns=len(refs), timeout=STOP_GRACE_SECONDS)
        out = []
        for key, (index, trial, total, ref) in list(self.in_flight.items()):
            status = read_status(self.sweep_dir / key, self.stale_after)
            if status != PENDING:
                out.append((trial, TrialOutcome(status, True, status if status != RUNNING else INTERRUPTED)))
        self.in_flight.clear()
        return out

    def close(self) -> None:
        if self._owned:
            self.ray.shutdown()
