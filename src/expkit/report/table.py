"""The comparison table: runs grouped by config, averaged over seeds, with difference rows; and a
sweep's results.csv / results.md, rebuilt from its folders."""

from __future__ import annotations

import math
import os
from pathlib import Path

from ..errors import ConfigError
from ..files import write_text_atomic
from ..runfolder import AVERAGED, is_sweep_folder, read_manifest
from .collect import collect_runs, sweep_name
from .columns import (CONFIG_PREFIX, FIT_SHARED, FOLD, FOLDS, GRID, METRICS, RUN_COLUMNS, STD_METRICS, as_float,
                      cell_text, is_compared, is_missing, short_keys)
from .formatting import DIFFERENCE_PREFIX, PUBLISHED, format_table


def comparison_table(runs_df, *, only_changed: bool = False, baseline: str | None = None):
    """Runs that differ only by seed become one row: the mean of each metric, `<metric>_std`
    (sample standard deviation, NaN for a single seed) and `seeds` (the finished runs averaged).
    The folds of a cross-validation (sweep.folds) are repeats as seeds are: one row averages every
    seed's every fold, and a `folds` column (only in tables with such runs) counts the folds it holds.

    The mean is over the group's finished runs (done or diverged; a diverged run's NaN stays
    NaN), or, when none has finished, over what the unfinished ones recorded (seeds 0). Rows keep
    the input order. Columns: `run`, the swept keys, the differing config keys (`only_changed`),
    `status`, `grid` (only when a row is a trial from an earlier grid, which never shares a row
    with the current grid's trials), `seeds`, each metric followed by its `_std`, `path` (the
    group's run folders, `;`-separated). `baseline` (a row's `run` label or a run folder's path)
    adds a `Difference (<row> - <baseline>)` row per other row.
    """
    records = runs_df.to_dict("records")
    swept, cfg_cols, compared, groups, configs, labels = _grouped(runs_df, records)
    with_grid = any(_grid(r) for r in records)
    with_shared = any(cell_text(r.get(FIT_SHARED)) for r in records)
    with_folds = any(not is_missing(r.get(FOLD)) for r in records)
    known = [c for c in configs if c is not None]
    changed = [c for c in compared if len({cell_text(k.get(c)) for k in known}) > 1] if only_changed else []
    rows = []
    for label, members in zip(labels, groups):
        row = {"run": label}
        for col in swept + changed:
            row[_unprefixed(col)] = next((m[col] for m in members if not is_missing(m.get(col))), None)
        row["status"] = _combined_status([m["status"] for m in members])
        row[GRID] = _grid(members[0])
        row[FIT_SHARED] = ", ".join(dict.fromkeys(cell_text(m.get(FIT_SHARED)) for m in members
                                                  if cell_text(m.get(FIT_SHARED))))
        finished = [m for m in members if m["status"] in AVERAGED]
        averaged = finished or members
        row["seeds"] = len(finished)
        if any(not is_missing(m.get(FOLD)) for m in members):
            row[FOLDS] = len({m[FOLD] for m in finished if not is_missing(m.get(FOLD))})
        for metric in METRICS:
            values = [as_float(m.get(metric)) for m in averaged]
            row[metric] = sum(values) / len(values)
            if metric in STD_METRICS:
                row[f"{metric}_std"] = _sample_std(values)
        row["path"] = ";".join(str(m["path"]) for m in members)
        rows.append(row)

    if baseline is not None:
        rows += _difference_rows(rows, baseline)
    order = (["run"] + swept + [_unprefixed(c) for c in changed] + ["status"] + ([GRID] if with_grid else []) + ["seeds"]
             + ([FOLDS] if with_folds else []))
    for metric in METRICS:
        order += [metric] + ([f"{metric}_std"] if metric in STD_METRICS else [])
        if metric == "fit_seconds" and with_shared:
            order.append(FIT_SHARED)  # beside the time it qualifies
    order.append("path")
    return table_frame(rows, order)


def _grouped(runs_df, records: list[dict]):
    """The swept, config and compared columns; the groups of runs that differ only by seed, each
    group's config (from a member that has one: a pending trial has none) and its row label."""
    columns = list(runs_df.columns)
    cfg_cols = [c for c in columns if c.startswith(CONFIG_PREFIX)]
    swept = [c for c in columns if c not in RUN_COLUMNS and c not in (GRID, FIT_SHARED, FOLD) and c not in METRICS
             and not c.startswith(CONFIG_PREFIX)]
    compared = [c for c in cfg_cols if is_compared(c[len(CONFIG_PREFIX):]) and c[len(CONFIG_PREFIX):] not in swept]
    groups = _group_by_config(records, cfg_cols, compared)
    configs = [next((m for m in g if _has_config(m, cfg_cols)), None) for g in groups]
    return swept, cfg_cols, compared, groups, configs, _unique_labels(groups, configs, compared)


