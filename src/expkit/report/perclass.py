"""Per-class test scores (results.json's `per_class`) as table columns and as an HTML block.

Columns on request only (`expkit table --per-class f1`): ten classes times three scores would bury the
table's own columns. A row that stands for several seeds shows each class's mean over its finished runs.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from ..runfolder import FINISHED, DamagedRecord, read_record, read_status

SCORES = ("precision", "recall", "f1", "support")


def parse_scores(text: str | list[str] | tuple) -> list[str]:
    """'f1' or 'precision,recall' (or a list of such) -> score names, each checked."""
    items = [text] if isinstance(text, str) else list(text)
    names = [n.strip() for item in items for n in str(item).split(",") if n.strip()]
    for name in names:
        if name not in SCORES:
            raise ConfigError(f"--per-class: unknown score '{name}' (known: {', '.join(SCORES)})")
    return list(dict.fromkeys(names)) or ["f1"]


def read_per_class(folder: str | Path) -> dict | None:
    """The run's per-class scores, or None (no record, not a classifier, an older run, a damaged record)."""
    try:
        record = read_record(folder)
    except DamagedRecord:
        return None
    per_class = record.per_class if record is not None else None
    return per_class if isinstance(per_class, dict) and per_class else None


def per_class_columns(table, scores: list[str]):
    """`table` with a `<score>[<class>]` column per score and class, before `path`; each cell the mean
    over the row's finished runs (its `path` lists them, `;`-separated). Difference and published rows
    have no runs of their own: their cells stay empty."""
    import pandas as pd

    records = table.to_dict("records")
    found: list[dict] = []
    classes: list[str] = []
    for rec in records:
        runs = [p for p in str(rec.get("path") or "").split(";") if p]
        scored = [s for s in (read_per_class(p) for p in runs if read_status(p) in FINISHED) if s is not None]
        found.append({})
        for per_class in scored:
            classes += [c for c in per_class if c not in classes]
        for c in classes:
            for score in scores:
                values = [float(s[c][score]) for s in scored if isinstance(s.get(c), dict) and score in s[c]]
                if values:
                    found[-1][f"{score}[{c}]"] = round(sum(values) / len(values), 4)
    added = [f"{score}[{c}]" for score in scores for c in classes]
    out = table.copy()
    at = list(out.columns).index("path") if "path" in out.columns else len(out.columns)
    for offset, column in enumerate(added):
        out.insert(at + offset, column, pd.Series([f.get(column) for f in found], dtype=object, index=out.index))
    return out


def per_class_html(per_class: dict, escape) -> str:
    """A small table of a run's per-class scores, for its card in the HTML report."""
    head = "<tr><th>class</th>" + "".join(f"<th>{s}</th>" for s in SCORES) + "</tr>"
    rows = "".join(
        f"<tr><td>{escape(c)}</td>" + "".join(
            f"<td>{v[s]}</td>" if s == "support" else f"<td>{float(v[s]):.4f}</td>" for s in SCORES) + "</tr>"
        for c, v in per_class.items() if isinstance(v, dict) and all(s in v for s in SCORES))
    return (f'<details><summary>Per-class test scores</summary><table class="kv"><thead>{head}</thead>'
            f"<tbody>{rows}</tbody></table></details>")
