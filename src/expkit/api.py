"""The Python API, for notebooks and scripts. The `expkit` command is a thin layer over it.

    import expkit
    run = expkit.run({"model": {"layers": [...]}, "train": {"epochs": 2}})
    run.history            # per-epoch metrics (pandas DataFrame)
    run.model              # the trained Keras model
    sweep = expkit.sweep("configs/sweep_lr.yaml", overrides={"data.limit": 2000})
    sweep.results          # the comparison table (DataFrame)
"""

from __future__ import annotations

import html
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from .config import ExperimentConfig, apply_overrides, load_config as _load_file, validate
from .errors import ConfigError
from .repro import config_source
from .runfolder import RunRecord, read_metrics, read_record
from .tracking import check_trackers

__all__ = ["load_config", "run", "resume", "sweep", "table", "compare", "Run", "Sweep", "ConfigError"]

Overrides = Mapping[str, Any] | Iterable[str] | None


def load_config(source: str | os.PathLike | Mapping | ExperimentConfig, overrides: Overrides = None) -> ExperimentConfig:
    """A validated config from a YAML file, a dict or a config, with overrides applied.

    `overrides` is a mapping of dotted keys to values (`{"train.epochs": 2}`) or `--set` style
    strings (`["train.epochs=2"]`), applied to the raw config before it is validated. A dict needs
    no `name`: it defaults to `experiment`.
    """
    items = _override_items(overrides)
    if isinstance(source, ExperimentConfig):
        source = source.to_dict()
    if isinstance(source, Mapping):
        raw = dict(source)
        raw.setdefault("name", "experiment")
        return validate(apply_overrides(raw, items))
    return _load_file(source, items)


def _override_items(overrides: Overrides) -> list:
    if overrides is None:
        return []
    if isinstance(overrides, str):
        return [overrides]
    if isinstance(overrides, Mapping):
        return [(str(k), v) for k, v in overrides.items()]
    return list(overrides)


def _html_table(frame, title: str) -> str:
    return f"<div><strong>{html.escape(title)}</strong>{frame.to_html(index=False, na_rep='nan')}</div>"


@dataclass
class Run:
    """One finished (or stopped) run: its record, per-epoch history, trained model and folder."""

    path: Path
    record: RunRecord
    model: Any = field(default=None, repr=False)  # the trained Keras model (None when read back from disk)

    @classmethod
    def from_folder(cls, path: str | os.PathLike) -> "Run":
        """A run read back from its folder (no model)."""
        record = read_record(path)
        if record is None:
            raise ConfigError("not a finished run folder: no results.json", file=path)
        return cls(Path(path), record)

    def load_model(self):
        """model.keras read back, the user modules it was built with imported first (their Keras classes
        are then known to Keras' loader), found where the run found them."""
        import keras

        from .checkpoint import MODEL
        from .usercode import import_module, searched_in

        modules = [m for m in (self.record.user_code or []) if isinstance(m, dict) and m.get("module")]
        with searched_in([str(Path(m["path"]).parent) for m in modules if m.get("path")]):
            for m in modules:
                import_module(m["module"])
        return keras.saving.load_model(self.path / MODEL)

    @property
    def status(self) -> str:
        return self.record.status

    @property
    def history(self):
        """metrics.csv as a DataFrame: one row per epoch."""
        import pandas as pd

        return pd.DataFrame(read_metrics(self.path))

    @property
    def config(self) -> ExperimentConfig:
        from .files import read_yaml_file

        return validate(read_yaml_file(self.path / "config.yaml"), file=self.path / "config.yaml")

    def summary(self):
        """The headline numbers as a one-row DataFrame (the row `expkit table` shows)."""
        return table([self.path])

    def __repr__(self) -> str:
        best = self.record.best.get("val_accuracy")
        return f"Run({self.record.name!r}, status={self.status!r}, best_val_accuracy={best:.4f}, path='{self.path}')"

    def _repr_html_(self) -> str:
        return _html_table(self.summary(), f"{self.record.name}: {self.status} ({self.path})")