def seed_groups(runs_df) -> dict[str, list[dict]]:
    """Row label -> the finished runs (done or diverged) `comparison_table` averages in that row, one
    record per seed: what the tests between rows (report/stats.py) test. Labels as the table's; a label
    two rows share (an earlier grid's trial) keeps the first."""
    records = runs_df.to_dict("records")
    *_, groups, _, labels = _grouped(runs_df, records)
    out: dict[str, list[dict]] = {}
    for label, members in zip(labels, groups):
        out.setdefault(label, [m for m in members if m["status"] in AVERAGED])
    return out


def table_frame(rows: list[dict], order: list[str]):
    """Rows -> a table DataFrame with these columns: metrics, spreads and seeds as floats, the rest as objects."""
    import pandas as pd

    numeric = set(METRICS) | {f"{m}_std" for m in STD_METRICS} | {"seeds"}
    return pd.DataFrame({c: pd.Series([r.get(c) for r in rows], dtype=float if c in numeric else object)
                         for c in order}, columns=order)


def add_differences(table, pairs: list[str]):
    """The table with a `Difference (A - B)` row per "A-B" in `pairs`, A and B being row labels (a label
    may itself hold '-'): A's metrics minus B's, computed as labelled (`difference_row`)."""
    records = table.to_dict("records")
    labels = [str(r["run"]) for r in records]
    rows = list(records)
    for pair in pairs:
        a, b = _split_pair(pair, labels)
        rows.append(difference_row(records[labels.index(a)], records[labels.index(b)]))
    return table_frame(rows, list(table.columns))


def _split_pair(pair: str, labels: list[str]) -> tuple[str, str]:
    splits = [(pair[:i].strip(), pair[i + 1:].strip()) for i, ch in enumerate(pair) if ch == "-"]
    found = [(a, b) for a, b in splits if a in labels and b in labels]
    if len(found) == 1:
        return found[0]
    what = "splits into row labels in more than one way" if found else "does not name two rows as A-B"
    raise ConfigError(f"--difference '{pair}' {what} (rows: {', '.join(labels)})")


def difference_row(a: dict, b: dict) -> dict:
    """`Difference (A - B)`: A's metrics minus B's; as `<metric>_std` the spread of that difference,
    sqrt(std_A² + std_B²), where a published row counts as exact (std 0) and a single run as unknown (NaN)."""
    row = {"run": f"{DIFFERENCE_PREFIX}{a['run']} - {b['run']})", "status": "", GRID: "", FIT_SHARED: "", "path": ""}
    for metric in METRICS:
        row[metric] = as_float(a.get(metric)) - as_float(b.get(metric))
        if metric in STD_METRICS:
            row[f"{metric}_std"] = math.hypot(_spread(a, metric), _spread(b, metric))
    return row


def _spread(row: dict, metric: str) -> float:
    std = as_float(row.get(f"{metric}_std"))
    return 0.0 if math.isnan(std) and row.get("status") == PUBLISHED else std


def _unprefixed(column: str) -> str:
    return column[len(CONFIG_PREFIX):] if column.startswith(CONFIG_PREFIX) else column


def _grid(record: dict) -> str:
    value = record.get(GRID)
    return "" if is_missing(value) else str(value)


def _has_config(record: dict, cfg_cols: list[str]) -> bool:
    return any(not is_missing(record.get(c)) for c in cfg_cols)


def _group_by_config(records: list[dict], cfg_cols: list[str], compared: list[str]) -> list[list[dict]]:
    """Groups of records with the same label, grid and config apart from the seed, in first-seen
    order. A record with no config (a pending trial) joins the first group with its label and grid."""
    groups: list[list[dict]] = []
    by_key: dict[tuple, int] = {}
    unkeyed_by_label: dict[tuple, int] = {}  # groups made only of records without a config
    first_by_label: dict[tuple, int] = {}
    for rec in records:
        label = (rec["run"], _grid(rec))
        if _has_config(rec, cfg_cols):
            key = (label, tuple(cell_text(rec.get(c)) for c in compared))
            if key not in by_key:
                if label in unkeyed_by_label:
                    by_key[key] = unkeyed_by_label.pop(label)
                else:
                    by_key[key] = len(groups)
                    groups.append([])
            index = by_key[key]
        elif label in first_by_label:
            index = first_by_label[label]
        else:
            index = unkeyed_by_label[label] = len(groups)
            groups.append([])
        first_by_label.setdefault(label, index)
        groups[index].append(rec)
    return groups


