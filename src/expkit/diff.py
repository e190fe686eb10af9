"""`expkit diff`: compare two comparison tables (the CSV `format_table` writes), row by row.

Rows are matched by their configuration: `run` and the swept-key / config columns both tables
have; `path`, `status`, `seeds` and the metrics are what may change. Either side may be a reference
file of published numbers (configs/reference/*.csv): its rows match ours by `run`, only the metrics it
gives are compared, and a published number counts as exact in the seed spread. Uses the csv module
only, so the command starts without pandas.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError
from .report import DIFFERENCE_PREFIX, METRICS, PUBLISHED, format_number, read_table_csv
from .report.provenance import compare_provenance, read_provenance, row_data

NOT_KEYS = {"path", "status", "seeds", "folds", "fit_shared"}  # fit_shared: how a trial trained, not what it is


@dataclass
class MetricDelta:
    metric: str
    old: float
    new: float
    delta: float                 # new - old; NaN when either side is NaN
    verdict: str                 # "better", "worse", "changed" (no direction) or "same"
    spread: float | None = None  # sqrt(std_old² + std_new²) when both sides repeat seeds
    beyond_spread: bool | None = None
    p_value: float | None = None  # --significance: the one-sided p-value (Welch) that new is worse


@dataclass
class DiffRow:
    label: str
    key: tuple                   # ((column, value), ...) the row was matched by
    change: str                  # "same", "changed", "added" or "removed"
    deltas: list[MetricDelta] = field(default_factory=list)
    seeds: tuple[str, str] | None = None  # (old, new) seed counts, when they differ
    data: tuple[str, str] | None = None   # (old, new) data sha256 prefixes, when the row's runs trained on other data


@dataclass
class DiffResult:
    text: str
    worse: bool                  # the --fail-on-worse gate failed: exit 1
    rows: list[DiffRow]
    reasons: list[str] = field(default_factory=list)  # why the gate failed, one line each (also in text)
    provenance: list[str] = field(default_factory=list)  # how the tables' versions, data or code differ

    @property
    def changed(self) -> bool:
        return any(r.change != "same" for r in self.rows)


def diff_tables(old_csv_path: str | Path, new_csv_path: str | Path, *, fail_on_worse: str | None = None,
                tolerance: float = 0.0, allow_removed: bool = False, significance: float | None = None) -> DiffResult:
    """Per-metric deltas between two tables. With `fail_on_worse` (a metric name) the result is a gate:
    `worse` is True when that metric got worse by more than `tolerance` on any matched row, when no row
    matched (nothing was compared), or when rows of the old table are missing from the new one (unless
    `allow_removed`). Accuracies: higher is better; losses and seconds: lower is better; a value that
    became NaN (divergence) is worse.

    With `significance` (a level, 0.05) a row whose both sides repeat seeds fails only when the new mean
    is worse by Welch's test at that level (one-sided, from each side's mean, std and seed count: what
    the tables hold, so no run folder is needed) and by more than `tolerance`; a row with one seed (or a
    published number) on a side is judged by `tolerance` alone, as without it."""
    if not math.isfinite(tolerance) or tolerance < 0:  # nan compares False, so it would pass every regression
        raise ConfigError(f"--tolerance must be a finite number >= 0, found {tolerance}")
    if significance is not None:
        if fail_on_worse is None:
            raise ConfigError("--significance is the level of --fail-on-worse's test: give --fail-on-worse METRIC")
        if not 0 < significance < 1:
            raise ConfigError(f"--significance must be a level between 0 and 1 (0.05), found {significance}")
    old_cols, old_rows = _read_table(old_csv_path)
    new_cols, new_rows = _read_table(new_csv_path)
    metrics = [m for m in METRICS if m in old_cols and m in new_cols]
    if fail_on_worse is not None:
        directed = [m for m in metrics if METRICS[m][1] != 0]
        if fail_on_worse not in directed:
            raise ConfigError(f"--fail-on-worse: unknown metric '{fail_on_worse}' "
                              f"(metrics in both tables: {', '.join(directed) or 'none'})")

    keys = [c for c in old_cols if c in new_cols and _is_key(c)]
    # a run folder is what a row is: the same label and folder in both tables is the same trial, whatever its grid
    by_path = "path" in old_cols and "path" in new_cols
    matches = _match(old_rows, new_rows, keys, by_path=by_path)
    # what the tables were made with (report/provenance.py): said first, never part of the gate
    old_prov, new_prov = read_provenance(old_csv_path, old_rows), read_provenance(new_csv_path, new_rows)
    rows: list[DiffRow] = []
    worse_rows: list[str] = []
    tested_rows: list[str] = []  # --significance: rows the test found worse, "label (difference, p)"
    for new in new_rows:
        old = matches.get(id(new))
        key = tuple((k, new[k]) for k in keys)
        if old is None:
            rows.append(DiffRow(_label(new, keys, new_rows), key, "added"))
            continue
        deltas = [_delta(m, old, new) for m in metrics]
        # a reference file gives no seed count: nothing to compare there
        both = "seeds" in old and "seeds" in new
        seeds = (old["seeds"], new["seeds"]) if both and old["seeds"] != new["seeds"] else None
        a, b = row_data(old_prov, old), row_data(new_prov, new)
        data = ("/".join(v[:12] for v in a), "/".join(v[:12] for v in b)) if a and b and a != b else None
        change = "changed" if seeds or data or any(d.verdict != "same" for d in deltas) else "same"
        row = DiffRow(_label(new, keys, new_rows), key, change, deltas, seeds, data)
        rows.append(row)
        gated = next((d for d in deltas if d.metric == fail_on_worse), None)
        if gated is not None and significance is not None and _test_worse(gated, old, new):
            if gated.p_value < significance and _worse_by(gated) > tolerance:
                tested_rows.append(f"{row.label} ({format_number(gated.metric, gated.delta, signed=True)}, "
                                   f"p={_p_text(gated.p_value)})")
        elif gated is not None and _worse_by(gated) > tolerance:
            worse_rows.append(row.label)
    matched_old = {id(o) for o in matches.values()}
    rows += [DiffRow(_label(o, keys, old_rows), tuple((k, o[k]) for k in keys), "removed")
             for o in old_rows if id(o) not in matched_old]

    provenance = compare_provenance(old_prov, new_prov)
    text = "".join(f"{line}\n" for line in provenance) + _render(rows, old_cols, new_cols)
    reasons = _gate_failures(rows, fail_on_worse, tolerance, worse_rows, allow_removed) if fail_on_worse else []
    if tested_rows:
        beyond = f" and by more than {tolerance:g}" if tolerance else ""
        reasons.insert(0, f"{fail_on_worse} got worse by Welch's test at {significance:g}{beyond} in "
                          f"{len(tested_rows)} row(s): {', '.join(tested_rows)}")
    if significance is not None and worse_rows:  # said apart: these rows had no spread to test
        reasons[len(tested_rows) > 0] += " (one seed, or a published number, on a side: judged by --tolerance)"
    text += "".join(f"worse: {reason}\n" for reason in reasons)
    return DiffResult(text, bool(reasons), rows, reasons, provenance)


def _gate_failures(rows: list[DiffRow], metric: str, tolerance: float, worse_rows: list[str],
                   allow_removed: bool) -> list[str]:
    """Why the --fail-on-worse gate fails; a gate that compared nothing, or lost rows, has not passed."""
    reasons = []
    if worse_rows:
        reasons.append(f"{metric} got worse by more than {tolerance:g} in {len(worse_rows)} row(s): {', '.join(worse_rows)}")
    if not any(r.change in ("same", "changed") for r in rows):
        reasons.append(f"no row of the new table matches a row of the old one, so {metric} was compared nowhere")
    removed = [r.label for r in rows if r.change == "removed"]
    if removed and not allow_removed:
        reasons.append(f"{len(removed)} row(s) of the old table are missing from the new one, so {metric} was not "
                       f"compared there: {', '.join(removed)} (--allow-removed accepts that)")
    return reasons


def _seeds(row: dict) -> int:
    try:
        return int(float(row.get("seeds") or 0))
    except ValueError:
        return 0


def _test_worse(d: MetricDelta, old: dict, new: dict) -> bool:
    """Set d.p_value when both sides repeat seeds (so a test applies) and say whether it did."""
    sa, sb = _std(old, d.metric), _std(new, d.metric)
    na, nb = _seeds(old), _seeds(new)
    if na < 2 or nb < 2 or math.isnan(sa) or math.isnan(sb) or math.isnan(d.delta):
        return False
    from .report.stats import welch_worse_p

    p = welch_worse_p(d.old, sa, na, d.new, sb, nb, METRICS[d.metric][1])
    if math.isnan(p):  # no spread on either side: nothing to test against
        return False
    d.p_value = p
    return True


def _p_text(p: float) -> str:
    return "<0.0001" if p < 0.0001 else f"{p:.4f}"


def _is_key(column: str) -> bool:
    if column in NOT_KEYS or column in METRICS:
        return False
    return not (column.endswith("_std") and column[:-4] in METRICS)


def _read_table(path) -> tuple[list[str], list[dict]]:
    columns, rows = read_table_csv(path)  # a reference file (configs/reference/*.csv) opens with # comments
    if "run" not in columns:
        raise ConfigError("not an expkit table: expected a CSV with a 'run' column "
                          "(`expkit table --format csv`)", file=path)
    # difference rows are derived from the others: comparing them again says nothing new
    return columns, [r for r in rows if not (r["run"] or "").startswith(DIFFERENCE_PREFIX)]


def _match(old_rows: list[dict], new_rows: list[dict], keys: list[str], *, by_path: bool = False) -> dict[int, dict]:
    """id(new row) -> old row. With `by_path`, rows of the same label and run folder pair up first (a sweep folder
    holding trials of two datasets labels two rows alike; their folders tell them apart); the rest
    pair up by key, in order of appearance."""
    out: dict[int, dict] = {}
    taken: set[int] = set()
    if by_path:
        old_by_path = {(row["run"], row["path"]): row for row in old_rows if row.get("path")}
        for row in new_rows:
            old = old_by_path.get((row["run"], row.get("path")))
            if old is not None and id(old) not in taken:
                out[id(row)] = old
                taken.add(id(old))
    waiting: dict[tuple, list[dict]] = {}
    for row in old_rows:
        if id(row) not in taken:
            waiting.setdefault(tuple(row[k] for k in keys), []).append(row)
    for row in new_rows:
        if id(row) in out:
            continue
        candidates = waiting.get(tuple(row[k] for k in keys))
        if candidates:
            out[id(row)] = candidates.pop(0)
    return out


def _number(row: dict, column: str) -> float:
    try:
        return float(row.get(column) or "nan")
    except ValueError:
        return math.nan


def _delta(metric: str, old: dict, new: dict) -> MetricDelta:
    a, b = _number(old, metric), _number(new, metric)
    direction = METRICS[metric][1]
    delta = b - a
    if math.isnan(a) and math.isnan(b):
        verdict = "same"
    elif math.isnan(a) or math.isnan(b):
        verdict = "changed" if direction == 0 else ("worse" if math.isnan(b) else "better")
    elif round(delta, 10) == 0:
        verdict = "same"
    elif direction == 0:
        verdict = "changed"
    else:
        verdict = "better" if delta * direction > 0 else "worse"
    out = MetricDelta(metric, a, b, delta, verdict)
    sa, sb = _std(old, metric), _std(new, metric)
    if not (math.isnan(sa) or math.isnan(sb) or math.isnan(delta)):
        out.spread = math.sqrt(sa ** 2 + sb ** 2)
        out.beyond_spread = round(abs(delta) - out.spread, 10) > 0
    return out


def _std(row: dict, metric: str) -> float:
    """A row's seed spread; a published number (a reference file's row) counts as exact."""
    std = _number(row, f"{metric}_std")
    return 0.0 if math.isnan(std) and row.get("status") == PUBLISHED else std


def _worse_by(d: MetricDelta) -> float:
    """How much worse the new value is (positive: worse); NaN replacing a number is infinitely worse."""
    if d.verdict != "worse":
        return 0.0
    if math.isnan(d.delta):
        return math.inf
    return round(-d.delta * METRICS[d.metric][1], 10)


def _label(row: dict, keys: list[str], rows: list[dict]) -> str:
    """The run label; the other key values too when the label alone is not unique in its table."""
    label = row["run"]
    others = [k for k in keys if k != "run"]
    if others and sum(r["run"] == label for r in rows) > 1:
        label += " (" + ", ".join(f"{k}={row[k]}" for k in others) + ")"
    return label


def _render(rows: list[DiffRow], old_cols: list[str], new_cols: list[str]) -> str:
    lines = []
    only_old = [c for c in old_cols if c not in new_cols]
    only_new = [c for c in new_cols if c not in old_cols]
    if only_old:
        lines.append(f"columns only in the old table: {', '.join(only_old)}")
    if only_new:
        lines.append(f"columns only in the new table: {', '.join(only_new)}")
    counts = {kind: sum(r.change == kind for r in rows) for kind in ("changed", "same", "added", "removed")}
    if counts["changed"] == counts["added"] == counts["removed"] == 0:
        lines.append(f"no change ({counts['same']} row{'s' if counts['same'] != 1 else ''} match)")
        return "\n".join(lines) + "\n"
    width = max([len(d.metric) for r in rows for d in r.deltas] + [0])
    for row in rows:
        if row.change == "added":
            lines.append(f"+ {row.label}  (added)")
        elif row.change == "removed":
            lines.append(f"- {row.label}  (removed)")
        elif row.change == "changed":
            lines.append(f"~ {row.label}")
            if row.seeds:
                lines.append(f"    {'seeds':<{width}}  {row.seeds[0]} -> {row.seeds[1]}")
            if row.data:
                lines.append(f"    {'data':<{width}}  sha256 {row.data[0]} -> {row.data[1]}  (trained on other data)")
            lines += [_render_delta(d, width) for d in row.deltas if d.verdict != "same"]
    lines.append(", ".join(f"{n} {kind}" for kind, n in counts.items() if n))
    return "\n".join(lines) + "\n"


def _render_delta(d: MetricDelta, width: int) -> str:
    old, new = format_number(d.metric, d.old), format_number(d.metric, d.new)
    text = f"    {d.metric:<{width}}  {old} -> {new}  {format_number(d.metric, d.delta, signed=True)}"
    if d.verdict in ("better", "worse"):
        text += f"  {d.verdict}"
    if d.spread is not None:
        where = "beyond" if d.beyond_spread else "within"
        text += f"  ({where} the seed spread {format_number(d.metric, d.spread)})"
    if d.p_value is not None:
        text += f"  p={_p_text(d.p_value)} (Welch, one-sided: worse)"
    return text
