"""Vectorised sweeps: trials that differ only in numbers that change no shape train as one JAX program.

`launch.run_groups` (called by execute.run_sweep) plans and runs the groups; `grouping` decides them
without Keras or JAX; `program` and `trainer` are the JAX side; `worker` is the child process.
"""

from .launch import run_groups

__all__ = ["run_groups"]
