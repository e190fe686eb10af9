"""`expkit report`: one self-contained HTML page over run folders and sweeps.

The page holds the comparison table (click a header to sort by it), the sweeps' plots, a bar chart
of the runs, each run's curves, its config differences against a baseline run, and what it was run
with (code, data, libraries). Nothing outside the file is needed to read it: the plots are PNGs
inside the page (base64), the styles and the few lines of script that sort the table are inline,
and no server, network, font or script is fetched. The layout narrows to one column on a phone.

Reads run folders only (through collect_runs and the run-folder readers); plots a run or sweep has
not drawn are drawn here, into a temporary folder.
"""

from __future__ import annotations

import base64
import html
import math
import os
import struct
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from ..errors import ConfigError
from ..files import write_text_atomic
from ..runfolder import DamagedRecord, is_sweep_folder, manifest_trials, read_record
from .collect import collect_runs, sweep_name
from .columns import CONFIG_PREFIX, METRICS, STD_METRICS, cell_text, is_compared, is_missing
from .formatting import format_number
from .table import comparison_table

STYLE = """
:root { --fg: #1d1f23; --muted: #59606d; --line: #d8dce2; --head: #f2f4f7; --accent: #1f4f9c;
        --bad: #a12a1f; --good: #1d6b36; }
* { box-sizing: border-box; }
body { margin: 0 auto; max-width: 1240px; padding: 1rem 1.2rem 3rem; color: var(--fg); background: #fff;
       font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; }
h1 { font-size: 1.45rem; margin: .3rem 0; }
h2 { font-size: 1.15rem; margin: 2.2rem 0 .8rem; padding-bottom: .25rem; border-bottom: 1px solid var(--line); }
h3 { font-size: 1rem; margin: 0 0 .3rem; overflow-wrap: anywhere; }
p, li { overflow-wrap: anywhere; }
.meta { color: var(--muted); font-size: .88rem; }
.scroll { overflow-x: auto; border: 1px solid var(--line); border-radius: 6px; }
table { border-collapse: collapse; width: 100%; font-size: .86rem; }
th, td { padding: .34rem .55rem; border-bottom: 1px solid var(--line); text-align: left; white-space: nowrap;
         vertical-align: top; }
tbody tr:last-child td { border-bottom: 0; }
.num { text-align: right; font-variant-numeric: tabular-nums; }
table.sortable thead th { background: var(--head); cursor: pointer; user-select: none; }
table.sortable thead th:focus { outline: 2px solid var(--accent); outline-offset: -2px; }
th[aria-sort="ascending"]::after { content: " \\25B2"; color: var(--accent); }
th[aria-sort="descending"]::after { content: " \\25BC"; color: var(--accent); }
img { display: block; max-width: 100%; height: auto; }
figure { margin: 0 0 1rem; }
figcaption { color: var(--muted); font-size: .85rem; margin-top: .2rem; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(min(100%, 540px), 1fr)); gap: 1rem; }
.run { border: 1px solid var(--line); border-radius: 6px; padding: .8rem; min-width: 0; }
.status { display: inline-block; padding: 0 .45rem; border-radius: 9px; font-size: .8rem; background: var(--head); }
.status.done { color: var(--good); }
.status.failed, .status.diverged, .status.damaged, .status.interrupted { color: var(--bad); }
.status.pruned { color: var(--muted); font-style: italic; }
table.kv td { white-space: normal; overflow-wrap: anywhere; }
table.kv td:first-child { color: var(--muted); width: 34%; }
details { margin-top: .5rem; }
summary { cursor: pointer; color: var(--accent); }
code { font-size: .85em; overflow-wrap: anywhere; }
@media (max-width: 640px) { body { padding: .6rem .7rem 2rem; font-size: 14px; } h1 { font-size: 1.2rem; } }
"""

