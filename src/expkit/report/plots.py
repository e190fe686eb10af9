"""Every PNG expkit draws. matplotlib is imported inside the functions; figures are drawn on the
Agg canvas without pyplot (no global figure state, no display needed) and written whole."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Iterable

from ..errors import ConfigError
from ..files import read_csv, write_figure_atomic
from .columns import FIT_SHARED, cell_text
from .formatting import DIFFERENCE_PREFIX, PUBLISHED, format_number

DPI = 100


def _figure(panels: int, *, width: float = 4.6, height: float = 3.6, margins: tuple | None = None):
    """A figure of `panels` axes side by side. Its layout is matplotlib's constrained one, which measures
    every text by drawing the figure once more; `margins` (left, right, bottom, top, gap between panels;
    inches) fixes them instead, for the figures of every trial whose texts have known, bounded sizes:
    drawing curves.png and confusion.png then takes 0.31 s a trial instead of 0.57 s (2-core CPU)."""
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:  # never switch the backend under a caller's pyplot
        matplotlib.use("Agg")
    from matplotlib.figure import Figure

    w, h = width * panels, height
    fig = Figure(figsize=(w, h), layout=None if margins else "constrained")
    if margins:
        left, right, bottom, top, gap = margins
        panel = (w - left - right - gap * (panels - 1)) / panels
        fig.subplots_adjust(left=left / w, right=1 - right / w, bottom=bottom / h, top=1 - top / h,
                            wspace=gap / panel)
    return fig, list(fig.subplots(1, panels, squeeze=False)[0])


def use_log_scale(values: Iterable) -> bool:
    """A log axis when every value is positive and they span two decades or more."""
    numbers = [v for v in (_float(x) for x in values) if math.isfinite(v)]
    if not numbers or min(numbers) <= 0:
        return False
    return max(numbers) / min(numbers) >= 100


def _float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _read_metrics(path: Path) -> tuple[list[str], dict[str, list[float]]]:
    columns, rows = read_csv(path, expected="a run's metrics.csv")
    return columns, {c: [_float(r.get(c)) for r in rows] for c in columns}


def plot_curves(metrics_csv_path: str | Path, out_png: str | Path, title: str) -> Path:
    """Loss and accuracy per epoch, train against validation (and test, when recorded), in two panels."""
    columns, data = _read_metrics(Path(metrics_csv_path))
    epochs = data.get("epoch") or list(range(1, len(next(iter(data.values()), [])) + 1))
    from matplotlib.ticker import MaxNLocator

    fig, axes = _figure(2, margins=(0.75, 0.2, 0.55, 0.5, 0.8))
    for ax, name in zip(axes, ("loss", "accuracy")):
        for column, label, style in ((name, "train", "o-"), (f"val_{name}", "validation", "s--"),
                                     (f"test_{name}", "test", "^:")):  # test: train.test_each_epoch
            if column in data:
                ax.plot(epochs, data[column], style, label=label, markersize=4)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
        else:
            ax.text(0.5, 0.5, f"no {name} recorded", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle(title)
    return write_figure_atomic(fig, out_png, dpi=DPI)


def plot_confusion(counts, classes: list[str], out_png: str | Path, title: str) -> Path:
    """The test set's confusion matrix: counts in each cell, shaded by the share of the true class
    (row), so a small class's mistakes show as plainly as a large one's."""
    import numpy as np

    counts = np.asarray(counts)
    k = len(classes)
    side = min(9.0, 2.5 + 0.45 * k)
    labels = [c if len(c) <= 12 else c[:11] + "…" for c in map(str, classes)]
    longest = 8 / 72 * 0.62 * max(map(len, labels), default=1)  # inches of the longest label at 8 points
    fig, (ax,) = _figure(1, width=side, height=side * 0.9,
                         margins=(longest + 0.5, 0.25, longest * 0.75 + 0.55, 0.55, 0.0))
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros(counts.shape, dtype=float), where=totals > 0)
    ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    if k <= 20:  # more cells than that cannot hold readable numbers
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(int(counts[i, j])), ha="center", va="center", fontsize=8,
                        color="white" if shares[i, j] > 0.5 else "black")
    ax.set_xticks(range(k), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{title}\ntest set, {int(counts.sum())} examples", fontsize=9)
    return write_figure_atomic(fig, out_png, dpi=DPI)


def _counterpart(metric: str) -> str:
    if "accuracy" in metric:
        return metric.replace("accuracy", "loss")
    return metric.replace("loss", "accuracy")


def _table_rows(table, needed: list[str]) -> list[dict]:
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise ConfigError(f"the table has no column '{missing[0]}' (columns: {', '.join(map(str, table.columns))})")
    return [r for r in table.to_dict("records") if not str(r.get("run", "")).startswith(DIFFERENCE_PREFIX)]


def plot_sweep(table, key: str, out_png: str | Path, metric: str = "best_val_accuracy",
               series: list[str] | None = None) -> Path:
    """A sweep over one numeric key: `metric`, its loss (or accuracy) counterpart and the fit
    seconds against the key's value, one panel each. Log x axis when the values span two decades;
    error bars from `_std` columns; diverged trials (status diverged, or the metric NaN) marked
    with a red x at the foot of the panel. `series`: columns whose values split the rows into lines of
    their own (a sweep folder holding the same rates on two datasets), one legend entry each."""
    if series:
        return _plot_series(table, key, out_png, metric, series)
    rows = _table_rows(table, [key, metric])
    values = [_float(r[key]) for r in rows]
    if any(math.isnan(v) for v in values):
        bad = next(r[key] for r, v in zip(rows, values) if math.isnan(v))
        raise ConfigError(f"plot_sweep needs a numeric key: '{key}' has the value {bad!r}")
    rows = [r for _, r in sorted(zip(values, rows), key=lambda pair: pair[0])]
    x = sorted(values)
    panels = [metric] + [c for c in (_counterpart(metric), "fit_seconds") if c in table.columns and c != metric]
    fig, axes = _figure(len(panels), width=4.2)
    log = use_log_scale(x)
    diverged = [i for i, r in enumerate(rows) if "diverged" in str(r.get("status", "")) or math.isnan(_float(r[metric]))]
    # a vectorised group's trials share one program's time: drawn apart, not as each trial's own
    shared = [i for i, r in enumerate(rows) if cell_text(r.get(FIT_SHARED))]
    for ax, column in zip(axes, panels):
        y = [_float(r[column]) for r in rows]
        std = [_float(r.get(f"{column}_std")) for r in rows]
        if column == "fit_seconds" and shared:
            own = [i for i in range(len(rows)) if i not in shared]
            if own:
                ax.plot([x[i] for i in own], [y[i] for i in own], "o-", label="trained on its own")
            ax.plot([x[i] for i in shared], [y[i] for i in shared], "s", mfc="none", color="0.4", linestyle="none",
                    label="its vectorised group's time, shared")
            ax.legend(fontsize="small")
        elif any(math.isfinite(s) for s in std):
            ax.errorbar(x, y, yerr=[s if math.isfinite(s) else 0.0 for s in std], fmt="o-", capsize=3)
        else:
            ax.plot(x, y, "o-")
        pruned = [i for i, r in enumerate(rows) if "pruned" in str(r.get("status", "")) and math.isfinite(y[i])]
        if pruned:  # stopped early by sweep.prune: its numbers are of the epochs it ran
            ax.plot([x[i] for i in pruned], [y[i] for i in pruned], "o", mfc="white", color="0.45", markersize=8,
                    linestyle="none", label="pruned (epochs so far)")
            ax.legend(fontsize="small")
        if diverged:
            mark = {"marker": "x", "linestyle": "none", "color": "red", "markersize": 9, "mew": 2}
            at_value = [i for i in diverged if math.isfinite(y[i])]
            at_foot = [i for i in diverged if not math.isfinite(y[i])]
            if at_value:
                ax.plot([x[i] for i in at_value], [y[i] for i in at_value], label="diverged", **mark)
            if at_foot:  # NaN has no height: marked at the foot of the panel (x in data units)
                ax.plot([x[i] for i in at_foot], [0.04] * len(at_foot), transform=ax.get_xaxis_transform(),
                        label="diverged (NaN)", clip_on=False, **mark)
            ax.legend()
        if log:
            ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel(column)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{', '.join(panels)} against {key}")
    return write_figure_atomic(fig, out_png, dpi=DPI)


def _plot_series(table, key: str, out_png, metric: str, series: list[str]) -> Path:
    rows = _table_rows(table, [key, metric, *series])
    panels = [metric] + [c for c in (_counterpart(metric), "fit_seconds") if c in table.columns and c != metric]
    fig, axes = _figure(len(panels), width=4.2)
    names: dict[tuple, list] = {}
    for r in rows:
        names.setdefault(tuple(cell_text(r.get(c)) for c in series), []).append(r)
    for ax, column in zip(axes, panels):
        for values, members in names.items():
            points = sorted((_float(r[key]), _float(r[column])) for r in members)
            ax.plot([p[0] for p in points], [p[1] for p in points], "o-",
                    label=", ".join(f"{c}={v}" for c, v in zip(series, values)))
        if use_log_scale([_float(r[key]) for r in rows]):
            ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel(column)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(f"{', '.join(panels)} against {key}")
    return write_figure_atomic(fig, out_png, dpi=DPI)


def plot_overlay(run_dirs_with_labels: Iterable[tuple[str | Path, str]], out_png: str | Path,
                 metric: str = "val_accuracy") -> Path:
    """`metric` per epoch of several runs (a sweep's trials) on one axis. Runs without a
    metrics.csv yet are left out."""
    from matplotlib import colormaps
    from matplotlib.ticker import MaxNLocator

    runs = [(Path(d) / "metrics.csv", label) for d, label in run_dirs_with_labels]
    runs = [(path, label) for path, label in runs if path.is_file()]
    # past ten runs the default cycle repeats colours: a sequential map keeps the trial order readable
    colors = colormaps["tab10"].colors if len(runs) <= 10 else colormaps["viridis"]([i / (len(runs) - 1) for i in range(len(runs))])
    fig, (ax,) = _figure(1, width=7.5, height=4.5)
    seen: list[str] = []
    for (path, label), color in zip(runs, colors):
        columns, data = _read_metrics(path)
        seen += [c for c in columns if c not in seen]
        if metric in data:
            epochs = data.get("epoch") or range(1, len(data[metric]) + 1)
            ax.plot(epochs, data[metric], "o-", markersize=3, label=label, color=color)
    if seen and not ax.lines:
        raise ConfigError(f"no run logged '{metric}' (metrics.csv columns: {', '.join(seen)})")
    if ax.lines:
        ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    else:
        ax.text(0.5, 0.5, "no epochs recorded yet", ha="center", va="center", transform=ax.transAxes)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.set_title(f"{metric} per epoch")
    return write_figure_atomic(fig, out_png, dpi=DPI)


def plot_bars(table, out_png: str | Path, metric: str = "best_val_accuracy") -> Path:
    """One bar per compared row (difference rows left out), error bars from `<metric>_std`,
    each bar labelled with its value; a published reference row (`--reference`) is grey and hatched,
    with a legend, so it is not read as one of our runs."""
    rows = _table_rows(table, ["run", metric])
    labels = [str(r["run"]) for r in rows]
    y = [_float(r[metric]) for r in rows]
    std = [_float(r.get(f"{metric}_std")) for r in rows]
    fig, (ax,) = _figure(1, width=max(4.0, 1.1 * len(rows) + 2), height=4.2)
    heights = [v if math.isfinite(v) else 0.0 for v in y]
    yerr = [s if math.isfinite(s) else 0.0 for s in std] if any(math.isfinite(s) for s in std) else None
    published = [str(r.get("status", "")).strip() == PUBLISHED for r in rows]
    bars = ax.bar(range(len(rows)), heights, yerr=yerr, capsize=4,
                  color=["0.75" if p else "tab:blue" for p in published], edgecolor=["0.35" if p else "tab:blue" for p in published],
                  hatch=["//" if p else "" for p in published])
    if any(published):
        from matplotlib.patches import Patch

        ax.legend(handles=[Patch(facecolor="tab:blue", label="this run"),
                           Patch(facecolor="0.75", edgecolor="0.35", hatch="//", label="published")], fontsize="small")
    ax.bar_label(bars, labels=[format_number(metric, v) for v in y], padding=2, fontsize="small")
    long = max(map(len, labels), default=0) > 10
    ax.set_xticks(range(len(rows)), labels, rotation=30 if long else 0, ha="right" if long else "center")
    ax.margins(y=0.12)  # room for the value labels under the title
    ax.set_ylabel(metric)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(metric)
    return write_figure_atomic(fig, out_png, dpi=DPI)


def plot_search(values: list[float], out_png: str | Path, *, objective: str, minimize: bool,
                pruned: list[bool] | None = None) -> Path:
    """A search's objective against proposal number (dots; pruned ones hollow) and the best so far (a step line)."""
    fig, (ax,) = _figure(1, width=5.6, height=3.8)
    x = list(range(1, len(values) + 1))
    pruned = pruned or [False] * len(values)
    done = [(i, v) for i, v, p in zip(x, values, pruned) if math.isfinite(v) and not p]
    cut = [(i, v) for i, v, p in zip(x, values, pruned) if math.isfinite(v) and p]
    if done:
        ax.plot(*zip(*done), "o", color="tab:blue", label=objective)
    if cut:
        ax.plot(*zip(*cut), "o", mfc="none", color="0.5", label="pruned (epochs so far)")
    best, line = math.nan, []
    for v, p in zip(values, pruned):
        if math.isfinite(v) and not p and (not math.isfinite(best) or (v < best if minimize else v > best)):
            best = v
        line.append(best)
    if any(math.isfinite(b) for b in line):
        ax.step(x, line, where="post", color="tab:orange", label="best so far")
    ax.set_xlabel("proposal")
    ax.set_ylabel(objective)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    ax.set_title(f"search: {objective} ({'min' if minimize else 'max'}imised)")
    return write_figure_atomic(fig, out_png, dpi=DPI)


def plot_parallel(table, keys: list[str], out_png: str | Path, *, objective: str, minimize: bool) -> Path:
    """Parallel coordinates of a search: one axis per key of the space (scaled to its range, log where
    the values span decades; choices as their positions) and one for the objective, one line per row,
    coloured by the objective (the best darkest)."""
    import matplotlib

    rows = _table_rows(table, ["run", objective])
    axes = [*keys, objective]
    columns = []
    for key in axes:
        raw = [r.get(key) for r in rows]
        numbers = [_float(v) for v in raw]
        if all(math.isfinite(v) for v in numbers):
            log = key != objective and use_log_scale(numbers)
            vals = [math.log10(v) for v in numbers] if log else numbers
            ticks = None
        else:  # choices: their order of first appearance
            names = list(dict.fromkeys(cell_text(v) for v in raw))
            vals = [float(names.index(cell_text(v))) for v in raw]
            ticks = names
        lo, hi = min(vals, default=0.0), max(vals, default=1.0)
        ends = ticks and (ticks[0], ticks[-1]) or tuple(f"{10 ** v if log else v:.3g}" for v in (lo, hi))
        columns.append(([(v - lo) / (hi - lo) if hi > lo else 0.5 for v in vals], ends))
    fig, (ax,) = _figure(1, width=max(5.0, 1.8 * len(axes)), height=4.0)
    score = columns[-1][0]
    cmap = matplotlib.colormaps["viridis_r" if minimize else "viridis"]
    for i in sorted(range(len(rows)), key=lambda i: score[i]):
        ax.plot(range(len(axes)), [c[0][i] for c in columns], color=cmap(score[i]), alpha=0.8)
    for j, (_, (low, high)) in enumerate(columns):  # each axis' range, at its ends
        ax.axvline(j, color="0.6", lw=0.8)
        ax.text(j, -0.04, low, ha="center", va="top", fontsize="x-small")
        ax.text(j, 1.04, high, ha="center", va="bottom", fontsize="x-small")
    ax.set_xticks(range(len(axes)), [a.rsplit(".", 1)[-1] if len(a) > 18 else a for a in axes], rotation=15)
    ax.set_yticks([])
    ax.set_ylim(-0.12, 1.12)
    ax.set_title(f"search space and {objective}")
    return write_figure_atomic(fig, out_png, dpi=DPI)