def _unique_labels(groups: list[list[dict]], configs: list[dict | None], compared: list[str]) -> list[str]:
    """A label shared by groups with different configs gets the differing config values appended."""
    keys = [(g[0]["run"], _grid(g[0])) for g in groups]
    out = [g[0]["run"] for g in groups]
    for key in dict.fromkeys(keys):
        same = [i for i, k in enumerate(keys) if k == key]
        if len(same) < 2:
            continue
        values = {i: (configs[i] or {}) for i in same}
        differing = [c for c in compared if len({cell_text(values[i].get(c)) for i in same}) > 1]
        short = short_keys([_unprefixed(c) for c in differing])
        for i in same:
            shown = ",".join(f"{short[_unprefixed(c)]}={cell_text(values[i].get(c))}" for c in differing)
            out[i] = f"{key[0]}[{shown}]"
    return out


def _combined_status(statuses: list[str]) -> str:
    counts: dict[str, int] = {}
    for status in statuses:
        counts[status] = counts.get(status, 0) + 1
    if len(counts) == 1:
        return statuses[0]
    return ", ".join(f"{n} {s}" for s, n in counts.items())


def _sample_std(values: list[float]) -> float:
    if len(values) < 2:
        return math.nan
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _difference_rows(rows: list[dict], baseline: str) -> list[dict]:
    base = _find_baseline(rows, baseline)
    labels = [r["run"] for r in rows]
    diffs = []

    def named(row) -> str:  # a label an earlier grid's row shares: told apart as the table tells them apart
        return f"{row['run']} ({GRID} {row[GRID]})" if labels.count(row["run"]) > 1 and row.get(GRID) else row["run"]

    for row in rows:
        if row is base:
            continue
        diff = {"run": f"{DIFFERENCE_PREFIX}{named(row)} - {named(base)})", "status": "", GRID: "", FIT_SHARED: "", "path": ""}
        diff.update({m: as_float(row[m]) - as_float(base[m]) for m in METRICS})
        diffs.append(diff)
    return diffs


def baseline_label(table, baseline: str) -> str:
    """The label of the table's row `baseline` names (a label or a run folder's path), as --baseline finds it."""
    return str(_find_baseline(table.to_dict("records"), baseline)["run"])


def _find_baseline(rows: list[dict], baseline: str) -> dict:
    by_label = [r for r in rows if r["run"] == str(baseline)]
    if len(by_label) == 1:
        return by_label[0]
    target = os.path.realpath(baseline)
    by_path = [r for r in rows if any(target in (os.path.realpath(p), os.path.realpath(Path(p).parent))
                                      for p in r["path"].split(";"))]
    if len(by_path) == 1:
        return by_path[0]
    labels = ", ".join(r["run"] for r in rows)
    what = "matches more than one row" if by_path or by_label else "names no row"
    raise ConfigError(f"--baseline '{baseline}' {what}; give a run label or a run folder path (rows: {labels})")


BEST = "best"  # a search's table: the column that marks its best row


def rank_by_objective(table, objective: str, minimize: bool):
    """A search's table: rows sorted by the objective (best first; pruned and failed rows after the
    finished ones, NaN last), the best finished row marked in a `best` column beside `run`."""
    finished = table["status"].astype(str).isin(["done"])
    key = table[objective].where(finished)
    order = key.sort_values(ascending=minimize, na_position="last", kind="stable").index
    ranked = table.loc[order].reset_index(drop=True)
    marks = [""] * len(ranked)
    if finished.any():
        marks[0] = "*"
    ranked.insert(1, BEST, marks)
    return ranked


def write_sweep_results(sweep_dir: str | Path) -> tuple[Path, Path]:
    """Rebuild `results.csv` and `results.md` of a sweep from its folders (the folders are the
    truth), each written whole; paths in them are relative to the sweep folder."""
    sweep_dir = Path(sweep_dir)
    if not is_sweep_folder(sweep_dir):
        raise ConfigError("not a sweep folder: expected manifest.json", file=sweep_dir)
    runs = collect_runs([sweep_dir])
    runs["path"] = [os.path.relpath(p, sweep_dir) for p in runs["path"]]
    # a config key the trials differ in besides the swept ones (a dataset, epochs, a backend changed
    # between two runs of the sweep) is a column: such rows are not told apart by `grid` alone
    table = comparison_table(runs, only_changed=True)
    search = read_manifest(sweep_dir).get("search")
    if isinstance(search, dict) and search.get("objective") in table.columns:
        table = rank_by_objective(table, search["objective"], search.get("direction") == "minimize")
    name = sweep_name(sweep_dir)
    csv_path = write_text_atomic(sweep_dir / "results.csv", format_table(table, "csv"))
    md_path = write_text_atomic(sweep_dir / "results.md", f"# {name}\n\n" + format_table(table, "markdown"))
    return csv_path, md_path
