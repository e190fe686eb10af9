"""The one body that runs a unit of work, whichever executor runs it and in whichever process: a trial
(work.run_trial) or a vectorised group (vectorize.group.run_group)."""

from __future__ import annotations

from pathlib import Path

from .trials import GroupUnit
from .work import DatasetCache, run_trial


def run_unit(unit, sweep_dir: Path, *, device: str, datasets: DatasetCache | None, stale_after: float,
             log) -> list[tuple]:
    """Train `unit`; (trial, TrialOutcome) for each of its trials. The exceptions are run_trial's:
    ConfigError and RunWriteError stop the sweep, KeyboardInterrupt is recorded and raised again."""
    if isinstance(unit, GroupUnit):
        from .vectorize.group import run_group

        return run_group(unit, Path(sweep_dir), device=device, datasets=datasets, stale_after=stale_after, log=log)
    return [(unit, run_trial(unit, Path(sweep_dir), device=device, datasets=datasets, stale_after=stale_after,
                             log=log))]
