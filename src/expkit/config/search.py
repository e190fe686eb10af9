"""The search part of a sweep's schema: `sweep.space` (key paths -> distributions), `sweep.search` (the
sampler and its budget) and `sweep.prune` (stopping losing trials early). Parsed here, sampled by
Optuna in expkit.sweeps.search, pruned in expkit.sweeps.pruning."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, model_validator

from ..errors import ConfigError
from .base import Section

# What a search may optimise: a results column of every run (results.json's best and test blocks).
OBJECTIVES = ("best_val_accuracy", "best_val_loss", "best_accuracy", "best_loss", "test_accuracy", "test_loss")
KINDS = ("uniform", "log_uniform", "int", "choice")


def direction_of(metric: str) -> str:
    """A loss is minimised, anything else (accuracy) maximised."""
    return "minimize" if metric.endswith("loss") else "maximize"


@dataclass(frozen=True)
class Distribution:
    """One key's distribution in `sweep.space`."""

    kind: str                 # uniform | log_uniform | int | choice
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: int | float | None = None
    choices: tuple = ()

    def grid_values(self) -> list | None:
        """The values a grid sampler walks through, or None when the range is continuous."""
        if self.kind == "choice":
            return list(self.choices)
        if self.kind == "int" and not self.log:
            return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        return None

    def describe(self) -> str:
        if self.kind == "choice":
            return "choice of " + ", ".join(map(repr, self.choices))
        extra = (" log" if self.log and self.kind == "int" else "") + (f" step {self.step}" if self.step else "")
        return f"{self.kind} [{self.low}, {self.high}]{extra}"


def parse_distribution(spec: Any, path: tuple) -> Distribution:
    """`{uniform: [lo, hi]}`, `{log_uniform: [lo, hi]}`, `{int: [lo, hi], log: bool, step: n}` or
    `{choice: [a, b, ...]}` as a Distribution; a mistake is a ConfigError naming `path`."""
    if not isinstance(spec, dict):
        raise ConfigError(f"expected a distribution ({', '.join(f'{{{k}: ...}}' for k in KINDS)}), found {spec!r}",
                          path=path)
    kinds = [k for k in spec if k in KINDS]
    unknown = [k for k in spec if k not in (*KINDS, "log", "step")]
    if unknown or len(kinds) != 1:
        found = ", ".join(map(str, spec)) or "nothing"
        raise ConfigError(f"expected exactly one of {', '.join(KINDS)} (with log and step for int), found {found}",
                          path=path)
    kind = kinds[0]
    value = spec[kind]
    extra = {k: spec[k] for k in ("log", "step") if k in spec}
    if kind == "choice":
        if extra:
            raise ConfigError(f"choice takes no {', '.join(extra)}", path=path)
        if not isinstance(value, list) or not value:
            raise ConfigError(f"choice needs a non-empty list of values, found {value!r}", path=(*path, "choice"))
        return Distribution("choice", choices=tuple(value))
    if extra and kind != "int":
        raise ConfigError(f"{', '.join(extra)} applies to int ranges only", path=path)
    number = int if kind == "int" else (int, float)
    if (not isinstance(value, list) or len(value) != 2
            or not all(isinstance(v, number) and not isinstance(v, bool) for v in value)):
        what = "whole numbers" if kind == "int" else "numbers"
        raise ConfigError(f"expected [low, high], two {what}, found {value!r}", path=(*path, kind))
    low, high = value
    if not all(math.isfinite(v) for v in value) or low >= high:
        raise ConfigError(f"expected low < high, found [{low}, {high}]", path=(*path, kind))
    if kind == "log_uniform" and low <= 0:
        raise ConfigError(f"a log range needs low > 0, found {low}", path=(*path, kind))
    log, step = extra.get("log", False), extra.get("step")
    if not isinstance(log, bool):
        raise ConfigError(f"expected true or false, found {log!r}", path=(*path, "log"))
    if log and low <= 0:
        raise ConfigError(f"a log range needs low > 0, found {low}", path=(*path, "int"))
    if step is not None and (not isinstance(step, int) or isinstance(step, bool) or step < 1):
        raise ConfigError(f"expected a whole number of at least 1, found {step!r}", path=(*path, "step"))
    if log and step not in (None, 1):
        raise ConfigError("a log int range takes no step (Optuna samples it in steps of 1)", path=(*path, "step"))
    return Distribution(kind, low=low, high=high, log=log or kind == "log_uniform", step=step)


