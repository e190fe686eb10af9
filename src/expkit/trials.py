"""Sweeps: expanding a sweep block into trials (pure), and running them resumably.

Proposing trials (`expand_sweep`), recording them (the manifest and each trial's run folder) and
running them (`run_sweep`) are separate. A trial's id is a hash of its resolved config, so the same
trial is recognised on every re-run: done trials are skipped, failed and interrupted ones retried.
"""

from __future__ import annotations

import gc
import hashlib
import itertools
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from .config import ExperimentConfig, set_path, validate
from .errors import ConfigError
from .files import read_json, write_json_atomic
from .runfolder import RunFolder, pid_alive, read_status

FINISHED = ("done", "diverged")


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
    """Short, stable hash of a resolved config (key order does not matter)."""
    canonical = json.dumps(resolved, sort_keys=True, separators=(",", ":"), default=str)
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
    return trials


def _label(values: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items())


def manifest(cfg: ExperimentConfig, trials: list[Trial], sweep_dir: Path) -> dict:
    keys = list(cfg.sweep.grid) + list(cfg.sweep.zip)
    return {
        "name": cfg.name,
        "keys": keys,
        "seeds": cfg.sweep.seeds,
        "trials": [{"id": t.id, "values": t.values, "seed": t.seed,
                    "status": read_status(sweep_dir / t.id) or "pending"} for t in trials],
    }


def dry_run(cfg: ExperimentConfig, out=None) -> list[dict]:
    """Build every trial's model (no data load, no training) and print the trial table."""
    out = out or sys.stdout  # looked up per call, so a redirected stdout is honoured
    import keras

    from .runner import prepare
    from .models import count_params, output_shape

    trials = expand_sweep(cfg)
    rows = []
    for i, trial in enumerate(trials, 1):
        try:
            _, model = prepare(trial.config, load_data=False)
        except ConfigError as exc:
            raise ConfigError(f"trial {i} ({trial.label()}, seed {trial.seed}): {exc}") from None
        rows.append({"trial": i, "id": trial.id, "values": trial.label(), "seed": trial.seed,
                     "params": count_params(model)[0], "output": str(output_shape(model))})
        keras.backend.clear_session()
    width = max(len(r["values"]) for r in rows)
    print(f"{'#':>3}  {'id':10}  {'values':{width}}  {'seed':>4}  {'params':>10}  output", file=out)
    for r in rows:
        print(f"{r['trial']:>3}  {r['id']:10}  {r['values']:{width}}  {r['seed']:>4}  {r['params']:>10,}  {r['output']}", file=out)
    print(f"{len(rows)} trials; every model built.", file=out)
    return rows


def _set_aside(path: Path) -> Path:
    """Move an earlier, unfinished attempt to .attempts/<id>-<n>: nothing is deleted."""
    attempts = path.parent / ".attempts"
    attempts.mkdir(exist_ok=True)
    n = 1
    while (attempts / f"{path.name}-{n}").exists():
        n += 1
    target = attempts / f"{path.name}-{n}"
    shutil.move(str(path), str(target))
    return target


def run_sweep(cfg: ExperimentConfig, *, runs_dir="runs", device="auto", fail_fast=False, log=None) -> tuple[Path, dict]:
    """Run every trial not yet finished; returns (sweep folder, counts by status)."""
    log = log or sys.stderr
    import keras

    from .data import load_dataset
    from .runner import run_experiment

    trials = expand_sweep(cfg)
    sweep_dir = Path(runs_dir) / cfg.name
    sweep_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(sweep_dir / "manifest.json", manifest(cfg, trials, sweep_dir))
    datasets: dict[str, object] = {}
    for i, trial in enumerate(trials, 1):
        path = sweep_dir / trial.id
        status = read_status(path)
        head = f"[{i}/{len(trials)}] {trial.label()} seed={trial.seed} ({trial.id})"
        if status in FINISHED:
            print(f"{head}: {status}, skipped", file=log)
            continue
        if status == "running" and pid_alive(read_json(path / "status.json").get("pid")):
            print(f"{head}: running in another process, skipped", file=log)
            continue
        if path.exists():
            moved = _set_aside(path)
            print(f"{head}: earlier attempt ({status}) kept in {moved}", file=log)
        print(f"{head}: training", file=log)
        data_key = json.dumps([trial.config.data.model_dump(mode="json"), trial.seed, trial.config.train.loss])
        failed = False
        try:
            if data_key not in datasets:
                datasets.clear()  # one dataset in memory at a time
                datasets[data_key] = load_dataset(trial.config.data, trial.seed, trial.config.train.loss)
            run_experiment(trial.config, device=device, folder=RunFolder.create_at(path),
                           trial={"id": trial.id, "values": trial.values, "seed": trial.seed},
                           dataset=datasets[data_key])
        except KeyboardInterrupt:
            _refresh(cfg, trials, sweep_dir)
            raise
        except Exception as exc:  # one failing trial does not stop the others
            failed = True
            if not (path / "results.json").exists():
                _record_early_failure(path, trial, exc)
            print(f"{head}: failed: {str(exc).splitlines()[0]}", file=log)
        finally:
            keras.backend.clear_session()
            gc.collect()
        _refresh(cfg, trials, sweep_dir)
        if failed and fail_fast:
            print("--fail-fast: stopping after the first failed trial", file=log)
            break
    counts = _refresh(cfg, trials, sweep_dir, plots=True)
    return sweep_dir, counts


def _record_early_failure(path: Path, trial: Trial, exc: Exception) -> None:
    """A trial that failed before its folder was written still gets a record."""
    folder = RunFolder.create_at(path) if not path.exists() else RunFolder(path)
    folder.write_config(trial.config.to_dict())
    folder.write_results({"name": trial.config.name, "run_id": trial.id, "status": "failed", "error": str(exc),
                          "seed": trial.seed, "trial": {"id": trial.id, "values": trial.values, "seed": trial.seed}})
    folder.set_status("failed")


def _refresh(cfg, trials, sweep_dir: Path, plots: bool = False) -> dict:
    """Rewrite the manifest and the tables from the folders (the folders are the truth)."""
    from .report import write_sweep_results

    data = manifest(cfg, trials, sweep_dir)
    write_json_atomic(sweep_dir / "manifest.json", data)
    counts: dict[str, int] = {}
    for t in data["trials"]:
        counts[t["status"]] = counts.get(t["status"], 0) + 1
    write_sweep_results(sweep_dir)
    if plots:
        _sweep_plots(cfg, trials, sweep_dir)
    return counts


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
