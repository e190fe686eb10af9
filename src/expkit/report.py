"""Reports over run folders: collect them into a DataFrame, compare runs, format the table.

Reads only the files docs/run-folder.md describes and never imports TensorFlow. pandas is imported
inside the functions that build DataFrames, so `expkit diff` (which needs only the constants and
cell formatting here) starts without it.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable

import yaml

from .errors import ConfigError
from .files import write_text_atomic
from .runfolder import pid_alive

# Metric columns, in table order: name -> (decimals, direction). Direction +1: higher is better,
# -1: lower is better, 0: neither. decimals None: an integer when whole, else one decimal.
METRICS: dict[str, tuple[int | None, int]] = {
    "params": (0, 0),
    "best_accuracy": (4, +1),
    "best_val_accuracy": (4, +1),
    "best_loss": (4, -1),
    "best_val_loss": (4, -1),
    "test_loss": (4, -1),
    "test_accuracy": (4, +1),
    "fit_seconds": (1, -1),
    "epochs": (None, 0),
}
# A model's size is the same for every seed: no spread to report.
STD_METRICS = [m for m in METRICS if m != "params"]
RUN_COLUMNS = ["run", "path", "status", "seed"]
# Config keys that never tell two experiments apart (a seed repeat, a label, free text, the sweep
# definition that produced a trial).
NOT_COMPARED = ("name", "seed", "description", "sweep")
# Statuses whose metrics are a finished run's; a group's mean is taken over these.
FINISHED = ("done", "diverged")
DIFFERENCE_PREFIX = "Difference ("
FORMATS = ("markdown", "csv", "latex")
NOT_A_RUN = ("expected a run folder (results.json or status.json), a sweep folder (manifest.json), "
             "or a run-name folder holding run-id folders (runs/<name>/)")


# --- reading run folders --------------------------------------------------------------------------


def collect_runs(paths: Iterable[str | Path] | str | Path):
    """One row per run, from run folders, run-name folders and sweep folders, in the order given.

    A run-name folder (`runs/<name>/`) stands for its latest run (by run id) that has a
    results.json; when none has finished, its latest run. A sweep folder stands for the trials in
    its manifest, in manifest order; a trial without a folder yet is `pending`. A `running` status
    whose process is gone reads as `interrupted`. A run that has not written results.json yet gets
    its best metrics, epochs and fit seconds from metrics.csv.
    """
    import pandas as pd

    if isinstance(paths, (str, Path)):
        paths = [paths]
    rows: list[dict] = []
    for path in paths:
        rows.extend(_rows_for(Path(path)))

    swept: list[str] = []
    cfg: list[str] = []
    for row in rows:
        for key in row:
            if key in cfg or key in swept or key in RUN_COLUMNS or key in METRICS:
                continue
            (cfg if key.startswith("cfg:") else swept).append(key)
    for row in rows:  # a plain run beside a sweep shows the swept key's value from its config
        for key in swept:
            if row.get(key) is None and row.get(f"cfg:{key}") is not None:
                row[key] = row[f"cfg:{key}"]
    columns = RUN_COLUMNS + swept + list(METRICS) + cfg
    data = {}
    for col in columns:
        values = [row.get(col) for row in rows]
        # object keeps 32 an int beside a missing value (float64 would make it 32.0)
        data[col] = pd.Series(values, dtype=float) if col in METRICS else pd.Series(values, dtype=object)
    return pd.DataFrame(data, columns=columns)


def _is_run_folder(path: Path) -> bool:
    return (path / "results.json").is_file() or (path / "status.json").is_file()


def _rows_for(path: Path) -> list[dict]:
    if not path.exists():
        raise ConfigError(f"no such file or folder; {NOT_A_RUN}", file=path)
    if (path / "manifest.json").is_file():
        return _sweep_rows(path)
    if _is_run_folder(path):
        return [_run_row(path)]
    if path.is_dir():
        runs = sorted(c for c in path.iterdir() if c.is_dir() and not c.name.startswith(".") and _is_run_folder(c))
        finished = [c for c in runs if (c / "results.json").is_file()]
        if runs:
            return [_run_row((finished or runs)[-1])]
    raise ConfigError(f"not a run folder: {NOT_A_RUN}", file=path)


def _read_json(path: Path) -> dict:
    """A run folder's JSON file, which is always one mapping."""
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"malformed JSON: line {exc.lineno}: {exc.msg}", file=path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read: {exc}", file=path) from None
    if not isinstance(data, dict):
        raise ConfigError(f"expected a JSON mapping, found {type(data).__name__}", file=path)
    return data


