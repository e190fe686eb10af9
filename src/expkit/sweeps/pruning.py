"""Stopping losing trials early (sweep.prune): after each epoch, a trial's metric so far is judged
against the other trials of its sweep by one of Optuna's pruners (median, successive halving;
hyperband as successive halving in brackets, as Optuna builds it).

The other trials are read from the sweep folder (their metrics.csv and status), which every process,
Ray task and vectorised group shares and which survives a crash; so the pruner's study is built in
memory for each decision from those records (the record is expkit's, the rule is Optuna's). Lanes of
a vectorised group are judged the same way, with the other lanes' epochs handed in directly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from ..config import direction_of
from ..runfolder import AVERAGED, DamagedRecord, manifest_trials, read_metrics, read_status


def need_optuna(key: str) -> None:
    """A search or pruning without Optuna installed: one line naming the key and the extra."""
    import importlib.util

    from ..errors import ConfigError

    if importlib.util.find_spec("optuna") is None:
        raise ConfigError("needs Optuna, which is not installed: pip install 'expkit[search]'", path=key)


@dataclass
class Competitor:
    """Another trial's metric per epoch (index 0: epoch 1), and whether it finished all its epochs."""

    values: list[float]
    complete: bool


def rung_epochs(spec: dict, bracket: int, upto: int) -> list[int]:
    """The epochs up to `upto` at which successive halving judges a trial of `bracket`: min_epochs x
    rf^(bracket + k) (none for the median rule)."""
    if spec["type"] == "median":
        return []
    out, k = [], 0
    while (epoch := spec["min_epochs"] * spec["reduction_factor"] ** (bracket + k)) <= upto:
        out.append(epoch)
        k += 1
    return out


def brackets(spec: dict, max_epochs: int) -> int:
    """hyperband: how many brackets (Optuna's rule: floor(log_rf(max / min)) + 1)."""
    if spec["type"] != "hyperband":
        return 1
    ratio = max(max_epochs / spec["min_epochs"], 1)
    return int(math.floor(math.log(ratio, spec["reduction_factor"]) + 1e-9)) + 1


def bracket_of(spec: dict, trial_id: str, max_epochs: int) -> int:
    """hyperband: a trial's bracket, fixed by its id (so every process and every rerun agrees)."""
    return int(trial_id, 16) % brackets(spec, max_epochs) if spec["type"] == "hyperband" else 0


def decide(spec: dict, mine: list[float], others: list[Competitor], *, bracket: int = 0) -> bool:
    """Whether a trial whose metric was `mine` (epoch 1, 2, ...) is stopped now, by Optuna's pruner,
    against `others` (of the same bracket for hyperband)."""
    import optuna
    from optuna.trial import TrialState, create_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    goal = spec.get("direction") or direction_of(spec["metric"])
    worst = -math.inf if goal == "maximize" else math.inf

    def clean(values):  # a NaN epoch (a diverging trial) is the worst value there is
        return {i: (v if math.isfinite(v) else worst) for i, v in enumerate(values, 1)}

    if spec["type"] == "median":
        pruner = optuna.pruners.MedianPruner(n_startup_trials=spec["startup_trials"],
                                             n_warmup_steps=spec["min_epochs"], interval_steps=1)
    else:
        pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=spec["min_epochs"],
                                                        reduction_factor=spec["reduction_factor"],
                                                        min_early_stopping_rate=bracket)
    study = optuna.create_study(direction=goal, pruner=pruner)
    for other in others:
        values = clean(other.values)
        if not values:
            continue
        # Successive halving compares what each trial had at a rung (Optuna keeps it as a system attribute)
        attrs = {f"completed_rung_{r}": values[e] for r, e in enumerate(rung_epochs(spec, bracket, len(values)))}
        study.add_trial(create_trial(state=TrialState.COMPLETE if other.complete else TrialState.PRUNED,
                                     value=values[len(values)] if other.complete else None,
                                     intermediate_values=values, system_attrs=attrs))
    trial = study.ask()
    values = clean(mine)
    for epoch, value in values.items():
        trial.report(value, epoch)
    for r, e in enumerate(rung_epochs(spec, bracket, len(values) - 1)):  # the rungs it passed in earlier epochs
        study._storage.set_trial_system_attr(trial._trial_id, f"completed_rung_{r}", values[e])
    return bool(pruner.prune(study, study._storage.get_trial(trial._trial_id)))


class SweepPruner:
    """The pruning decision for one trial of a sweep, against the other trials its sweep folder holds."""

    def __init__(self, spec: dict, sweep_dir: Path, trial_id: str, max_epochs: int):
        self.spec, self.sweep_dir, self.trial_id, self.max_epochs = spec, Path(sweep_dir), trial_id, max_epochs
        self.bracket = bracket_of(spec, trial_id, max_epochs)

    def competitors(self) -> list[Competitor]:
        """The sweep's other trials (the manifest's current ones) with at least one epoch recorded."""
        out = []
        for entry in manifest_trials(self.sweep_dir):
            tid = entry["id"]
            if tid == self.trial_id or not entry.get("in_grid", True):
                continue
            if bracket_of(self.spec, tid, self.max_epochs) != self.bracket:
                continue
            folder = self.sweep_dir / tid
            try:
                rows = read_metrics(folder)
            except DamagedRecord:
                continue
            values = [float(r.get(self.spec["metric"], math.nan)) for r in rows]
            if values:
                out.append(Competitor(values, read_status(folder) in AVERAGED))
        return out

    def should_stop(self, history: list[dict]) -> bool:
        """After an epoch: whether the trial whose rows are `history` is stopped here (a vectorised
        group's lanes have written this epoch's rows by then: they are in the folder's records)."""
        if len(history) >= self.max_epochs:
            return False  # its last epoch: nothing left to save
        mine = [float(r.get(self.spec["metric"], math.nan)) for r in history]
        return decide(self.spec, mine, self.competitors(), bracket=self.bracket)

    def reason(self, epochs: int) -> str:
        kind = self.spec["type"].replace("_", " ")
        return f"pruned after epoch {epochs} ({kind} on {self.spec['metric']})"
