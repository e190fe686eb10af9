"""Vectorised sweeps: trials that differ only in numbers that change no shape train as one JAX program.

`launch.start_lanes` and `launch.run_groups` (called by execute.run_sweep) start the JAX processes, plan
and run the groups; `grouping` decides them
without Keras or JAX; `program` and `trainer` are the JAX side; `worker` is the child process.
"""

from .launch import run_groups, start_lanes

__all__ = ["run_groups", "start_lanes"]