def _sweep_rows(sweep: Path) -> list[dict]:
    manifest = _read_json(sweep / "manifest.json")
    trials = manifest.get("trials")
    if not isinstance(trials, list) or not all(isinstance(t, dict) for t in trials):
        raise ConfigError("expected a mapping with a 'trials' list of mappings", file=sweep / "manifest.json")
    name = manifest.get("name") or sweep.name
    keys = list(manifest.get("keys") or [])
    for trial in trials:
        keys += [k for k in (trial.get("values") or {}) if k not in keys]
    keys = [k for k in keys if k != "seed"]  # the seed has its own column and never labels a row
    short = _short_keys(keys)
    rows = []
    for trial in trials:
        values = trial.get("values") or {}
        label = f"{name}[{','.join(f'{short[k]}={compact(values.get(k))}' for k in keys)}]"
        folder = sweep / str(trial.get("id"))
        row = _run_row(folder, label=label) if folder.is_dir() else {"run": label, "path": str(folder), "status": "pending"}
        if row.get("seed") is None:
            row["seed"] = trial.get("seed", values.get("seed"))
        for key in keys:
            value = values.get(key)
            row[key] = value if isinstance(value, (int, float, str, bool)) or value is None else compact(value)
        rows.append(row)
    return rows


def _short_keys(keys: list[str]) -> dict[str, str]:
    """The last part of each dotted key, or the whole key where two would read the same."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}


def _run_row(folder: Path, *, label: str | None = None) -> dict:
    results = _read_json(folder / "results.json") if (folder / "results.json").is_file() else None
    config = _read_config(folder / "config.yaml")
    row: dict[str, Any] = {"run": label, "path": str(folder), "status": _status(folder, results)}
    if results is not None:
        best = results.get("best") or {}
        test = results.get("test") or {}
        row.update(seed=results.get("seed"), params=results.get("params"), test_loss=test.get("loss"),
                   test_accuracy=test.get("accuracy"), fit_seconds=results.get("fit_seconds"),
                   epochs=results.get("epochs_run"))
        row.update({f"best_{k}": best.get(k) for k in ("accuracy", "val_accuracy", "loss", "val_loss")})
    # Only values absent from results.json come from metrics.csv: an explicit NaN is the truth.
    missing = [m for m in METRICS if row.get(m) is None]
    if missing and (folder / "metrics.csv").is_file():
        for key, value in _from_metrics_csv(folder / "metrics.csv").items():
            if key in missing:
                row[key] = value
    if label is None:
        row["run"] = (results or {}).get("name") or config.get("name") or folder.parent.name
    if row.get("seed") is None:
        row["seed"] = config.get("seed")
    row.update({f"cfg:{k}": v for k, v in flatten_config(config).items()})
    return row


def _status(folder: Path, results: dict | None) -> str:
    if results is not None:
        return results.get("status") or "done"
    if not (folder / "status.json").is_file():
        return "pending"
    record = _read_json(folder / "status.json")
    status = record.get("status") or "pending"
    if status == "running" and not pid_alive(record.get("pid")):
        return "interrupted"
    return status


def _read_config(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"malformed YAML: {getattr(exc, 'problem', None) or exc}", file=path) from None
    return data if isinstance(data, dict) else {}


def _from_metrics_csv(path: Path) -> dict:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))

    def column(name):
        return [v for v in (_float(r.get(name)) for r in rows) if not math.isnan(v)]

    out: dict[str, Any] = {"epochs": len(rows)}
    for name in ("accuracy", "val_accuracy", "loss", "val_loss"):
        values = column(name)
        if values:
            out[f"best_{name}"] = max(values) if name.endswith("accuracy") else min(values)
    seconds = column("epoch_seconds")
    if seconds:
        out["fit_seconds"] = sum(seconds)
    return out


def _float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


# --- config columns -------------------------------------------------------------------------------


def flatten_config(config: dict, prefix: str = "") -> dict[str, Any]:
    """Dotted keys -> scalar values; `model.layers` becomes one architecture string, other lists compact text."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if dotted == "model.layers" and isinstance(value, list):
            out[dotted] = architecture(value)
        elif isinstance(value, dict) and value:
            out.update(flatten_config(value, dotted + "."))
        elif isinstance(value, (dict, list)):
            out[dotted] = compact(value)
        else:
            out[dotted] = value
    return out


