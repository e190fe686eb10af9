"""Executors: who runs a sweep's units of work (a trial, or a vectorised group: trials.GroupUnit).

An executor is found by name (`sweep.executor`, `--executor`) in EXECUTORS, whose entries are imported
only when chosen: `local` (this process, or worker processes of this machine: local.py, inprocess.py, pool.py)
and `ray` (each unit a Ray task: ray.py). Every executor runs both kinds of unit through
units.run_unit, and none imports the driver or another executor. The driver calls, in this order:

- `preflight(trials)`: every trial's checks on the backend and in the kind of process it trains in;
- `check(trials, numbers, say, meanwhile)`: ModelShapes of candidates for a vectorised group, measured
  on JAX where the group would train (None: no JAX process to ask), calling `meanwhile()` here while
  they are measured there; `gpus`: whether that place has a GPU;
- `room(unit)`, `submit(index, unit, total)`, `started()` (ids of the units training now),
  `collect(timeout)` -> [(trial, TrialOutcome)], and on a stop `stop()`; at the end `close()`.
"""

from __future__ import annotations

import importlib

from ...registry import Registry

# name -> "module:callable" making the executor; imported when chosen
EXECUTORS: Registry[str] = Registry("executor")
EXECUTORS.add("local", "expkit.sweeps.executors.local:local_executor")
EXECUTORS.add("ray", "expkit.sweeps.executors.ray:RayExecutor")


def make_executor(kind: str, units: list, sweep_dir, *, jobs: int, device: str, stale_after: float, log,
                  live: bool, resources=None, address: str | None = None):
    """The executor named `kind` for these units of work."""
    module, _, attr = EXECUTORS.get(kind, path="sweep.executor").partition(":")
    factory = getattr(importlib.import_module(module), attr)
    return factory(units, sweep_dir, jobs=jobs, device=device, stale_after=stale_after, log=log, live=live,
                   resources=resources, address=address)