@dataclass
class Sweep:
    """A sweep folder: its trials' runs and its comparison table."""

    path: Path
    counts: dict = field(default_factory=dict)

    @property
    def results(self):
        """The sweep's comparison table (mean ± std over seeds), as `results.csv` holds it."""
        return table([self.path])

    @property
    def trials(self) -> list[Run]:
        """Every trial of the manifest that has a record, in manifest order."""
        from .runfolder import read_manifest

        runs = []
        for t in read_manifest(self.path)["trials"]:
            folder = self.path / str(t.get("id"))
            if read_record(folder) is not None:
                runs.append(Run.from_folder(folder))
        return runs

    @property
    def best(self):
        """A search's best row of `results` (the objective's mean over seeds; pruned rows never win), or
        None for a grid or before anything finished."""
        from .report.table import rank_by_objective
        from .runfolder import read_manifest

        search = read_manifest(self.path).get("search")
        results = self.results
        if not isinstance(search, dict) or search.get("objective") not in results.columns:
            return None
        ranked = rank_by_objective(results, search["objective"], search.get("direction") == "minimize")
        return ranked.iloc[0] if len(ranked) and ranked["best"].iloc[0] == "*" else None

    def __repr__(self) -> str:
        counts = ", ".join(f"{n} {s}" for s, n in sorted(self.counts.items()))
        return f"Sweep('{self.path}'{', ' + counts if counts else ''})"

    def _repr_html_(self) -> str:
        return _html_table(self.results, f"sweep {self.path.name} ({self.path})")


def run(config, overrides: Overrides = None, *, runs_dir: str | os.PathLike = "runs", device: str = "auto") -> Run:
    """Train one experiment (no sweep) and return its Run, model included.

    A user mistake raises ConfigError before anything is written; a run that fails in training
    records `failed` in its folder and re-raises."""
    from .backend import activate
    from .runner import ensure_writable, run_experiment

    cfg = load_config(config, overrides)
    if cfg.sweep is not None:
        raise ConfigError("this config has a sweep block: use expkit.sweep()", path="sweep")
    ensure_writable(runs_dir)
    check_trackers(cfg.track)
    activate(cfg.backend, device=device, deterministic=cfg.train.deterministic)  # before Keras is imported
    kept: list = []
    with config_source(_config_file(config)):
        folder = run_experiment(cfg, runs_dir=runs_dir, device=device, keep_model=kept)
    return Run(folder.path, read_record(folder.path), kept[0] if kept else None)


def resume(run_dir: str | os.PathLike, *, device: str = "auto", track: list[str] | None = None) -> Run:
    """Continue an interrupted run in its own folder, from its last finished epoch (its checkpoint),
    and return the Run. `track` replaces the trackers its config names. A sweep's trials resume when
    the sweep runs again."""
    from .backend import activate
    from .runfolder import FINISHED, RUNNING, RunFolder, is_run_folder, is_sweep_folder, read_status
    from .runner import run_experiment

    path = Path(run_dir)
    if is_sweep_folder(path) or is_sweep_folder(path.parent):
        raise ConfigError("a sweep (or one of its trials): run the sweep's config again, `expkit run SWEEP.yaml`; "
                          "its interrupted trials continue from their checkpoints", file=path)
    if not is_run_folder(path) or not (path / "config.yaml").is_file():
        raise ConfigError("not a run folder (expected config.yaml and status.json or results.json)", file=path)
    status = read_status(path)
    if status in FINISHED:
        raise ConfigError(f"this run is {status}; there is nothing to resume", file=path)
    if status == RUNNING:
        raise ConfigError("this run is still running in another process", file=path)
    cfg = _load_file(path / "config.yaml", [("track", track)] if track is not None else [])
    check_trackers(cfg.track)
    activate(cfg.backend, device=device, deterministic=cfg.train.deterministic)
    kept: list = []
    with config_source(path / "config.yaml"), user_code_source(path):
        run_experiment(cfg, device=device, folder=RunFolder(path), resume=True, keep_model=kept)
    return Run(path, read_record(path), kept[0] if kept else None)