# Layer arguments shown by a short prefix instead of name=value.
_SHORT_ARGS = {"kernel_size": "k", "strides": "s"}


def architecture(layers: list) -> str:
    """`[{reshape: [28, 28, 1]}, {conv2d: {filters: 32, kernel_size: 3}}, {flatten: {}}]` ->
    `reshape(28,28,1) conv2d(32,k3) flatten`: the main argument first, then kernel size (k),
    strides (s), activation, and the other arguments as name=value in name order."""
    parts = []
    for spec in layers:
        if not isinstance(spec, dict) or len(spec) != 1:
            parts.append(compact(spec))
            continue
        (name, args), = spec.items()
        if args is None or args == {}:
            parts.append(str(name))
            continue
        if not isinstance(args, dict):
            parts.append(f"{name}({_bare(args)})")
            continue
        args = dict(args)
        shown = []
        main = _main_arg(name)
        if main in args:
            shown.append(_bare(args.pop(main)))
        for arg, short in _SHORT_ARGS.items():
            if arg in args:
                value = args.pop(arg)
                shown.append(short + ("x".join(map(compact, value)) if isinstance(value, list) else compact(value)))
        if isinstance(args.get("activation"), str):
            shown.append(args.pop("activation"))
        shown += [f"{k}={compact(args[k])}" for k in sorted(args, key=str)]
        parts.append(f"{name}({','.join(shown)})")
    return " ".join(parts)


def _main_arg(name: str) -> str | None:
    from .layers import resolve_type

    try:
        _, kind = resolve_type(str(name))
    except ConfigError:
        return None
    return kind.main_arg if kind is not None else None


def _bare(value) -> str:
    """A main argument: a list without its brackets."""
    return ",".join(map(compact, value)) if isinstance(value, list) else compact(value)


