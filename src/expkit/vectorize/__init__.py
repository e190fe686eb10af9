"""Vectorised sweeps: trials that differ only in numbers that change no shape train as one JAX program.

`launch.start_lanes`, `launch.plan_vectorised` and `launch.run_groups` (called by execute.run_sweep)
start the JAX processes, plan the groups and train them; `grouping` decides them without Keras or JAX;
`program` and `trainer` are the JAX side; `worker` is the child process.
"""

from .launch import plan_vectorised, run_groups, start_lanes

__all__ = ["plan_vectorised", "run_groups", "start_lanes"]
