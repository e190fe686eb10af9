"""Reading run folders into rows: run folders, run-name folders, sweep folders and folders of those.

Run folders are read only through the run-folder contract (`expkit.runfolder`: `read_status`,
`read_record`, `read_metrics`); a sweep's manifest.json, which the sweep writes, is read here and
only its `name`, `keys` and `trials` (`id`, `values`, `seed`, `in_grid`) are used. A record that
cannot be read never stops a table: its row says `damaged`, and one line on stderr names the file.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any, Iterable

from ..errors import ConfigError
from ..files import read_yaml_file
from ..runfolder import (DAMAGED, PENDING, DamagedRecord, RunRecord, is_run_folder, is_sweep_folder, read_manifest, read_metrics, read_record,
                         read_status)
from .columns import (CONFIG_PREFIX, EARLIER, FIT_SHARED, FOLD, GRID, METRICS, RUN_COLUMNS, compact, flatten_config,
                      short_keys)

NOT_A_RUN = ("expected a run folder (results.json or status.json), a sweep folder (manifest.json), "
             "a run-name folder holding run-id folders (runs/<name>/), or a folder of run-name and "
             "sweep folders (runs/)")


def collect_runs(paths: Iterable[str | Path] | str | Path, notes: list | None = None):
    """One row per run, from run folders, run-name folders and sweep folders, in the order given.

    A run-name folder (`runs/<name>/`) stands for its latest run (by run id) that has a
    results.json; when none has, its latest run. A sweep folder stands for the trials in its
    manifest, in manifest order; a trial without a folder yet is `pending`, and one kept from an
    earlier version of the sweep's grid says `earlier` in a `grid` column (present only then). A
    folder of run-name and sweep folders (`runs/`) stands for each of them, by name. The status is
    the run folder's (`read_status`: a `running` run whose process is gone is `interrupted`). A run
    that has not written results.json yet gets its best metrics, epochs and fit seconds from
    metrics.csv. An unreadable record gives a `damaged` row without metrics and a warning.
    `notes`: receives a line for each run-name folder that holds runs its latest run stands for.
    """
    import pandas as pd

    if isinstance(paths, (str, Path)):
        paths = [paths]
    rows: list[dict] = []
    for path in paths:
        rows.extend(_rows_for(Path(path), notes=notes))

    run_columns = list(RUN_COLUMNS)
    if any(row.get(GRID) for row in rows):
        run_columns.insert(run_columns.index("status") + 1, GRID)
    if any(row.get(FIT_SHARED) for row in rows):
        run_columns.append(FIT_SHARED)
    if any(row.get(FOLD) is not None for row in rows):  # sweep.folds: the fold beside the seed
        run_columns.insert(run_columns.index("seed") + 1, FOLD)
    swept: list[str] = []
    cfg: list[str] = []
    for row in rows:
        for key in row:
            if key in cfg or key in swept or key in run_columns or key in (GRID, FIT_SHARED, FOLD) or key in METRICS:
                continue
            (cfg if key.startswith(CONFIG_PREFIX) else swept).append(key)
    for row in rows:  # a plain run beside a sweep shows the swept key's value from its config
        for key in swept:
            if row.get(key) is None and row.get(f"{CONFIG_PREFIX}{key}") is not None:
                row[key] = row[f"{CONFIG_PREFIX}{key}"]
    columns = run_columns + swept + list(METRICS) + cfg
    data = {}
    for col in columns:
        values = [row.get(col, "" if col in (GRID, FIT_SHARED) else None) for row in rows]
        # object keeps 32 an int beside a missing value (float64 would make it 32.0)
        data[col] = pd.Series(values, dtype=float) if col in METRICS else pd.Series(values, dtype=object)
    return pd.DataFrame(data, columns=columns)


# --- which folders a path stands for ----------------------------------------------------------------


def _rows_for(path: Path, *, top: bool = True, notes: list | None = None) -> list[dict]:
    if not path.exists():
        raise ConfigError(f"no such file or folder; {NOT_A_RUN}", file=path)
    kind = _kind(path)
    if kind == "sweep":
        return _sweep_rows(path)
    if kind == "run":
        return [_run_row(path)]
    if kind == "run-name":
        latest = _latest_run(path)
        runs = [c for c in _subfolders(path) if is_run_folder(c)]
        if notes is not None and top and len(runs) > 1:  # `runs/` itself: one row per name, as documented
            notes.append(f"{path}: the latest of its {len(runs)} runs ({latest.name}); name a run folder "
                         f"({path / runs[0].name}) or several to compare others")
        return [_run_row(latest)]
    if top and path.is_dir():
        children = [c for c in _subfolders(path) if _kind(c) is not None]
        if children:
            return [row for child in children for row in _rows_for(child, top=False, notes=notes)]
    raise ConfigError(f"not a run folder: {NOT_A_RUN}", file=path)


def _kind(path: Path) -> str | None:
    """`sweep`, `run`, `run-name` (a folder holding run folders) or None."""
    if is_sweep_folder(path):
        return "sweep"
    if is_run_folder(path):
        return "run"
    if path.is_dir() and any(is_run_folder(c) for c in _subfolders(path)):
        return "run-name"
    return None


def _subfolders(path: Path) -> list[Path]:
    """Visible subfolders by name (dot folders hold a sweep's claims and earlier attempts)."""
    return sorted(c for c in path.iterdir() if c.is_dir() and not c.name.startswith("."))


def _latest_run(name_dir: Path) -> Path:
    """The latest run folder that wrote a record, else the latest run folder."""
    runs = [c for c in _subfolders(name_dir) if is_run_folder(c)]
    for run in reversed(runs):
        try:
            if read_record(run) is not None:
                return run
        except ConfigError:
            return run  # the latest record, though unreadable: its row says so
    return runs[-1]


# --- sweeps -----------------------------------------------------------------------------------------


def sweep_name(sweep: Path, manifest: dict | None = None) -> str:
    manifest = read_manifest(sweep) if manifest is None else manifest
    return str(manifest.get("name") or sweep.name)


def _sweep_rows(sweep: Path) -> list[dict]:
    manifest = read_manifest(sweep)
    trials = manifest["trials"]
    name = sweep_name(sweep, manifest)
    earlier = [t.get("in_grid") is False for t in trials]
    # The grid's keys label every trial; a trial from an earlier grid also shows the keys it had
    # that the grid no longer has.
    keys = list(manifest.get("keys") or [])
    for trial, old in zip(trials, earlier):
        if not old:
            keys += [k for k in _values(trial) if k not in keys]
    keys = [k for k in keys if k != "seed"]  # the seed has its own column and never labels a row
    all_keys = list(keys)
    for trial, old in zip(trials, earlier):
        if old:
            all_keys += [k for k in _values(trial) if k not in all_keys and k != "seed"]
    short = short_keys(all_keys)
    rows = []
    for trial, old in zip(trials, earlier):
        values = _values(trial)
        shown = keys + [k for k in all_keys if old and k not in keys and k in values]
        # a sweep over seeds alone varies nothing else: its trials are the config's own runs, labelled by name
        label = f"{name}[{','.join(f'{short[k]}={compact(values.get(k))}' for k in shown)}]" if shown else name
        folder = sweep / str(trial.get("id"))
        row = _run_row(folder, label=label) if folder.is_dir() else {"run": label, "path": str(folder),
                                                                      "status": PENDING}
        if old:
            row[GRID] = EARLIER
        if row.get("seed") is None:
            row["seed"] = trial.get("seed", values.get("seed"))
        if row.get(FOLD) is None and trial.get("fold") is not None:
            row[FOLD] = trial["fold"]
        for key in all_keys:
            value = values.get(key)
            row[key] = value if isinstance(value, (int, float, str, bool)) or value is None else compact(value)
        rows.append(row)
    return rows


def _values(trial: dict) -> dict:
    values = trial.get("values")
    return values if isinstance(values, dict) else {}


# --- one run folder ---------------------------------------------------------------------------------


def _run_row(folder: Path, *, label: str | None = None) -> dict:
    row: dict[str, Any] = {"run": label, "path": str(folder), "status": read_status(folder)}
    config: dict = {}
    record = None
    problems: list[ConfigError] = []
    try:
        config = _read_config(folder / "config.yaml")
    except ConfigError as exc:
        problems.append(exc)
    try:
        record = read_record(folder)
        if row["status"] == DAMAGED:  # read_status saw what read_record did not complain about
            raise _damaged_status(folder, record)
        measured = _measured(folder, record)
    except DamagedRecord as exc:
        problems.append(exc)
    if problems:
        for exc in problems:
            warn(f"{exc}; its row says '{DAMAGED}'")
        row["status"] = DAMAGED  # and no metrics: a damaged folder's numbers are not trusted
    else:
        row.update(measured)
    if label is None:
        row["run"] = (record.name if record is not None else "") or config.get("name") or folder.parent.name
    if row.get("seed") is None:
        row["seed"] = record.seed if record is not None and record.seed is not None else config.get("seed")
    row.update({f"{CONFIG_PREFIX}{k}": v for k, v in flatten_config(config).items()})
    if row.get(f"{CONFIG_PREFIX}data.fold.index") is not None:
        row[FOLD] = row[f"{CONFIG_PREFIX}data.fold.index"]
    return row


def _damaged_status(folder: Path, record: RunRecord | None) -> DamagedRecord:
    if record is not None:
        return DamagedRecord(f"damaged record: status {record.status!r} is not one a run writes",
                           file=folder / "results.json")
    return DamagedRecord("damaged record: no readable status", file=folder / "status.json")


def _measured(folder: Path, record: RunRecord | None) -> dict:
    """The metric columns: from the record; from metrics.csv where the record summarises no epoch
    (none written yet, or a run that failed before training). Raises DamagedRecord."""
    out: dict[str, Any] = {}
    if record is not None:
        test = record.test or {}
        out.update(seed=record.seed, params=record.params, test_loss=test.get("loss"),
                   test_accuracy=test.get("accuracy"), fit_seconds=record.fit_seconds, epochs=record.epochs_run)
        shared = (record.extra.get("vectorized") or {}).get("trials")
        if isinstance(shared, int) and shared > 1:
            out[FIT_SHARED] = f"{shared} trials"
        out.update({f"best_{k}": v for k, v in record.best.items() if f"best_{k}" in METRICS})
    if record is None or record.epochs_run == 0:
        out.update(_from_metrics(read_metrics(folder)))
    return out


def _from_metrics(history: list[dict]) -> dict:
    if not history:
        return {}
    summary = RunRecord(name="", run_id="")
    summary.summarise(history)  # the record's own definition of best (max accuracy, min loss)
    out: dict[str, Any] = {f"best_{k}": v for k, v in summary.best.items() if f"best_{k}" in METRICS}
    out["epochs"] = summary.epochs_run
    seconds = [s for s in (row.get("epoch_seconds", math.nan) for row in history) if math.isfinite(s)]
    if seconds:
        out["fit_seconds"] = sum(seconds)
    return out


# Parsed config.yaml files by (path, modification time, size): a sweep's process rebuilds its tables after
# every batch of trials that end and twice at its end, and parsing a run's config.yaml (the checked YAML
# loader) took 14 ms each, most of the tables' time over ten trials.
_CONFIGS: dict[tuple, dict] = {}
_CONFIGS_KEPT = 4096


def _read_config(path: Path) -> dict:
    import copy
    import stat

    try:
        st = path.stat()
    except OSError:
        return {}
    if not stat.S_ISREG(st.st_mode):
        return {}
    key = (str(path.absolute()), st.st_mtime_ns, st.st_size)
    if key not in _CONFIGS:
        data = read_yaml_file(path)
        if len(_CONFIGS) >= _CONFIGS_KEPT:
            _CONFIGS.clear()
        _CONFIGS[key] = data if isinstance(data, dict) else {}
    return copy.deepcopy(_CONFIGS[key])


def warn(message: str) -> None:
    print("expkit: warning: " + " ".join(str(message).split()), file=sys.stderr)
