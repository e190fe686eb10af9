"""Vectorised sweeps: trials that differ only in numbers that change no shape train as one JAX program.

`grouping` decides the groups without Keras or JAX; `plan` plans them before a sweep trains (and turns
them into units of work, trials.GroupUnit); `program` and `trainer` are the JAX side; `group` is the
body of one group, run by whichever executor runs the unit.
"""