class SearchConfig(Section):
    sampler: Literal["tpe", "random", "grid"] = Field(
        "tpe", description="Optuna's sampler: tpe (learns from the finished trials), random, or grid (every "
        "combination of the space's choice lists and int ranges, in random order). Needs optuna: pip install "
        "'expkit[search]'.")
    trials: int | None = Field(
        None, ge=1, description="How many configurations the search proposes in all (each trained at every seed of "
        "sweep.seeds); required for tpe and random; grid defaults to every combination.")
    seed: int = Field(0, ge=0, description="The sampler's seed: the same seed proposes the same configurations.")
    objective: Literal[OBJECTIVES] = Field(
        "best_val_accuracy", description="The results column the search optimises (the mean over seeds).")
    direction: Literal["maximize", "minimize"] | None = Field(
        None, description="maximize or minimize the objective; default: minimize a loss, maximize an accuracy.")
    batch: int | None = Field(
        None, ge=1, description="tpe: configurations proposed at a time, before the results of the batch are known "
        "(default: --jobs, so every worker has one); random and grid propose all at once.")

    @property
    def goal(self) -> str:
        return self.direction or direction_of(self.objective)


class PruneConfig(Section):
    type: Literal["median", "successive_halving", "hyperband"] = Field(
        description="median: stop a trial whose metric is worse than the median of the finished trials at the same "
        "epoch; successive_halving: at epochs min_epochs x reduction_factor^k only the best 1/reduction_factor "
        "of the trials that reached it go on; hyperband: successive halving in several brackets of different "
        "min_epochs (Optuna's pruners; needs optuna).")
    metric: str = Field("val_accuracy", description="The per-epoch metric (a metrics.csv column) compared.")
    direction: Literal["maximize", "minimize"] | None = Field(
        None, description="default: minimize a loss, maximize anything else.")
    min_epochs: int = Field(1, ge=1, description="No trial is stopped before it finished this many epochs.")
    reduction_factor: int = Field(3, ge=2, description="successive_halving, hyperband: keep 1 in this many at a rung.")
    startup_trials: int = Field(
        5, ge=0, description="median: no trial is stopped until this many trials have finished.")

    @property
    def goal(self) -> str:
        return self.direction or direction_of(self.metric)


def check_search(sweep) -> dict[str, Distribution]:
    """Cross-checks of a sweep block's search keys (SweepConfig's validator); returns the parsed space."""
    space, search = sweep.space, sweep.search
    if not space:
        if search is not None:
            raise ConfigError("a search needs a space to sample: give sweep.space (key paths -> distributions)",
                              path="sweep.search")
        return {}
    for block in ("grid", "zip"):
        if getattr(sweep, block):
            raise ConfigError(f"sweep.{block} and sweep.space cannot be combined: give the {block}'s values as "
                              "{choice: [...]} in the space (sampler: grid walks every combination)",
                              path=f"sweep.{block}")
    dists = {key: parse_distribution(spec, ("sweep", "space", key)) for key, spec in space.items()}
    if search is None:
        raise ConfigError("a space needs a search: give sweep.search (at least trials: N)", path="sweep.search")
    if search.sampler == "grid":
        for key, dist in dists.items():
            if dist.grid_values() is None:
                raise ConfigError(f"the grid sampler needs a choice list or an int range without log, found "
                                  f"{dist.describe()}", path=("sweep", "space", key))
    elif search.trials is None:
        raise ConfigError(f"how many configurations the {search.sampler} search proposes: give sweep.search.trials",
                          path="sweep.search.trials")
    return dists


__all__ = ["Distribution", "KINDS", "OBJECTIVES", "PruneConfig", "SearchConfig", "check_search", "direction_of",
           "parse_distribution"]
