"""Is a difference between two rows real? Tests over the seeds a row averages (`expkit table --compare`,
`expkit.compare`, the HTML report, `expkit claims`, `expkit diff --significance`).

Every number comes from scipy.stats (the optional extra `stats`), imported inside the functions that
test, so tables without tests need no scipy. Per metric, a comparison of rows A and B gives the
difference of means A - B, a confidence interval and a two-sided p-value:

- `welch`: Welch's t-test (`ttest_ind(equal_var=False)`), for rows that ran different seeds;
- `paired`: the paired t-test (`ttest_rel`) over the seeds both rows ran, which removes what a seed
  does to both (its data split, its initial weights); with cross-validation (sweep.folds) each
  (seed, fold) is a repeat, and rows pair on the same fold of the same seed;
- `bootstrap`: a percentile bootstrap interval of the difference (`bootstrap`, each row's seeds
  resampled on their own, 9,999 resamples, a fixed random state) with the p-value of a permutation test (`permutation_test`; with 3 seeds a side
  there are only 20 distinct splits, so p cannot go below 0.1);
- `auto` (the default): `paired` when both rows ran the same seeds, else `welch`.

A published row (`--reference`) is one exact number: the row beside it is tested against it with the
one-sample t-test (`ttest_1samp`). A row with fewer than 2 seeds gets no test: its note says
`one seed: no test`, and its interval and p-value are NaN.
"""

from __future__ import annotations

import math
import warnings

from ..errors import ConfigError
from .columns import FOLD, METRICS, STD_METRICS, as_float, is_missing
from .formatting import PUBLISHED, escape_latex, escape_markdown, format_number

TESTS = ("auto", "welch", "paired", "bootstrap")
ONE_SEED = "one seed: no test"
COLUMNS = ["a", "b", "metric", "test", "seeds", "difference", "ci_low", "ci_high", "p_value", "note"]
BOOTSTRAP_RESAMPLES = 9999
# the metrics a comparison tests by default: those with a direction (params and epochs have none)
TESTED = [m for m in STD_METRICS if METRICS[m][1] != 0]


def _scipy_stats():
    try:
        from scipy import stats
    except ImportError:  # the optional extra: one line, not a traceback
        raise ConfigError("tests between rows need scipy: pip install 'expkit[stats]'") from None
    return stats


def check_test(test: str) -> str:
    if test not in TESTS:
        raise ConfigError(f"--test: unknown test '{test}' (known: {', '.join(TESTS)})")
    return test


def compare_values(a: dict, b: dict | float, *, test: str = "auto", confidence: float = 0.95) -> dict:
    """One metric, A against B: `a` maps seed -> value; `b` too, or is one exact (published) number.
    Returns the row's `test`, `seeds` ("3 vs 3"), `difference` (mean A - mean B), `ci_low`, `ci_high`,
    `p_value` (two-sided) and `note` (why there is no test, or what was chosen)."""
    check_test(test)
    exact = not isinstance(b, dict)
    va = [v for v in a.values()]
    vb = [] if exact else list(b.values())
    mean_a = sum(va) / len(va) if va else math.nan
    mean_b = float(b) if exact else (sum(vb) / len(vb) if vb else math.nan)
    out = {"test": "", "seeds": f"{len(va)} vs {'published' if exact else len(vb)}",
           "difference": mean_a - mean_b, "ci_low": math.nan, "ci_high": math.nan, "p_value": math.nan, "note": ""}
    if any(math.isnan(v) for v in va + vb) or math.isnan(mean_b):
        out["note"] = "a NaN value (a diverged run, or not reported): no test"
        return out
    if len(va) < 2 or (not exact and len(vb) < 2):
        out["note"] = ONE_SEED
        return out
    common = sorted(set(a) & set(b)) if not exact else []
    same_seeds = not exact and set(a) == set(b)
    chosen = "one-sample" if exact else ("paired" if same_seeds else "welch") if test == "auto" else test
    if chosen == "paired" and not same_seeds:
        out["note"] = f"paired: the rows ran different seeds ({len(common)} in common): no test"
        return out
    stats = _scipy_stats()
    with warnings.catch_warnings():  # zero spread or tiny samples: scipy warns and returns NaN, shown as nan
        warnings.simplefilter("ignore")
        if chosen == "one-sample":
            result = stats.ttest_1samp(va, mean_b)
            low, high = result.confidence_interval(confidence)
            low, high, p = low - mean_b, high - mean_b, result.pvalue
        elif chosen == "paired":
            result = stats.ttest_rel([a[s] for s in common], [b[s] for s in common])
            (low, high), p = result.confidence_interval(confidence), result.pvalue
        elif chosen == "welch":
            result = stats.ttest_ind(va, vb, equal_var=False)
            (low, high), p = result.confidence_interval(confidence), result.pvalue
        else:
            low, high, p = _bootstrap(stats, va, vb, confidence)
    out.update(test=chosen, ci_low=float(low), ci_high=float(high), p_value=float(p))
    if math.isnan(out["p_value"]):  # every seed gave the same number (on both sides): nothing to test against
        out["note"] = "no spread over the seeds: no test"
    elif test != chosen and exact:
        out["note"] = "against a published number: one-sample t-test"
    return out