def compact(value) -> str:
    """Short, stable text for a config value: 0.01, 1e-05, true, null, [28,28,1], {name:adam}."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    if isinstance(value, list | tuple):
        return "[" + ",".join(map(compact, value)) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{compact(v)}" for k, v in value.items()) + "}"
    return str(value)


def is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


# --- the comparison table -------------------------------------------------------------------------


def comparison_table(runs_df, *, only_changed: bool = False, baseline: str | None = None):
    """Runs that differ only by seed become one row: the mean of each metric, `<metric>_std`
    (sample standard deviation, NaN for a single seed) and `seeds` (the finished runs averaged).

    The mean is over the group's finished runs (done or diverged; a diverged run's NaN stays
    NaN), or, when none has finished, over what the unfinished ones recorded (seeds 0). Rows keep
    the input order. Columns: `run`, the swept keys, the differing config keys (`only_changed`),
    `status`, `seeds`, each metric followed by its `_std`, `path` (the group's run folders,
    `;`-separated). `baseline` (a row's `run` label or a run folder's path) adds a
    `Difference (<row> - <baseline>)` row per other row.
    """
    import pandas as pd

    columns = list(runs_df.columns)
    cfg_cols = [c for c in columns if c.startswith("cfg:")]
    swept = [c for c in columns if c not in RUN_COLUMNS and c not in METRICS and not c.startswith("cfg:")]
    compared = [c for c in cfg_cols if c[4:].split(".", 1)[0] not in NOT_COMPARED and c[4:] not in swept]
    records = runs_df.to_dict("records")
    groups = _group_by_config(records, cfg_cols, compared)
    # each group's config, from a member that has one (a pending trial has none)
    configs = [next((m for m in g if _has_config(m, cfg_cols)), None) for g in groups]
    known = [c for c in configs if c is not None]
    changed = [c for c in compared if len({_cell_key(k.get(c)) for k in known}) > 1] if only_changed else []
    labels = _unique_labels(groups, configs, compared)
    rows = []
    for label, members in zip(labels, groups):
        row = {"run": label}
        for col in swept + changed:
            row[col[4:] if col.startswith("cfg:") else col] = next(
                (m[col] for m in members if not is_missing(m.get(col))), None)
        row["status"] = _combined_status([m["status"] for m in members])
        finished = [m for m in members if m["status"] in FINISHED]
        averaged = finished or members
        row["seeds"] = len(finished)
        for metric in METRICS:
            values = [_float(m.get(metric)) for m in averaged]
            row[metric] = sum(values) / len(values)
            if metric in STD_METRICS:
                row[f"{metric}_std"] = _sample_std(values)
        row["path"] = ";".join(str(m["path"]) for m in members)
        rows.append(row)

    if baseline is not None:
        rows += _difference_rows(rows, baseline)
    order = ["run"] + swept + [c[4:] for c in changed] + ["status", "seeds"]
    for metric in METRICS:
        order += [metric] + ([f"{metric}_std"] if metric in STD_METRICS else [])
    order.append("path")
    numeric = set(METRICS) | {f"{m}_std" for m in STD_METRICS} | {"seeds"}
    return pd.DataFrame({c: pd.Series([r.get(c) for r in rows], dtype=float if c in numeric else object)
                         for c in order}, columns=order)


def _cell_key(value) -> str:
    return "" if is_missing(value) else compact(value)


def _has_config(record: dict, cfg_cols: list[str]) -> bool:
    return any(not is_missing(record.get(c)) for c in cfg_cols)


def _group_by_config(records: list[dict], cfg_cols: list[str], compared: list[str]) -> list[list[dict]]:
    """Groups of records with the same label and config apart from the seed, in first-seen order.
    A record with no config (a pending trial) joins the first group with its label."""
    groups: list[list[dict]] = []
    by_key: dict[tuple, int] = {}
    unkeyed_by_label: dict[str, int] = {}  # groups made only of records without a config
    first_by_label: dict[str, int] = {}
    for rec in records:
        label = rec["run"]
        if _has_config(rec, cfg_cols):
            key = (label, tuple(_cell_key(rec.get(c)) for c in compared))
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
    labels = [g[0]["run"] for g in groups]
    out = list(labels)
    for label in dict.fromkeys(labels):
        same = [i for i, lab in enumerate(labels) if lab == label]
        if len(same) < 2:
            continue
        values = {i: (configs[i] or {}) for i in same}
        differing = [c for c in compared if len({_cell_key(values[i].get(c)) for i in same}) > 1]
        short = _short_keys([c[4:] for c in differing])
        for i in same:
            shown = ",".join(f"{short[c[4:]]}={_cell_key(values[i].get(c))}" for c in differing)
            out[i] = f"{label}[{shown}]"
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
    diffs = []
    for row in rows:
        if row is base:
            continue
        diff = {"run": f"{DIFFERENCE_PREFIX}{row['run']} - {base['run']})", "status": "", "path": ""}
        diff.update({m: _float(row[m]) - _float(base[m]) for m in METRICS})
        diffs.append(diff)
    return diffs


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


# --- formatting -----------------------------------------------------------------------------------


def format_number(column: str, value, *, signed: bool = False) -> str:
    """A metric cell at its column's fixed precision; NaN is `nan`."""
    value = _float(value)
    if math.isnan(value):
        return "nan"
    metric = column[:-4] if column.endswith("_std") else column
    decimals = 0 if metric == "seeds" else METRICS.get(metric, (4, 0))[0]
    if decimals is None:
        decimals = 0 if value == int(value) else 1
    value = round(value, decimals) or 0.0  # no "-0.0000"
    return f"{value:{'+' if signed else ''}.{decimals}f}"


