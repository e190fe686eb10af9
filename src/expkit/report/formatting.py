"""A comparison table as text: Markdown, CSV or a LaTeX tabular, at each metric's fixed precision.

Works on anything with `columns` and `to_dict("records")` (a DataFrame), and imports no pandas:
`expkit diff` uses `format_number` and these constants without it.
"""

from __future__ import annotations

import csv
import io
import math

from ..errors import ConfigError
from .columns import METRICS, as_float, cell_text, is_missing

DIFFERENCE_PREFIX = "Difference ("
# A report's own number (`expkit table --reference`): its status, and what its label gets appended.
PUBLISHED = "published"
PUBLISHED_SUFFIX = " (published)"
FORMATS = ("markdown", "csv", "latex")


def format_number(column: str, value, *, signed: bool = False) -> str:
    """A metric cell at its column's fixed precision; NaN is `nan`."""
    value = as_float(value)
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
    Difference rows are signed (+0.0540); one with a spread shows how many spreads it is (+0.0540 (2.1σ)).
    A published row, and a difference with one, leaves a number the report does not give empty, not `nan`.
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
            signed, blank = _is_difference(rec), _blank_if_missing(rec)
            writer.writerow(["" if (signed or blank) and c == "seeds" or blank and is_missing(rec[c])
                             else format_number(c, rec[c]) if c in numeric else cell_text(rec[c]) for c in columns])
        return buf.getvalue()

    shown = [c for c in columns if c != "path" and not (c.endswith("_std") and c[:-4] in METRICS)]
    pm = " ± " if fmt == "markdown" else " $\\pm$ "
    sigma = "σ" if fmt == "markdown" else "$\\sigma$"
    escape = escape_markdown if fmt == "markdown" else escape_latex
    body = []
    for rec in records:
        signed, blank = _is_difference(rec), _blank_if_missing(rec)
        cells = []
        for c in shown:
            if (signed or blank) and c == "seeds" or blank and c in numeric and is_missing(rec[c]):
                cells.append("")
            elif c not in numeric:
                cells.append(escape(cell_text(rec[c])))
            else:
                cell = format_number(c, rec[c], signed=signed)
                std = rec.get(f"{c}_std")
                if not signed and c in METRICS and not is_missing(std):
                    cell += pm + format_number(c, std)
                elif signed and c in METRICS and not is_missing(std) and std > 0 and not is_missing(rec[c]):
                    cell += f" ({abs(as_float(rec[c])) / std:.1f}{sigma})"
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


def _is_difference(record: dict) -> bool:
    return str(record.get("run", "")).startswith(DIFFERENCE_PREFIX)


def _blank_if_missing(record: dict) -> bool:
    """A published row, or a difference involving one: a missing number was not reported."""
    return record.get("status") == PUBLISHED or (_is_difference(record) and PUBLISHED_SUFFIX in str(record["run"]))


def escape_markdown(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
          "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def escape_latex(text: str) -> str:
    return "".join(_LATEX.get(ch, ch) for ch in text)