# Click (or Enter on) a header: sort by that column, again to reverse. Numbers sort as numbers
# (data-v holds the unrounded value); missing values stay last either way.
SCRIPT = """
(function () {
  "use strict";
  function key(cell) {
    var v = cell.getAttribute("data-v");
    if (v !== null) { return v === "" ? null : parseFloat(v); }
    var t = cell.textContent.trim();
    return t === "" ? null : t.toLowerCase();
  }
  function sortBy(table, th, col) {
    var up = th.getAttribute("aria-sort") !== "ascending";
    var heads = table.tHead.rows[0].cells;
    for (var i = 0; i < heads.length; i++) { heads[i].removeAttribute("aria-sort"); }
    th.setAttribute("aria-sort", up ? "ascending" : "descending");
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a.cells[col]), y = key(b.cells[col]);
      if (x === null || y === null) { return (x === null) - (y === null); }
      var c = (typeof x === "number" && typeof y === "number") ? x - y : String(x).localeCompare(String(y));
      return up ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  }
  var tables = document.querySelectorAll("table.sortable");
  Array.prototype.forEach.call(tables, function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
      th.tabIndex = 0;
      th.title = "sort by " + th.textContent;
      th.addEventListener("click", function () { sortBy(table, th, col); });
      th.addEventListener("keydown", function (e) {
        if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sortBy(table, th, col); }
      });
    });
  });
})();
"""


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _image(path: Path, alt: str) -> str:
    """An <img> holding the PNG itself, with its size (read from the PNG header) so the page does not jump."""
    data = Path(path).read_bytes()
    size = ""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        size = f' width="{width}" height="{height}"'
    return f'<img alt="{_e(alt)}"{size} src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def _figure(path: Path, alt: str, caption: str = "") -> str:
    cap = f"<figcaption>{_e(caption)}</figcaption>" if caption else ""
    return f"<figure>{_image(path, alt)}{cap}</figure>"


def _status(status) -> str:
    text = str(status or "")
    return f'<span class="status {_e(text.split(",")[0].split()[-1] if text else "")}">{_e(text)}</span>'


# --- the comparison table ---------------------------------------------------------------------------