def format_table(table, fmt: str) -> str:
    """The table as Markdown, CSV or a LaTeX tabular: fixed precision, NaN as `nan`.

    Markdown and LaTeX show a mean with its spread as `0.8455 ± 0.0031` and leave out `path`;
    CSV keeps every column, `_std` apart from its mean, for machines (`expkit diff` reads it).
    Difference rows are signed (+0.0540).
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown table format '{fmt}' (known: {', '.join(FORMATS)})")
    columns = list(table.columns)
    records = table.to_dict("records")
    numeric = [c for c in columns if c in METRICS or c == "seeds" or (c.endswith("_std") and c[:-4] in METRICS)]
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(columns)
        for rec in records:
            signed = str(rec.get("run", "")).startswith(DIFFERENCE_PREFIX)
            writer.writerow(["" if signed and c == "seeds" else format_number(c, rec[c]) if c in numeric
                             else _text(rec[c]) for c in columns])
        return buf.getvalue()

    shown = [c for c in columns if c != "path" and not (c.endswith("_std") and c[:-4] in METRICS)]
    pm = " ± " if fmt == "markdown" else " $\\pm$ "
    escape = _escape_markdown if fmt == "markdown" else _escape_latex
    body = []
    for rec in records:
        signed = str(rec.get("run", "")).startswith(DIFFERENCE_PREFIX)
        cells = []
        for c in shown:
            if signed and c == "seeds":
                cells.append("")
            elif c not in numeric:
                cells.append(escape(_text(rec[c])))
            else:
                cell = format_number(c, rec[c], signed=signed)
                std = rec.get(f"{c}_std")
                if not signed and c in METRICS and not is_missing(std):
                    cell += pm + format_number(c, std)
                cells.append(cell)
        body.append(cells)
    header = [escape(c) for c in shown]
    if fmt == "markdown":
        rule = ["---:" if c in numeric else "---" for c in shown]
        return "".join("| " + " | ".join(cells) + " |\n" for cells in [header, rule, *body])
    spec = "".join("r" if c in numeric else "l" for c in shown)
    lines = [f"\\begin{{tabular}}{{{spec}}}", "\\hline", " & ".join(header) + " \\\\", "\\hline"]
    lines += [" & ".join(cells) + " \\\\" for cells in body]
    lines += ["\\hline", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


def _text(value) -> str:
    return "" if is_missing(value) else compact(value)


def _escape_markdown(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
          "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _escape_latex(text: str) -> str:
    return "".join(_LATEX.get(ch, ch) for ch in text)


# --- sweep results --------------------------------------------------------------------------------


def write_sweep_results(sweep_dir: str | Path) -> tuple[Path, Path]:
    """Rebuild `results.csv` and `results.md` of a sweep from its folders (the folders are the
    truth), each written whole; paths in them are relative to the sweep folder."""
    sweep_dir = Path(sweep_dir)
    if not (sweep_dir / "manifest.json").is_file():
        raise ConfigError("not a sweep folder: expected manifest.json", file=sweep_dir)
    runs = collect_runs([sweep_dir])
    runs["path"] = [os.path.relpath(p, sweep_dir) for p in runs["path"]]
    table = comparison_table(runs)
    name = (_read_json(sweep_dir / "manifest.json") or {}).get("name") or sweep_dir.name
    csv_path = write_text_atomic(sweep_dir / "results.csv", format_table(table, "csv"))
    md_path = write_text_atomic(sweep_dir / "results.md", f"# {name}\n\n" + format_table(table, "markdown"))
    return csv_path, md_path