def sweep(config, overrides: Overrides = None, *, runs_dir: str | os.PathLike = "runs", device: str = "auto",
          fail_fast: bool = False, log=None, jobs: int | None = None, executor: str | None = None,
          address: str | None = None) -> Sweep:
    """Run every unfinished trial of a sweep (resumable; safe beside other processes on the same
    sweep) and return the Sweep. `jobs`, `executor` ("local" or "ray") and `address` (a Ray
    cluster) override sweep.jobs, sweep.executor and sweep.address (docs/distributed.md)."""
    import io

    from .sweeps.driver import run_sweep

    cfg = load_config(config, overrides)
    if cfg.sweep is None:
        raise ConfigError("this config has no sweep block: use expkit.run()", path="sweep")
    check_trackers(cfg.track)
    # run_sweep activates the backend where the trials train: here for one job, else in each worker.
    with config_source(_config_file(config)):
        sweep_dir, counts = run_sweep(cfg, runs_dir=runs_dir, device=device, fail_fast=fail_fast,
                                      log=log if log is not None else io.StringIO(), jobs=jobs, executor=executor,
                                      address=address)
    if cfg.track:
        from .tracking import finish_sweep

        finish_sweep(cfg.track, sweep_dir)
    return Sweep(Path(sweep_dir), counts)


def user_code_source(run_dir: Path):
    """Look for the user modules where the run's earlier attempt found them (its record's user_code): its
    config.yaml now lives in the run folder, away from the modules beside the original config file."""
    from .runfolder import DamagedRecord
    from .usercode import searched_in

    try:
        record = read_record(run_dir)
    except DamagedRecord:
        record = None
    folders = [str(Path(m["path"]).parent) for m in (record.user_code or []) if isinstance(m, dict) and m.get("path")] \
        if record is not None else []
    return searched_in(folders)


def _config_file(config) -> Path | None:
    """The config's file, when it was given as one (its git state goes into each run's record)."""
    return Path(config) if isinstance(config, (str, os.PathLike)) else None


def table(paths, *, only_changed: bool = False, baseline: str | None = None, per_class=None):
    """One comparison table (DataFrame) from run folders, run-name folders and sweep folders.
    `per_class`: scores ("f1", ["precision", "recall"]) to add as a column per class."""
    from .report import collect_runs, comparison_table

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out = comparison_table(collect_runs([Path(p) for p in paths]), only_changed=only_changed, baseline=baseline)
    if per_class:
        from .report.perclass import parse_scores, per_class_columns

        out = per_class_columns(out, parse_scores(per_class))
    return out


def compare(paths, a: str | None = None, b: str | None = None, *, baseline: str | None = None,
            test: str = "auto", metrics: list[str] | None = None, reference: str | os.PathLike | None = None,
            confidence: float = 0.95):
    """Tests between rows of the table of `paths`, a DataFrame with a row per metric (report/stats.py):
    A's mean minus B's, the confidence interval, the two-sided p-value and the test (`auto`, `welch`,
    `paired`, `bootstrap`); `one seed: no test` in `note` where a row has fewer than 2 seeds. Give `a` and
    `b` (row labels; `b` may be `<run> (published)` from `reference`), or `baseline` alone: every row
    against it. Needs scipy (`pip install 'expkit[stats]'`)."""
    from .report import collect_runs, comparison_table, with_reference
    from .report.stats import table_tests

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if (a is None) != (b is None) or (a is None and baseline is None):
        raise ConfigError("expkit.compare: give two row labels a and b, or a baseline to test every row against")
    runs = collect_runs([Path(p) for p in paths])
    frame = comparison_table(runs)
    if reference is not None:
        frame = with_reference(frame, reference, every=True)
    return table_tests(runs, frame, compare=[[a, b]] if a is not None else None, compare_all=a is None,
                       baseline=baseline, test=test, metrics=metrics, confidence=confidence)