def _table_html(table) -> str:
    columns = [c for c in table.columns if c != "path" and not (c.endswith("_std") and c[:-4] in METRICS)]
    numeric = set(METRICS) | {"seeds"}
    head = "".join(f'<th scope="col"{" class=num" if c in numeric else ""}>{_e(c)}</th>' for c in columns)
    rows = []
    for rec in table.to_dict("records"):
        cells = []
        for c in columns:
            value = rec.get(c)
            if c in numeric:
                raw = "" if is_missing(value) else repr(float(value))
                text = format_number(c, value)
                std = rec.get(f"{c}_std")
                if c in STD_METRICS and not is_missing(std):
                    text += " ± " + format_number(c, std)
                cells.append(f'<td class="num" data-v="{raw}">{_e(text)}</td>')
            elif c == "status":
                cells.append(f"<td>{_status(value)}</td>")
            else:
                cells.append(f"<td>{_e(cell_text(value))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<div class="scroll"><table class="sortable" id="comparison"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>')


# --- runs -------------------------------------------------------------------------------------------


def _compared(columns) -> list[str]:
    return [c for c in columns if c.startswith(CONFIG_PREFIX) and is_compared(c[len(CONFIG_PREFIX):])]


def _find_baseline(records: list[dict], baseline: str | None) -> dict | None:
    with_config = [r for r in records if any(not is_missing(r.get(c)) for c in _compared(r))]
    if baseline is None:
        return with_config[0] if with_config else None
    target = os.path.realpath(baseline)
    for r in with_config:
        if r.get("run") == baseline or os.path.realpath(str(r.get("path"))) in (target,):
            return r
    labels = ", ".join(str(r.get("run")) for r in with_config)
    raise ConfigError(f"--baseline '{baseline}' names no run (runs: {labels})")


def _config_diff(run: dict, base: dict, columns: list[str]) -> str:
    if run is base:
        return '<p class="meta">This is the baseline the other runs are compared with.</p>'
    rows = []
    for c in columns:
        a, b = cell_text(base.get(c)), cell_text(run.get(c))
        if a != b:
            rows.append(f"<tr><td>{_e(c[len(CONFIG_PREFIX):])}</td><td>{_e(a) or '<i>unset</i>'} → "
                        f"<strong>{_e(b) or '<i>unset</i>'}</strong></td></tr>")
    if not rows:
        return f'<p class="meta">Same config as the baseline ({_e(base.get("run"))}).</p>'
    return (f'<table class="kv diff"><caption class="meta" style="text-align:left">against the baseline '
            f'{_e(base.get("run"))}</caption><tbody>{"".join(rows)}</tbody></table>')


def _provenance(folder: Path) -> str:
    try:
        record = read_record(folder)
    except DamagedRecord:
        return ""
    if record is None:
        return ""
    items = []
    if record.git:
        dirty = " (uncommitted changes)" if record.git.get("dirty") else ""
        items.append(("code", f"git {str(record.git.get('commit'))[:12]}{dirty}"))
    if record.data_sha256:
        items.append(("data", f"sha256 {record.data_sha256[:16]}… ({len(record.data_files or [])} file(s))"))
    if record.versions:
        items.append(("versions", ", ".join(f"{k} {v}" for k, v in record.versions.items())))
    hardware = ", ".join(x for x in (record.host, record.cpu, record.gpu or record.device) if x)
    if hardware:
        items.append(("machine", hardware))
    if record.command:
        items.append(("command", record.command))
    if record.resumed:
        items.append(("resumed", ", ".join(f"after epoch {r.get('epoch')} at {r.get('at')}" for r in record.resumed)))
    if not items:
        return ""
    body = "".join(f"<tr><td>{_e(k)}</td><td><code>{_e(v)}</code></td></tr>" for k, v in items)
    return f'<details><summary>Run with</summary><table class="kv"><tbody>{body}</tbody></table></details>'


def _run_card(index: int, run: dict, base: dict | None, columns: list[str], tmp: Path) -> str:
    from .plots import plot_curves

    folder = Path(str(run.get("path")))
    label = str(run.get("run") or folder.name)
    curves = folder / "curves.png"
    if not curves.is_file() and (folder / "metrics.csv").is_file():
        try:
            curves = plot_curves(folder / "metrics.csv", tmp / f"curves-{index}.png", title=label)
        except Exception:
            curves = None
    picture = _figure(curves, f"loss and accuracy per epoch of {label}") if curves and curves.is_file() \
        else '<p class="meta">No epochs recorded.</p>'
    numbers = []
    for metric in ("best_val_accuracy", "test_accuracy", "epochs", "fit_seconds"):
        value = run.get(metric)
        if not is_missing(value):
            numbers.append(f"{metric} {format_number(metric, value)}")
    seed = "" if is_missing(run.get("seed")) else f" · seed {cell_text(run.get('seed'))}"
    diff = _config_diff(run, base, columns) if base is not None else ""
    return (f'<article class="run" id="run-{index}"><h3>{_e(label)}</h3>'
            f'<p class="meta">{_status(run.get("status"))}{_e(seed)} · {_e(" · ".join(numbers))}<br>'
            f"<code>{_e(folder)}</code></p>{picture}{_per_class(folder, label)}{diff}{_provenance(folder)}</article>")


def _per_class(folder: Path, label: str) -> str:
    """The run's confusion matrix and per-class scores (a classifier's finished run), else nothing."""
    from .perclass import per_class_html, read_per_class

    per_class = read_per_class(folder) if (folder / "results.json").is_file() else None
    picture = folder / "confusion.png"
    out = _figure(picture, f"test-set confusion matrix of {label}") if picture.is_file() else ""
    return out + (per_class_html(per_class, _e) if per_class else "")


# --- the page ---------------------------------------------------------------------------------------


def _sweep_section(sweep: Path, tmp: Path, index: int, beside: str = "") -> str:
    """A sweep's plots: metrics against the swept value (full width), then its trials' validation
    curves with `beside` (a figure) next to them."""
    from .plots import plot_overlay

    parts = [beside] if beside else []
    name = sweep_name(sweep)
    wide = _figure(sweep / "sweep.png", f"{name}: metrics against the swept value") \
        if (sweep / "sweep.png").is_file() else ""
    for png, caption in (("search.png", "the objective of each proposal and the best so far"),
                         ("parallel.png", "the search space in parallel coordinates, coloured by the objective")):
        if (sweep / png).is_file():  # a search (sweep.space)
            parts.append(_figure(sweep / png, f"{name}: {caption}"))
    overlay = sweep / "val_curves.png"
    if not overlay.is_file():
        trials = manifest_trials(sweep)
        runs = [(sweep / str(t.get("id")), str(t.get("id"))) for t in trials]
        try:
            overlay = plot_overlay(runs, tmp / f"overlay-{index}.png")
        except Exception:
            overlay = None
    if overlay is not None and overlay.is_file():
        parts.insert(0, _figure(overlay, f"{name}: validation accuracy per epoch of every trial"))
    if not parts and not wide:
        return ""
    return (f'<h3>{_e(name)}</h3><p class="meta"><code>{_e(sweep)}</code></p>{wide}'
            f'<div class="grid">{"".join(parts)}</div>')


def _tests_html(tests) -> str:
    """The tests between rows (report/stats.py): difference, interval, p-value; the note where there is no test."""
    from .stats import format_p

    head = "".join(f"<th scope=\"col\">{_e(c)}</th>" for c in ("A - B", "metric", "test", "seeds", "difference",
                                                                  "95% CI", "p"))
    rows = []
    for r in tests.to_dict("records"):
        m = r["metric"]
        if math.isnan(r["p_value"]) and r["note"]:
            interval, p = r["note"], ""
        else:
            interval = f"[{format_number(m, r['ci_low'], signed=True)}, {format_number(m, r['ci_high'], signed=True)}]"
            p = format_p(r["p_value"])
        cells = [f"{r['a']} - {r['b']}", m, r["test"], r["seeds"], format_number(m, r["difference"], signed=True),
                 interval, p]
        rows.append("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in cells) + "</tr>")
    return (f'<div class="scroll"><table id="tests"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>')


def render_html_report(paths, *, baseline: str | None = None, title: str | None = None,
                       compare: list[list[str]] | None = None, compare_all: bool = False, test: str = "auto") -> str:
    """The report page as one HTML string (see the module's docstring). `compare` (pairs of row labels) and
    `compare_all` (every row against `baseline`, else the first row) add a section of tests between rows."""
    from ..version import __version__
    from .plots import plot_bars

    paths = [Path(p) for p in paths]
    runs = collect_runs(paths)
    table = comparison_table(runs, only_changed=True)
    records = runs.to_dict("records")
    columns = _compared(runs.columns)
    base = _find_baseline(records, baseline)
    tests_section = ""
    if compare or compare_all:
        from .stats import table_tests

        against = baseline if baseline is not None else str(table["run"].iloc[0])
        tests = table_tests(runs, table, compare=compare, compare_all=compare_all, baseline=against, test=test)
        tests_section = ('<section id="tests-between-rows"><h2>Is the difference real?</h2><p class="meta">Per '
                         'metric, A\'s mean minus B\'s over their seeds, its 95% confidence interval and two-sided '
                         f'p-value (scipy.stats; test {_e(test)}: paired when the seeds match).</p>'
                         f'{_tests_html(tests)}</section>')
    title = title or "expkit report: " + ", ".join(p.name for p in paths)
    when = datetime.now(timezone.utc).replace(microsecond=0).isoformat()
    with tempfile.TemporaryDirectory(prefix="expkit-report-") as tmpdir:
        tmp = Path(tmpdir)
        sweep_dirs = [p for p in paths if is_sweep_folder(p)]
        bars = ""
        finite = [r for r in table.to_dict("records") if not math.isnan(float(r.get("best_val_accuracy", math.nan)))]
        if len(finite) >= 2:
            try:
                bars = _figure(plot_bars(table, tmp / "bars.png"), "best validation accuracy of each row")
            except Exception:
                bars = ""
        # The bar chart sits beside a lone sweep's curves, unless it has too many bars to be read at half width.
        beside = bars if len(sweep_dirs) == 1 and len(finite) <= 6 else ""
        plots = "".join(_sweep_section(p, tmp, i, beside) for i, p in enumerate(sweep_dirs))
        if bars and not beside:
            plots += bars if len(finite) > 6 else f'<div class="grid">{bars}</div>'
        cards = "".join(_run_card(i, r, base, columns, tmp) for i, r in enumerate(records, 1))
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title>
<style>{STYLE}</style>
</head>
<body>
<header>
<h1>{_e(title)}</h1>
<p class="meta">{len(records)} run(s) from {_e(", ".join(str(p) for p in paths))} · written {_e(when)} by expkit {_e(__version__)}</p>
</header>
<main>
<section id="table">
<h2>Comparison</h2>
<p class="meta">One row per config (seeds averaged: mean ± standard deviation). Click a column's header to sort by it.</p>
{_table_html(table)}
</section>
{tests_section}
{f'<section id="plots"><h2>Plots</h2>{plots}</section>' if plots else ""}
<section id="runs">
<h2>Runs</h2>
<p class="meta">Each run's loss and accuracy per epoch, its config's differences from the baseline
{_e(base.get("run")) if base else ""}, and what it was run with.</p>
<div class="grid">{cards}</div>
</section>
</main>
<script>{SCRIPT}</script>
</body>
</html>
"""


def write_html_report(paths, out: str | Path, *, baseline: str | None = None, title: str | None = None,
                      **tests) -> Path:
    """Write the report page to `out` (whole or not at all) and return its path; `tests`: render_html_report's."""
    return write_text_atomic(out, render_html_report(paths, baseline=baseline, title=title, **tests))
