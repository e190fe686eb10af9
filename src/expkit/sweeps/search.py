"""A search (sweep.space + sweep.search): Optuna's sampler proposes configurations, expkit trains them.

The study lives in the sweep folder (`search.journal`, Optuna's journal file storage: several processes
can share it, and it survives a crash), so `expkit run` again continues the same search, and several
drivers on one sweep folder share it. Proposing happens under the sweep's lock: the study never grows
past its budget, and each proposal is trained once (the trials' claims decide who trains it).

A proposed configuration becomes one trial per seed (trials.configuration_trials): its id is the hash of
its resolved config, as for a grid, so run folders, tables, report, diff and trackers are unchanged.
The sampler is told the objective's mean over seeds once all of them are finished (by whichever process
sees it first); a proposal whose trial was pruned is told `pruned`, one that diverged `fail`.
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from ..config import ExperimentConfig, check_search
from ..errors import ConfigError
from ..runfolder import DIVERGED, FINISHED, PRUNED, read_status, sweep_lock
from .pruning import need_optuna
from .tables import objectives
from .trials import Trial, configuration_trials

JOURNAL = "search.journal"
IDS, VALUES = "expkit_ids", "expkit_values"  # user attributes of an Optuna trial: its trials, its values


@dataclass
class Proposal:
    """One configuration the sampler proposed: Optuna's trial number, its values and its trials."""

    number: int
    values: dict
    trials: list[Trial] = field(default_factory=list)
    state: str = "RUNNING"   # Optuna's state: RUNNING until told


