"""Sweeps: expanding a sweep block into trials (pure), and the sweep folder's manifest and tables.

Proposing trials (`expand_sweep`), recording them (the manifest, each trial's run folder) and running
them (`expkit.execute`) are separate. A trial's id is a hash of its resolved config, so the same
trial is recognised on every re-run: done trials are skipped, failed and interrupted ones retried.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from .config import ExperimentConfig, set_path, validate, without_recording_keys
from .errors import ConfigError, RunWriteError
from .files import write_json_atomic
from .runfolder import read_status


@dataclass(frozen=True)
class Trial:
    id: str
    values: dict          # swept key -> value, in declaration order
    seed: int
    config: ExperimentConfig

    def label(self) -> str:
        parts = [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in self.values.items()]
        return ", ".join(parts) or "-"


def trial_id(resolved: dict) -> str:
    """Short, stable hash of a resolved config (key order and recording-only keys do not matter)."""
    canonical = json.dumps(without_recording_keys(resolved), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:10]


def expand_sweep(cfg: ExperimentConfig) -> list[Trial]:
    """Every trial of `cfg.sweep`: grid product x zip positions x seeds, in declaration order."""
    if cfg.sweep is None:
        raise ValueError("config has no sweep block")
    base = cfg.to_dict()
    base.pop("sweep")
    sweep = cfg.sweep
    grid_keys = list(sweep.grid)
    zip_keys = list(sweep.zip)
    positions = range(len(next(iter(sweep.zip.values())))) if zip_keys else [None]
    seeds = sweep.seeds if sweep.seeds else [cfg.seed]
    trials = []
    for combo in itertools.product(*(sweep.grid[k] for k in grid_keys)):
        for pos in positions:
            values = dict(zip(grid_keys, combo))
            if pos is not None:
                values.update({k: sweep.zip[k][pos] for k in zip_keys})
            for seed in seeds:
                raw = base
                for key, value in values.items():
                    block = "grid" if key in sweep.grid else "zip"
                    try:
                        raw = set_path(raw, key, value)
                    except ConfigError as exc:
                        raise ConfigError(exc.message, path=f"sweep.{block}.{key}") from None
                raw = set_path(raw, "seed", seed)
                try:
                    trial_cfg = validate(raw)
                except ConfigError as exc:
                    raise ConfigError(f"{exc.path}: {exc.message}" if exc.path else exc.message,
                                      path=f"sweep ({_label(values)})") from None
                trials.append(Trial(trial_id(trial_cfg.to_dict()), values, seed, trial_cfg))
    seen: dict[str, Trial] = {}
    for t in trials:  # two entries that resolve to one config would count one trained run twice
        if t.id in seen:
            raise ConfigError(f"trials ({seen[t.id].label()}, seed {seen[t.id].seed}) and ({t.label()}, seed "
                              f"{t.seed}) are the same experiment; list each value once", path="sweep")
        seen[t.id] = t
    return trials


def _label(values: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items())


def manifest(cfg: ExperimentConfig, trials: list[Trial], sweep_dir: Path) -> dict:
    """The sweep's manifest: its trials in order with their statuses, then the trials of earlier
    versions of the sweep that still have folders here (`in_grid: false`), so no record is dropped."""
    keys = list(cfg.sweep.grid) + list(cfg.sweep.zip)
    current = {t.id for t in trials}
    earlier = [t for t in _read_manifest_trials(sweep_dir)
               if t.get("id") not in current and (sweep_dir / str(t.get("id"))).is_dir()]
    for t in earlier:
        keys += [k for k in t.get("values") or {} if k not in keys]
    return {
        "name": cfg.name,
        "keys": keys,
        "seeds": cfg.sweep.seeds,
        "trials": [{"id": t.id, "values": t.values, "seed": t.seed, "status": read_status(sweep_dir / t.id)}
                   for t in trials]
        + [{**t, "status": read_status(sweep_dir / str(t["id"])), "in_grid": False} for t in earlier],
    }


def _read_manifest_trials(sweep_dir: Path) -> list[dict]:
    try:
        data = json.loads((sweep_dir / "manifest.json").read_text())
        trials = data.get("trials") if isinstance(data, dict) else None
    except (OSError, ValueError):
        return []
    return [t for t in trials or [] if isinstance(t, dict) and isinstance(t.get("id"), str)]


@contextlib.contextmanager
def sweep_lock(sweep_dir: Path):
    """Serialise the sweep-level files (manifest, tables, plots) between processes on one sweep."""
    import fcntl

    with open(sweep_dir / ".lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def refresh(cfg: ExperimentConfig, trials: list[Trial], sweep_dir: Path, plots: bool = False) -> dict:
    """Rewrite the manifest and the tables from the folders (the folders are the truth); returns
    the current grid's counts by status."""
    from .report import write_sweep_results

    try:
        with sweep_lock(sweep_dir):
            data = manifest(cfg, trials, sweep_dir)
            write_json_atomic(sweep_dir / "manifest.json", data)
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


def dry_run(cfg: ExperimentConfig, out=None) -> list[dict]:
    """Build and check every trial's model (no data load, no training) and print the trial table."""
    out = out or sys.stdout  # looked up per call, so a redirected stdout is honoured
    import keras

    from .models import count_params, output_shape
    from .runner import prepare

    from .vectorize.launch import dry_run_groups, model_shape

    trials = expand_sweep(cfg)
    rows, shapes = [], {}
    for i, trial in enumerate(trials, 1):
        try:
            _, model = prepare(trial.config, load_data=False)
        except ConfigError as exc:
            raise ConfigError(f"trial {i} ({trial.label()}, seed {trial.seed}): {exc}") from None
        rows.append({"trial": i, "id": trial.id, "values": trial.label(), "seed": trial.seed,
                     "params": count_params(model)[0], "output": str(output_shape(model))})
        shapes[trial.id] = model_shape(model)
        keras.backend.clear_session()
    groups, group_lines = dry_run_groups(cfg, trials, shapes)  # sweep.vectorize
    for r in rows:
        r["group"] = groups[r["id"]]
    width = max(len(r["values"]) for r in rows)
    print(f"{'#':>3}  {'id':10}  {'values':{width}}  {'seed':>4}  {'group':>5}  {'params':>10}  output", file=out)
    for r in rows:
        print(f"{r['trial']:>3}  {r['id']:10}  {r['values']:{width}}  {r['seed']:>4}  {r['group']:>5}  {r['params']:>10,}  "
              f"{r['output']}", file=out)
    print(f"{len(rows)} trials; every model built.", file=out)
    for line in group_lines:
        print(line, file=out)
    return rows


def _sweep_plots(cfg, trials, sweep_dir: Path) -> None:
    from .plots import plot_overlay, plot_sweep
    from .report import collect_runs, comparison_table

    try:
        table = comparison_table(collect_runs([sweep_dir]))
        keys = list(cfg.sweep.grid) + list(cfg.sweep.zip)
        numeric = [k for k in keys if all(isinstance(t.values[k], (int, float)) and not isinstance(t.values[k], bool) for t in trials)]
        if len(keys) == 1 and numeric:
            plot_sweep(table, numeric[0], sweep_dir / "sweep.png")
        runs = [(sweep_dir / t.id, f"{t.label()} s{t.seed}") for t in trials if (sweep_dir / t.id / "metrics.csv").exists()]
        if runs:
            plot_overlay(runs, sweep_dir / "val_curves.png")
    except Exception as exc:  # plots never cost the sweep's results
        print(f"expkit: could not draw the sweep plots: {exc}", file=sys.stderr)
