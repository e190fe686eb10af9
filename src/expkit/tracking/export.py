"""`expkit export tensorboard|mlflow RUNS...`: what a tracker would have recorded, for run folders
that already exist, from their config.yaml, metrics.csv and results.json."""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from ..files import read_yaml_file
from ..runfolder import RUNNING, DamagedRecord, is_run_folder, is_sweep_folder, read_manifest, read_metrics, read_record, read_status
from . import TRACKERS, check_trackers


def _folders(path: Path, *, top: bool = True) -> list[tuple[Path, dict | None, Path | None]]:
    """(run folder, its manifest trial or None, its sweep folder or None) for every run `path` stands
    for: a run folder, a sweep folder, a run-name folder (every run in it), or a folder of those."""
    if is_sweep_folder(path):
        return [(path / str(t.get("id")), t, path) for t in read_manifest(path)["trials"]
                if is_run_folder(path / str(t.get("id")))]
    if is_run_folder(path):
        return [(path, None, None)]
    children = sorted(c for c in path.iterdir() if c.is_dir() and not c.name.startswith(".")) if path.is_dir() else []
    runs = [c for c in children if is_run_folder(c)]
    if runs:
        return [(c, None, None) for c in runs]
    if top:
        found = [f for c in children for f in _folders(c, top=False)]
        if found:
            return found
    raise ConfigError("not a run folder, a sweep folder, a run-name folder or a folder of those", file=path)


def export(tracker: str, paths, log) -> int:
    """Export every run under `paths` to `tracker`; returns how many runs were exported or found there."""
    check_trackers([tracker])
    module = TRACKERS.get(tracker).load()
    done = 0
    sweeps: list[Path] = []
    for path in paths:
        for folder, trial_entry, sweep in _folders(Path(path)):
            if sweep is not None and sweep not in sweeps:
                sweeps.append(sweep)
            status = read_status(folder)
            if status == RUNNING:
                print(f"{folder}: still running; skipped (its tracker, if chosen, is recording it)", file=log)
                continue
            try:
                record = read_record(folder)
                history = read_metrics(folder)
                config = read_yaml_file(folder / "config.yaml") if (folder / "config.yaml").is_file() else {}
            except (DamagedRecord, ConfigError) as exc:
                print(f"expkit: warning: {exc}; skipped", file=log)
                continue
            trial = record.trial if record is not None and record.trial else None
            if trial is None and trial_entry is not None:
                trial = {"id": trial_entry.get("id"), "values": trial_entry.get("values") or {},
                         "seed": trial_entry.get("seed")}
            print(f"{folder}: {module.export_run(folder, config or {}, trial, history, record)}", file=log)
            done += 1
    for sweep in sweeps:
        print(f"{sweep}: {module.finish_sweep(sweep)}", file=log)
    return done