def _bootstrap(stats, va: list[float], vb: list[float], confidence: float) -> tuple[float, float, float]:
    import numpy as np

    def difference(x, y, axis=-1):
        return np.mean(x, axis=axis) - np.mean(y, axis=axis)

    interval = stats.bootstrap((va, vb), difference, n_resamples=BOOTSTRAP_RESAMPLES, method="percentile",
                               confidence_level=confidence, vectorized=True, rng=np.random.default_rng(0))
    p = stats.permutation_test((va, vb), difference, n_resamples=BOOTSTRAP_RESAMPLES, vectorized=True,
                               rng=np.random.default_rng(0)).pvalue
    return interval.confidence_interval.low, interval.confidence_interval.high, p


def welch_worse_p(old_mean: float, old_std: float, old_n: int, new_mean: float, new_std: float, new_n: int,
                  direction: int) -> float:
    """The one-sided p-value that the new mean is worse than the old (Welch's test from each side's mean,
    sample standard deviation and seed count, as a results table holds them: `ttest_ind_from_stats`).
    direction +1: higher is better, so worse is lower; -1: worse is higher."""
    stats = _scipy_stats()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = stats.ttest_ind_from_stats(new_mean, new_std, new_n, old_mean, old_std, old_n, equal_var=False,
                                            alternative="less" if direction > 0 else "greater")
    return float(result.pvalue)


def seed_values(members: list[dict], metric: str) -> dict:
    """seed -> the metric's value, over a row's runs (`table.seed_groups`); a seed twice keeps both apart.
    With cross-validation a repeat is (seed, fold): two rows pair on the same split of the same data."""
    out: dict = {}
    for i, member in enumerate(members):
        seed, fold = member.get("seed"), member.get(FOLD)
        key = seed if seed is None or is_missing(fold) else (seed, fold)
        out[key if key is not None and key not in out else f"#{i}"] = as_float(member.get(metric))
    return out


def compare_rows(groups: dict[str, list[dict]], pairs: list[tuple[str, str]], *, test: str = "auto",
                 metrics: list[str] | None = None, published: dict[str, dict] | None = None,
                 confidence: float = 0.95):
    """A DataFrame with a row per (pair, metric): COLUMNS. `groups`: row label -> its runs
    (`table.seed_groups`); `published`: label -> a published row (its metrics exact numbers). A metric
    neither side has a number for is left out of that pair."""
    import pandas as pd

    published = published or {}
    check_test(test)
    rows = []
    for a, b in pairs:
        for side in (a, b):
            if side not in groups and side not in published:
                known = ", ".join([*groups, *published])
                raise ConfigError(f"--compare: '{side}' names no row (rows: {known})")
        if a in published:
            raise ConfigError(f"--compare: '{a}' is a published row; put it second (A - B, B the published number)")
        for metric in metrics or TESTED:
            va = seed_values(groups[a], metric)
            vb = as_float(published[b].get(metric)) if b in published else seed_values(groups[b], metric)
            values_b = [vb] if b in published else list(vb.values())
            if all(math.isnan(v) for v in va.values()) and all(math.isnan(v) for v in values_b):
                continue
            if b in published and math.isnan(vb):
                continue  # the report does not give this number
            rows.append({"a": a, "b": b, "metric": metric, **compare_values(va, vb, test=test, confidence=confidence)})
    return pd.DataFrame({c: [r[c] for r in rows] for c in COLUMNS}, columns=COLUMNS)