class Search:
    """The search of one sweep folder: propose, reconcile (tell what finished), list its trials."""

    def __init__(self, cfg: ExperimentConfig, sweep_dir: Path):
        self.cfg, self.sweep_dir = cfg, Path(sweep_dir)
        self.spec = cfg.sweep.search
        need_optuna("sweep.search")
        self.space = check_search(cfg.sweep)
        grid = [d.grid_values() for d in self.space.values()]
        self.combinations = math.prod(len(g) for g in grid) if all(g is not None for g in grid) else None
        self.budget = self.spec.trials or self.combinations
        if self.spec.sampler == "grid" and self.budget > self.combinations:
            raise ConfigError(f"the grid has {self.combinations} combinations; a grid search proposes each once, "
                              f"found trials: {self.budget}", path="sweep.search.trials")

    # --- Optuna ---------------------------------------------------------------------------------------

    def _study(self, number: int = 0):
        """The sweep folder's study, with a sampler seeded for proposal `number`: what a proposal is
        depends on the seed, its number and what finished before it, not on which process asks."""
        import optuna
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        path = str(self.sweep_dir / JOURNAL)
        storage = JournalStorage(JournalFileBackend(path, lock_obj=JournalFileOpenLock(path)))
        seed = zlib.crc32(f"{self.spec.seed}:{number}".encode())
        if self.spec.sampler == "tpe":
            # Optuna's default (10 random proposals first) assumes ~100 trials; a third of a small budget
            sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(2, self.budget // 3)))
        elif self.spec.sampler == "random":
            sampler = optuna.samplers.RandomSampler(seed=seed)
        else:
            sampler = optuna.samplers.GridSampler(
                {k: [_encode(v) for v in d.grid_values()] for k, d in self.space.items()}, seed=seed)
        return optuna.create_study(study_name=self.cfg.name, storage=storage, sampler=sampler,
                                   direction=self.spec.goal, load_if_exists=True)

    def _suggest(self, trial) -> dict:
        values = {}
        for key, d in self.space.items():
            if d.kind == "choice":
                values[key] = _decode(trial.suggest_categorical(key, [_encode(v) for v in d.choices]))
            elif d.kind == "int":
                values[key] = trial.suggest_int(key, int(d.low), int(d.high), step=d.step or 1, log=d.log)
            else:  # 4 significant digits: tables and labels stay readable, and training cannot tell
                values[key] = float(f"{trial.suggest_float(key, float(d.low), float(d.high), log=d.log):.4g}")
        return values

    # --- the search's state -----------------------------------------------------------------------------

    def proposals(self, study=None) -> list[Proposal]:
        """Every configuration proposed so far, in order, with its trials."""
        study = study or self._study()
        out = []
        for t in study.get_trials(deepcopy=False):
            values = t.user_attrs.get(VALUES)
            if values is None:  # asked by a process that stopped before it wrote them down
                continue
            out.append(Proposal(t.number, values, configuration_trials(self.cfg, values), t.state.name))
        return out

    def trials(self, proposals: list[Proposal] | None = None) -> list[Trial]:
        """Every trial proposed so far, once: a proposal that repeats an earlier one (a sampler may, in a
        small space) shares its trials, and is told their result too."""
        seen: dict[str, Trial] = {}
        for p in proposals if proposals is not None else self.proposals():
            for t in p.trials:
                seen.setdefault(t.id, t)
        return list(seen.values())

    def step(self, attempted: set[str], batch: int) -> tuple[list[Trial], list[Trial]]:
        """Under the sweep's lock: tell the sampler what finished, then (all trials so far, the trials this
        process should look at now): unfinished ones it has not attempted, else `batch` new proposals
        while the budget lasts. ([...], []) when there is nothing left for this process to do."""
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        with sweep_lock(self.sweep_dir):
            study = self._study()
            self.reconcile(study)
            proposals = self.proposals(study)
            todo = list({t.id: t for p in proposals if p.state == "RUNNING" for t in p.trials
                         if t.id not in attempted and read_status(self.sweep_dir / t.id) not in FINISHED}.values())
            asked = len(proposals)
            while not todo and asked < self.budget:
                for _ in range(min(batch, self.budget - asked)):
                    trial = self._study(asked).ask()
                    values = self._suggest(trial)
                    made = configuration_trials(self.cfg, values)
                    trial.set_user_attr(VALUES, values)
                    trial.set_user_attr(IDS, [t.id for t in made])
                    proposals.append(Proposal(trial.number, values, made))
                    asked += 1
                    # a repeat of an earlier proposal shares its trials (told when they finish)
                    todo += [t for t in made if t.id not in {u.id for u in todo}
                             and read_status(self.sweep_dir / t.id) not in FINISHED]
                if not todo:
                    self.reconcile(study)  # repeats of finished proposals: told now, and the search goes on
        return self.trials(proposals), todo

    def reconcile(self, study) -> None:
        """Tell the study every proposal whose trials have all finished: the objective's mean over seeds."""
        from optuna.trial import TrialState

        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            ids = t.user_attrs.get(IDS)
            if not ids:  # asked by a process that stopped before it wrote its values down (under the lock)
                study.tell(t.number, state=TrialState.FAIL)
                continue
            statuses = [read_status(self.sweep_dir / i) for i in ids]
            if not all(s in FINISHED for s in statuses):
                continue
            if PRUNED in statuses:
                study.tell(t.number, state=TrialState.PRUNED)
                continue
            values = objectives(self.sweep_dir, ids, self.spec.objective)
            mean = sum(values) / len(values)
            if DIVERGED in statuses or not math.isfinite(mean):
                study.tell(t.number, state=TrialState.FAIL)
            else:
                study.tell(t.number, mean)

    def describe(self) -> list[str]:
        """What --dry-run says instead of a trial list: the space and the budget."""
        seeds = self.cfg.sweep.seeds or [self.cfg.seed]
        folds = self.cfg.sweep.folds or 1
        repeats = f"{len(seeds)} seed{'s' if len(seeds) > 1 else ''}" + (f" x {folds} folds" if folds > 1 else "")
        lines = [f"search: {self.spec.sampler} sampler (seed {self.spec.seed}), {self.budget} configurations x "
                 f"{repeats} = {self.budget * len(seeds) * folds} trials at most, {self.spec.goal} "
                 f"{self.spec.objective} (mean over {'seeds and folds' if folds > 1 else 'seeds'})"]
        width = max(len(k) for k in self.space)
        lines += [f"  {k:{width}}  {d.describe()}" for k, d in self.space.items()]
        if self.cfg.sweep.prune is not None:
            p = self.cfg.sweep.prune
            lines.append(f"prune: {p.type.replace('_', ' ')} on {p.metric} from epoch {p.min_epochs}"
                         + (f", reduction factor {p.reduction_factor}" if p.type != "median" else
                            f", after {p.startup_trials} finished trials"))
        return lines


def _encode(value):
    """Optuna's categorical choices are None, bool, int, float or str: others (a layer spec) as JSON."""
    return value if value is None or isinstance(value, (bool, int, float, str)) else "json:" + json.dumps(value)


def _decode(value):
    return json.loads(value[5:]) if isinstance(value, str) and value.startswith("json:") else value
