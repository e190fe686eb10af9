"""Trackers: TensorBoard and MLflow record a run beside its folder, chosen by `track:` or `--track`.

A tracker is a registry entry naming the module that implements it; that module (and so the
tracker's library) is imported only when the tracker is chosen. Each module defines

    class Tracker(run_dir, config, trial)   # config: the resolved config as a dict; trial: results.json's
        start(history)                      # the run begins or resumes; history: epochs already finished
        log_epoch(row)                      # one row of metrics.csv
        finish(record)                      # the run ended (a RunRecord, or None when it wrote none)
    finish_sweep(sweep_dir)                 # a sweep's trials are done: its sweep-level records
    export_run(run_dir, config, trial, history, record) -> str   # `expkit export`: one existing folder

A tracker never costs a run its record: an exception inside one is one warning line on stderr and
the tracker is off for the rest of the run (`Trackers`). A tracker whose library is missing is a
ConfigError before anything trains (`check_trackers`).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..registry import Registry


@dataclass(frozen=True)
class TrackerEntry:
    name: str
    module: str     # imported only when the tracker is chosen
    requires: str   # the library's import name
    extra: str      # pip install 'expkit[<extra>]'

    def available(self) -> bool:
        return importlib.util.find_spec(self.requires) is not None

    def load(self):
        return importlib.import_module(self.module)


TRACKERS: Registry[TrackerEntry] = Registry("tracker")
TRACKERS.add("tensorboard", TrackerEntry("tensorboard", "expkit.tracking.tensorboard", "tensorboard", "tensorboard"))
TRACKERS.add("mlflow", TrackerEntry("mlflow", "expkit.tracking.mlflow", "mlflow", "mlflow"))


def check_trackers(names) -> None:
    """Every tracker in `names` is known and its library installed; else a ConfigError naming `track`."""
    for i, name in enumerate(names):
        entry = TRACKERS.get(name, path=("track", i))
        if not entry.available():
            raise ConfigError(f"the {name} tracker needs the {entry.requires} package, which is not installed: "
                              f"pip install 'expkit[{entry.extra}]'", path=("track", i))


def warn(message: str) -> None:
    text = " ".join(str(message).split())
    print(f"expkit: warning: {text[:400]}", file=sys.stderr)


def _failure(name: str, what: str, exc: BaseException) -> str:
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{name} tracking failed while {what} ({type(exc).__name__}{': ' + detail if detail else ''}); " \
           f"the run goes on without {name}"


class Trackers:
    """The chosen trackers of one run. Every call is guarded: a failure is one warning line, after
    which that tracker is dropped (its later calls would only repeat the failure)."""

    def __init__(self, names, run_dir: Path, config: dict, trial: dict | None = None):
        self._active: list[tuple[str, object]] = []
        for name in names:
            try:
                tracker = TRACKERS.get(name).load().Tracker(Path(run_dir), config, trial)
            except Exception as exc:
                warn(_failure(name, "starting", exc))
                continue
            self._active.append((name, tracker))

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self._active]

    def _call(self, method: str, what: str, *args) -> None:
        for name, tracker in list(self._active):
            try:
                getattr(tracker, method)(*args)
            except Exception as exc:
                warn(_failure(name, what, exc))
                self._active.remove((name, tracker))

    def start(self, history: list[dict]) -> None:
        self._call("start", "starting", history)

    def log_epoch(self, row: dict) -> None:
        self._call("log_epoch", f"logging epoch {row.get('epoch')}", row)

    def finish(self, record) -> None:
        self._call("finish", "finishing", record)
        self._active = []


def finish_sweep(names, sweep_dir: Path) -> None:
    """The sweep-level records of each tracker (TensorBoard's HParams experiment, MLflow's parent run)."""
    for name in names:
        try:
            TRACKERS.get(name).load().finish_sweep(Path(sweep_dir))
        except Exception as exc:
            warn(_failure(name, f"recording the sweep {sweep_dir}", exc))
