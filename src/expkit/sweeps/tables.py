"""The sweep folder's manifest, tables and plots, rewritten from the trials' run folders (the folders
are the truth) whenever trials finish."""

from __future__ import annotations

import math
import sys
from pathlib import Path

from ..config import ExperimentConfig
from ..errors import RunWriteError
from ..files import write_json_atomic
from ..runfolder import MANIFEST, manifest_trials, read_status, sweep_lock
from .trials import Trial, swept_keys


def manifest(cfg: ExperimentConfig, trials: list[Trial], sweep_dir: Path) -> dict:
    """The sweep's manifest: its trials in order with their statuses, then the trials of earlier
    versions of the sweep that still have folders here (`in_grid: false`), so no record is dropped."""
    keys = swept_keys(cfg)
    current = {t.id for t in trials}
    earlier = [t for t in manifest_trials(sweep_dir)
               if t.get("id") not in current and (sweep_dir / str(t.get("id"))).is_dir()]
    for t in earlier:
        keys += [k for k in t.get("values") or {} if k not in keys]
    search = cfg.sweep.search
    return {
        "name": cfg.name,
        "keys": keys,
        "seeds": cfg.sweep.seeds,
        **({"folds": cfg.sweep.folds} if cfg.sweep.folds else {}),
        **({"search": {"sampler": search.sampler, "objective": search.objective, "direction": search.goal}}
           if cfg.sweep.space and search is not None else {}),
        "trials": [{**t.record(), "status": read_status(sweep_dir / t.id)}
                   for t in trials]
        + [{**t, "status": read_status(sweep_dir / str(t["id"])), "in_grid": False} for t in earlier],
    }


def objective_of(record, objective: str) -> float:
    """A run's objective (a results column) from its record: best_X from `best`, test_X from `test`."""
    kind, _, metric = objective.partition("_")
    block = record.best if kind == "best" else (record.test or {})
    value = block.get(metric)
    return float(value) if isinstance(value, (int, float)) else math.nan


def objectives(sweep_dir: Path, ids: list[str], objective: str) -> list[float]:
    """The objective of each of these trials' records (NaN where there is none, or it is damaged)."""
    from ..runfolder import DamagedRecord, read_record

    out = []
    for tid in ids:
        try:
            record = read_record(sweep_dir / tid)
        except DamagedRecord:
            record = None
        out.append(objective_of(record, objective) if record is not None else math.nan)
    return out


def refresh(cfg: ExperimentConfig, trials: list[Trial], sweep_dir: Path, plots: bool = False) -> dict:
    """Rewrite the manifest and the tables from the folders (the folders are the truth); returns
    the current grid's counts by status."""
    from ..report import write_sweep_results

    try:
        with sweep_lock(sweep_dir):
            data = manifest(cfg, trials, sweep_dir)
            write_json_atomic(sweep_dir / MANIFEST, data)
            counts: dict[str, int] = {}
            for t in data["trials"]:
                if t.get("in_grid", True):
                    counts[t["status"]] = counts.get(t["status"], 0) + 1
            write_sweep_results(sweep_dir)
            if plots:
                _sweep_plots(cfg, trials, sweep_dir)
    except OSError as exc:
        raise RunWriteError(f"{sweep_dir}: cannot write the sweep's manifest and tables: {exc.strerror or exc}") from None
    return counts


def _sweep_plots(cfg, trials, sweep_dir: Path) -> None:
    from ..report import collect_runs, comparison_table
    from ..report.plots import plot_overlay, plot_sweep

    try:
        runs = collect_runs([sweep_dir])
        table, changed = comparison_table(runs), comparison_table(runs, only_changed=True)
        keys = swept_keys(cfg)
        numeric = [k for k in keys if all(isinstance(t.values[k], (int, float)) and not isinstance(t.values[k], bool) for t in trials)]
        if len(keys) == 1 and numeric:
            # config keys the trials differ in besides the swept one (a dataset changed between two runs
            # of the sweep): one line per value, never one line zig-zagging between them
            series = [c for c in changed.columns if c not in table.columns]
            plot_sweep(changed if series else table, numeric[0], sweep_dir / "sweep.png", series=series or None)
        if cfg.sweep.space:
            _search_plots(cfg, trials, table, sweep_dir)
        runs = [(sweep_dir / t.id, f"{t.label()} s{t.seed}") for t in trials if (sweep_dir / t.id / "metrics.csv").exists()]
        if runs:
            plot_overlay(runs, sweep_dir / "val_curves.png")
    except Exception as exc:  # plots never cost the sweep's results
        print(f"expkit: could not draw the sweep plots: {exc}", file=sys.stderr)


def _search_plots(cfg, trials, table, sweep_dir: Path) -> None:
    """search.png (the objective per proposal and the best so far) and parallel.png (the space)."""
    from ..report.plots import plot_parallel, plot_search
    from ..runfolder import PRUNED

    search = cfg.sweep.search
    minimize = search.goal == "minimize"
    by_values: dict[str, list] = {}
    for t in trials:  # a proposal's trials (one per seed) are consecutive
        by_values.setdefault(t.label(), []).append(t)
    values, pruned = [], []
    for members in by_values.values():
        ids = [t.id for t in members]
        scores = objectives(sweep_dir, ids, search.objective)
        values.append(sum(scores) / len(scores))
        pruned.append(any(read_status(sweep_dir / tid) == PRUNED for tid in ids))
    if values:
        plot_search(values, sweep_dir / "search.png", objective=search.objective, minimize=minimize, pruned=pruned)
    done = table[table["status"].astype(str) == "done"] if "status" in table.columns else table
    if len(done) >= 2:
        plot_parallel(done, list(cfg.sweep.space), sweep_dir / "parallel.png", objective=search.objective,
                      minimize=minimize)
