"""Sweeps, in layers that import only downwards (pyproject's import-linter contracts check it):

- `trials`: a sweep block expanded into trials, and the vectorised group as a unit of work (pure);
- `tables`: the sweep folder's manifest, tables and plots, rewritten from the trial folders;
- `procs`: child-process plumbing, written once (spawn, set-up, log lines, stop with grace);
- `work`: the body of one trial (claim, attempt, train, record), the one check loop, datasets;
- `vectorize`: trials that differ only in numbers, trained as one JAX program (grouping, program,
  trainer, the group's body, planning);
- `units`: the one body that runs a unit of work (a trial or a group), in any process;
- `executors`: a registry of who runs units (this process, local worker processes, Ray tasks);
- `driver`: run_sweep; `dryrun`: what a run would do, without training.

This package's __init__ imports nothing: importing a lower layer never loads a higher one.
"""
