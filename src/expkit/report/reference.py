"""Published numbers beside ours: a report's tables as CSV files (configs/reference/), shown as rows of a
comparison table (`expkit table --reference FILE`) and read by `expkit diff` as either side.

A reference file is a table CSV like the one `expkit table --format csv` writes, holding only what the
report gives: `run` (the config name whose runs it stands beside), optionally `status` (`published`),
and any of the metric columns (accuracies as fractions); an empty cell is a number the report does not
give. Comment lines (`#`) before the header say where the numbers come from. A row labelled
`Difference (...)` is the report's own difference row, kept as printed. pandas is imported only when a
table is built.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from ..errors import ConfigError
from ..registry import did_you_mean
from .columns import GRID, METRICS, STD_METRICS, as_float
from .formatting import DIFFERENCE_PREFIX, PUBLISHED, PUBLISHED_SUFFIX

COLUMNS = ["run", "status", *METRICS]


def read_table_csv(path: str | Path) -> tuple[list[str], list[dict]]:
    """(columns, rows) of a table CSV or a reference file; `#` lines before the header are skipped."""
    path = Path(path)
    try:
        with open(path, newline="") as fh:
            lines = iter(fh)
            head = next((line for line in lines if not line.startswith("#")), "")
            reader = csv.DictReader([head, *lines])
            rows = list(reader)
            return list(reader.fieldnames or []), rows
    except FileNotFoundError:
        raise ConfigError("file not found; expected a table CSV or a reference file", file=path) from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"cannot read as CSV: {exc}", file=path) from None


def load_reference(path: str | Path) -> list[dict]:
    """The rows of a reference file, checked: `run` labels once each, known columns only, numbers or
    empty cells (NaN: not reported), status `published` or empty. Each row's `path` is the file."""
    path = Path(path)
    columns, raw = read_table_csv(path)
    if "run" not in columns:
        raise ConfigError("not a reference file: expected a CSV with a 'run' column and metric columns "
                          f"({', '.join(METRICS)})", file=path)
    known = COLUMNS + [f"{m}_std" for m in STD_METRICS] + ["seeds", "path"]
    for column in columns:
        if column not in known:
            raise ConfigError(f"unknown column '{column}'{did_you_mean(column, known)} (known: {', '.join(known)})",
                              file=path)
    if not raw:
        raise ConfigError("no rows: a reference file holds at least one published row", file=path)
    rows, seen = [], set()
    for line, record in enumerate(raw, start=2):
        where = f"row {line - 1} ('{record.get('run') or ''}')"
        label = (record.get("run") or "").strip()
        if not label:
            raise ConfigError(f"{where}: empty 'run'; give the config name the numbers stand beside", file=path)
        if label in seen:
            raise ConfigError(f"{where}: run '{label}' is listed twice", file=path)
        seen.add(label)
        status = (record.get("status") or PUBLISHED).strip()
        if status != PUBLISHED:
            raise ConfigError(f"{where}: status must be '{PUBLISHED}' (or empty), found '{status}'", file=path)
        row = {"run": label, "status": PUBLISHED, "path": str(path)}
        for column in columns:
            if column in ("run", "status", "path"):
                continue
            text = (record.get(column) or "").strip()
            value = as_float(text) if text else math.nan
            if text and math.isnan(value) and text.lower() != "nan":
                raise ConfigError(f"{where}: {column}: expected a number or an empty cell, found '{text}'", file=path)
            row[column] = value
        rows.append(row)
    return rows


def stands_beside(label: str, run: str) -> bool:
    """A published row `run` stands beside our row `run`, and beside a sweep's trials `run[...]`."""
    return label == run or (label.startswith(run + "[") and label.endswith("]"))


def with_reference(table, path: str | Path, *, differences: bool = False, every: bool = False,
                   left_out: list | None = None):
    """The table with the reference file's rows added, labelled `<run> (published)`, status `published`:
    each after the last of our rows it stands beside (`stands_beside`). A published row beside none of
    ours is left out (its label appended to `left_out`), unless `every`: then the others come before the
    first difference row. The file's own difference rows come after the table's, when any of its rows
    stands in the table (or `every`). `differences` adds `Difference (<ours> - <run>
    (published))` for each of our rows that has a published row (`difference_row`: our spread, the
    published number counting as exact); a row without one gets none."""
    from .table import difference_row, table_frame

    published = load_reference(path)
    records = table.to_dict("records")
    is_ours = [not _is_difference(r) and r.get("status") != PUBLISHED for r in records]
    shown = [{**{c: None for c in table.columns}, **p, "run": p["run"] + PUBLISHED_SUFFIX, "seeds": math.nan,
              GRID: ""} for p in published]
    after: dict[int, list[dict]] = {}  # index in records -> published rows that follow it
    unplaced, printed_differences, pairs = [], [], []
    for p, row in zip(published, shown):
        if p["run"].startswith(DIFFERENCE_PREFIX):
            printed_differences.append(row)
            continue
        matches = [i for i, r in enumerate(records) if is_ours[i] and stands_beside(str(r["run"]), p["run"])]
        if not matches:
            unplaced.append(row)
            continue
        last = matches[-1]
        while last + 1 < len(records) and records[last + 1].get("status") == PUBLISHED \
                and not _is_difference(records[last + 1]):
            last += 1  # after the published rows an earlier --reference put there
        after.setdefault(last, []).append(row)
        pairs += [(i, row) for i in matches]
    if not every:  # a row nobody asked for: a cnn1/cnn2 table has no place for the baseline's published row
        if left_out is not None:
            left_out += [r["run"] for r in unplaced]
        unplaced = []
        if not after:
            if left_out is not None:
                left_out += [r["run"] for r in printed_differences]
            printed_differences = []
    first_difference = next((i for i, r in enumerate(records) if _is_difference(r)), len(records))
    rows = []
    for i, r in enumerate(records):
        if i == first_difference:
            rows += unplaced
        rows += [r, *after.get(i, [])]
    if first_difference == len(records):
        rows += unplaced
    rows += printed_differences
    if differences:
        rows += [difference_row(records[i], row) for i, row in sorted(pairs, key=lambda pair: pair[0])]
    return table_frame(rows, list(table.columns))


def _is_difference(row: dict) -> bool:
    return str(row.get("run", "")).startswith(DIFFERENCE_PREFIX)