def published_rows(table) -> dict[str, dict]:
    """label -> row, for the published rows of a comparison table (`with_reference`)."""
    return {str(r["run"]): r for r in table.to_dict("records") if r.get("status") == PUBLISHED}


def format_p(p: float) -> str:
    if math.isnan(p):
        return "nan"
    return "<0.0001" if p < 0.0001 else f"{p:.4f}"


def format_tests(tests, fmt: str = "markdown", confidence: float = 0.95) -> str:
    """The tests as text: Markdown or LaTeX (the interval as [low, high]) or CSV (every column, for machines)."""
    import csv
    import io

    records = tests.to_dict("records")
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(COLUMNS)
        for r in records:
            writer.writerow([format_number(r["metric"], r[c], signed=c == "difference") if c in ("difference", "ci_low", "ci_high")
                             else format_p(r[c]) if c == "p_value" else r[c] for c in COLUMNS])
        return buf.getvalue()
    level = f"{confidence * 100:g}% CI"
    header = ["A - B", "metric", "test", "seeds", "difference", level, "p"]
    body = []
    for r in records:
        signed = format_number(r["metric"], r["difference"], signed=True)
        if r["note"] and math.isnan(r["p_value"]):
            interval, p = r["note"], ""
        else:
            interval = (f"[{format_number(r['metric'], r['ci_low'], signed=True)}, "
                        f"{format_number(r['metric'], r['ci_high'], signed=True)}]")
            p = format_p(r["p_value"])
        body.append([f"{r['a']} - {r['b']}", r["metric"], r["test"], r["seeds"], signed, interval, p])
    if fmt == "markdown":
        rule = ["---", "---", "---", "---:", "---:", "---", "---:"]
        return "".join("| " + " | ".join(escape_markdown(str(c)) for c in cells) + " |\n"
                       for cells in [header, rule, *body])
    lines = ["\\begin{tabular}{llllrlr}", "\\hline", " & ".join(escape_latex(h) for h in header) + " \\\\", "\\hline"]
    lines += [" & ".join(escape_latex(str(c)) for c in cells) + " \\\\" for cells in body]
    return "\n".join(lines + ["\\hline", "\\end{tabular}"]) + "\n"


def pairs_for(labels: list[str], *, compare: list[list[str]] | None = None, compare_all: bool = False,
              baseline: str | None = None) -> list[tuple[str, str]]:
    """The (A, B) pairs of `--compare A B` (repeatable) and `--compare-all` (every row against `baseline`)."""
    pairs = [(a, b) for a, b in (compare or [])]
    if compare_all:
        if baseline is None:
            raise ConfigError("--compare-all tests every row against the baseline: give it with --baseline RUN")
        pairs += [(label, baseline) for label in labels if label != baseline]
    return pairs


def table_tests(runs_df, table, *, compare: list[list[str]] | None = None, compare_all: bool = False,
                baseline: str | None = None, test: str = "auto", metrics: list[str] | None = None,
                confidence: float = 0.95):
    """The tests `expkit table --compare/--compare-all` adds: `runs_df` the runs (`collect_runs`), `table`
    the comparison table built from them (with any published rows); labels as the table's."""
    from .table import baseline_label, seed_groups

    check_test(test)
    groups = seed_groups(runs_df)
    published = published_rows(table)
    base = baseline_label(table, baseline) if baseline is not None else None
    labels = [label for label in groups]
    return compare_rows(groups, pairs_for(labels, compare=compare, compare_all=compare_all, baseline=base),
                        test=test, metrics=metrics, published=published, confidence=confidence)
