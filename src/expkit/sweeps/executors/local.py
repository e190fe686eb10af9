"""`--executor local`: this process, or worker processes of this machine."""

from __future__ import annotations

from pathlib import Path

from ..trials import unit_backend
from .inprocess import InProcess
from .pool import WorkerPool


def local_executor(units: list, sweep_dir, *, jobs: int, device: str, stale_after: float, log, live: bool, **_):
    """`--executor local`: this process for one job on a backend it can run, else worker processes (for
    several jobs, or units whose backends differ from this process's: a process runs one backend)."""
    from ...backend import can_run_here

    backends = {unit_backend(u) for u in units}
    if jobs == 1 and len(backends) <= 1 and all(can_run_here(b) for b in backends):
        return InProcess(Path(sweep_dir), device=device, stale_after=stale_after, log=log)
    return WorkerPool(jobs, sweep_dir, device=device, stale_after=stale_after, log=log, quiet_stdout=live)
