"""Where a table's numbers come from: the code, the library versions and the data of its runs, so
`expkit diff` can say when two tables were made with different ones.

A table's own bytes do not carry this (results.csv stays as it was); it is read from
1. `<table>.provenance.json` beside the table, which `expkit table --format csv -o FILE` writes
   (copy it with the table, say into a baseline folder), or else
2. the run folders the table's `path` column names, through each run's results.json (a sweep's
   results.csv sits in its sweep folder, with paths relative to it).
Uses json and the run-folder readers only, so `expkit diff` still starts without pandas.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..files import write_json_atomic
from ..runfolder import DamagedRecord, read_record

SIDECAR_SUFFIX = ".provenance.json"


def sidecar_path(table_path: str | Path) -> Path:
    """results.csv -> results.provenance.json"""
    path = Path(table_path)
    return path.with_name(path.stem + SIDECAR_SUFFIX)


def run_provenance(folder: str | Path) -> dict | None:
    """{"versions", "git", "data_sha256"} (and "user_code": {module: sha256}) of one run folder; None
    without a readable record."""
    try:
        record = read_record(folder)
    except DamagedRecord:
        return None
    if record is None:
        return None
    code = {str(m.get("module")): m.get("sha256") for m in (record.user_code or []) if isinstance(m, dict)}
    return {"versions": dict(record.versions or {}), "git": record.git, "data_sha256": record.data_sha256,
            **({"user_code": code} if code else {}), **({"weights_files": record.weights_files}
                                                        if record.weights_files else {})}


def _folders(cell: str, base: Path) -> list[Path]:
    out = []
    for part in str(cell or "").split(";"):
        part = part.strip()
        if not part:
            continue
        candidate = base / part
        out.append(candidate if candidate.exists() else Path(part))
    return out


def provenance_of_rows(rows: list[dict], base: Path) -> list[dict]:
    """One entry per run behind the rows (a row's `path` may list several run folders, `;`-separated)."""
    out = []
    for row in rows:
        for folder in _folders(row.get("path", ""), base):
            entry = run_provenance(folder)
            if entry is not None:
                out.append({"run": row.get("run"), "path": row.get("path", ""), **entry})
    return out


def row_data(entries: list[dict], row: dict) -> list[str]:
    """The data hashes behind one table row: the entries of its label and `path` cell (an older sidecar
    without paths: every entry of its label)."""
    mine = [e for e in entries if e.get("run") == row.get("run") and e.get("path", row.get("path", "")) == row.get("path", "")]
    return _values(mine, lambda e: e.get("data_sha256"))


def write_sidecar(table_path: str | Path, rows: list[dict]) -> Path | None:
    """Write `<table>.provenance.json` for a table written to `table_path`; nothing when no row's run
    has a record."""
    table_path = Path(table_path)
    entries = provenance_of_rows(rows, Path(os.getcwd()))
    if not entries:
        return None
    return write_json_atomic(sidecar_path(table_path), {"table": table_path.name, "runs": entries})


def read_provenance(table_path: str | Path, rows: list[dict]) -> list[dict]:
    """The provenance of a table's runs: its sidecar, else its rows' run folders; [] when neither is there."""
    sidecar = sidecar_path(table_path)
    if sidecar.is_file():
        try:
            data = json.loads(sidecar.read_text())
            runs = data.get("runs") if isinstance(data, dict) else None
            if isinstance(runs, list):
                return [r for r in runs if isinstance(r, dict)]
        except (OSError, ValueError):
            pass
    return provenance_of_rows(rows, Path(table_path).parent)


def _changed_entries(old: list, new: list, field: str, short, prefix: str = "") -> list[str]:
    """`name a -> b` for each name of the mapping `field` (library versions, user modules' hashes) whose
    values differ between the two tables' records."""
    names: list = []
    for entry in old + new:
        names += [k for k in (entry.get(field) or {}) if k not in names]
    out = []
    for name in names:
        a = _values(old, lambda e: (e.get(field) or {}).get(name))
        b = _values(new, lambda e: (e.get(field) or {}).get(name))
        if a and b and a != b:
            out.append(f"{name} {prefix}{_shown(short(a))} -> {_shown(short(b))}")
    return out


def _values(entries: list[dict], get) -> list[str]:
    seen = []
    for entry in entries:
        value = get(entry)
        if value is not None and value not in seen:
            seen.append(value)
    return sorted(seen)


def _shown(values: list[str]) -> str:
    return "/".join(values)


def compare_provenance(old: list[dict], new: list[dict]) -> list[str]:
    """One line per way the two tables' runs differ: library versions, data, code. Only what both
    tables record is compared; nothing is said about what one of them lacks."""
    lines = []
    changed = _changed_entries(old, new, "versions", lambda values: values)
    if changed:
        lines.append(f"the tables come from different versions: {'; '.join(changed)}")
    a = _values(old, lambda e: e.get("data_sha256"))
    b = _values(new, lambda e: e.get("data_sha256"))
    if a and b and a != b:
        lines.append(f"the tables come from different data: sha256 {_shown([v[:12] for v in a])} -> "
                     f"{_shown([v[:12] for v in b])}")
    # the user's own modules (model.factory, "module:attribute" names), by file hash
    code = _changed_entries(old, new, "user_code", lambda values: [v[:12] for v in values], "sha256 ")
    if code:
        lines.append(f"the tables come from different user code: {'; '.join(code)}")
    weights = _changed_entries(old, new, "weights_files", lambda values: [v[:12] for v in values], "sha256 ")
    if weights:
        lines.append(f"the tables come from different pretrained weights: {'; '.join(weights)}")
    a = _values(old, lambda e: _commit(e.get("git")))
    b = _values(new, lambda e: _commit(e.get("git")))
    if a and b and a != b:
        lines.append(f"the tables come from different code: git {_shown(a)} -> {_shown(b)}")
    return lines


def _commit(git) -> str | None:
    if not isinstance(git, dict) or not git.get("commit"):
        return None
    return str(git["commit"])[:10] + ("+uncommitted" if git.get("dirty") else "")
