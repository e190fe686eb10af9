"""A sweep block expanded into trials: pure (no files, no Keras).

Proposing trials (here), recording them (sweeps.tables, each trial's run folder) and running them
(sweeps.work, sweeps.executors, sweeps.driver) are separate. A trial's id is a hash of its resolved
config, so the same trial is recognised on every re-run: done trials are skipped, failed and
interrupted ones retried.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field

from ..config import ExperimentConfig, set_path, validate, without_recording_keys
from ..errors import ConfigError


@dataclass(frozen=True)
class Trial:
    id: str
    values: dict          # swept key -> value, in declaration order
    seed: int
    config: ExperimentConfig
    prune: dict | None = None  # sweep.prune: the rule that may stop it early (sweeps.pruning)
    fold: int | None = None    # sweep.folds: the fold it validates on (data.fold.index), a repeat like the seed

    def record(self) -> dict:
        """What its run folder's results.json and the manifest say about the trial."""
        return {"id": self.id, "values": self.values, "seed": self.seed,
                **({"fold": self.fold} if self.fold is not None else {})}

    def label(self) -> str:
        parts = [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in self.values.items()]
        return ", ".join(parts) or "-"

    def heading(self, position: int | None = None, total: int | None = None) -> str:
        """How every line about this trial starts: `[3/10] train.learning_rate=0.01 seed=14 (8a24db6a09)`."""
        where = f"[{position}/{total}] " if position is not None else ""
        fold = f" fold={self.fold}/{self.config.data.fold.of}" if self.fold is not None else ""
        return f"{where}{self.label()} seed={self.seed}{fold} ({self.id})"


def trial_id(resolved: dict) -> str:
    """Short, stable hash of a resolved config (key order and recording-only keys do not matter)."""
    canonical = json.dumps(without_recording_keys(resolved), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:10]


def expand_sweep(cfg: ExperimentConfig) -> list[Trial]:
    """Every trial of `cfg.sweep`: grid product x zip positions x seeds, in declaration order. A search
    (sweep.space) has no fixed list: its trials are proposed as it goes (sweeps.search)."""
    if cfg.sweep is None:
        raise ValueError("config has no sweep block")
    if cfg.sweep.space:
        raise ValueError("a search's trials are proposed by its sampler (sweeps.search), not expanded")
    sweep = cfg.sweep
    grid_keys = list(sweep.grid)
    zip_keys = list(sweep.zip)
    positions = range(len(next(iter(sweep.zip.values())))) if zip_keys else [None]
    trials = []
    for combo in itertools.product(*(sweep.grid[k] for k in grid_keys)):
        for pos in positions:
            values = dict(zip(grid_keys, combo))
            if pos is not None:
                values.update({k: sweep.zip[k][pos] for k in zip_keys})
            trials += configuration_trials(cfg, values)
    return distinct(trials)


def swept_keys(cfg: ExperimentConfig) -> list[str]:
    """The keys a sweep varies, in declaration order: grid, zip, then a search's space."""
    return [*cfg.sweep.grid, *cfg.sweep.zip, *cfg.sweep.space]


def configuration_trials(cfg: ExperimentConfig, values: dict) -> list[Trial]:
    """One configuration of the sweep (swept key -> value) as a trial per seed of sweep.seeds, and per
    fold of sweep.folds at each seed (the folds of one seed cut that seed's shuffled training set)."""
    base = cfg.to_dict()
    base.pop("sweep")
    sweep = cfg.sweep
    seeds = sweep.seeds if sweep.seeds else [cfg.seed]
    prune = sweep.prune.model_dump(mode="json") if sweep.prune is not None else None
    folds = range(sweep.folds) if sweep.folds else [None]
    trials = []
    for seed, fold in itertools.product(seeds, folds):
        raw = base
        for key, value in values.items():
            block = "grid" if key in sweep.grid else "zip" if key in sweep.zip else "space"
            try:
                raw = set_path(raw, key, value)
            except ConfigError as exc:
                raise ConfigError(exc.message, path=f"sweep.{block}.{key}") from None
        raw = set_path(raw, "seed", seed)
        if fold is not None:
            raw = set_path(raw, "data.fold", {"index": fold, "of": sweep.folds})
        try:
            trial_cfg = validate(raw)
        except ConfigError as exc:
            raise ConfigError(f"{exc.path}: {exc.message}" if exc.path else exc.message,
                              path=f"sweep ({_label(values)})") from None
        trials.append(Trial(trial_id(trial_cfg.to_dict()), values, seed, trial_cfg, prune, fold))
    return trials


def distinct(trials: list[Trial]) -> list[Trial]:
    """`trials`, refused when two resolve to one config (that would count one trained run twice)."""
    seen: dict[str, Trial] = {}
    for t in trials:
        if t.id in seen:
            raise ConfigError(f"trials ({seen[t.id].label()}, seed {seen[t.id].seed}) and ({t.label()}, seed "
                              f"{t.seed}) are the same experiment; list each value once", path="sweep")
        seen[t.id] = t
    return trials


def _label(values: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items())


@dataclass
class GroupUnit:
    """A vectorised group, or one process's share of it: trials that differ only in numbers the program
    takes as inputs, trained together as one JAX program (sweep.vectorize). With a single trial, the
    other unit of work a sweep's executors run."""

    trials: list[Trial]
    keys: list[str]                 # the swept keys whose values differ inside the group
    label: str = "1/1"              # the group's number among the sweep's groups
    lane: str = "1/1"               # this share's number when the group is split over processes
    budget_bytes: float = 0.0       # memory its programs may plan to use (0: no limit)
    max_size: int | None = None     # sweep.vectorize_max
    datasets: dict | None = field(default=None, repr=False, compare=False)  # loaded by the sweep's process

    @property
    def id(self) -> str:
        return f"group {self.label}" + ("" if self.lane == "1/1" else f" lane {self.lane}")

    def heading(self, position: int | None = None, total: int | None = None) -> str:
        return f"[vectorised {self.label}" + ("]" if self.lane == "1/1" else f" lane {self.lane}]")


def unit_trials(unit) -> list[Trial]:
    """The trials a unit of work trains."""
    return unit.trials if isinstance(unit, GroupUnit) else [unit]


def unit_backend(unit) -> str:
    """The Keras backend a unit trains on: its config's `backend`; JAX for a vectorised group."""
    return "jax" if isinstance(unit, GroupUnit) else unit.config.backend
