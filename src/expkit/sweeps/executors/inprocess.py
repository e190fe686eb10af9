"""Units of work one at a time in this process: `--jobs 1` when this process can run their backend."""

from __future__ import annotations

from pathlib import Path

from ..procs import Prefixed
from ..trials import unit_backend
from ..units import run_unit
from ..work import DatasetCache, preflight


class InProcess:
    """Trials (and vectorised groups, when this process runs JAX) one at a time, here."""

    in_process = True
    gpus = None

    def __init__(self, sweep_dir: Path, *, device: str, stale_after: float, log):
        self.sweep_dir, self.device, self.stale_after, self.log = sweep_dir, device, stale_after, log
        self.datasets = DatasetCache()
        self.in_flight: dict[str, tuple] = {}

    def preflight(self, trials: list) -> None:
        from ...backend import activate

        if trials:  # Keras is imported only when something trains here
            activate(unit_backend(trials[0]), device=self.device,
                     deterministic=any(t.config.train.deterministic for t in trials))
            preflight(trials)

    def check(self, trials: list, numbers: list[int], say, meanwhile=None):
        return None  # measured by the planner in this process

    def room(self, unit) -> bool:
        return not self.in_flight

    def submit(self, index: int, unit, total: int) -> None:
        self.in_flight[unit.id] = (index, unit, total)

    def started(self) -> set[str]:
        return set(self.in_flight)

    def collect(self, timeout: float) -> list[tuple]:
        out = []
        for key, (index, unit, total) in list(self.in_flight.items()):
            try:
                out += run_unit(unit, self.sweep_dir, device=self.device, datasets=self.datasets,
                                stale_after=self.stale_after, log=Prefixed(self.log, f"[{index}/{total}] "))
            finally:
                del self.in_flight[key]
        return out

    def stop(self) -> list[tuple]:
        return []  # the interrupted unit recorded its trials on the way out

    def close(self) -> None:
        pass
