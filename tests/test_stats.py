"""Tests between rows (report/stats.py): `expkit table --compare`, `expkit.compare`, the HTML report."""

import math
import subprocess
import sys

import pytest
from scipy import stats

import expkit
from expkit.errors import ConfigError
from expkit.report import collect_runs, comparison_table
from expkit.report.stats import ONE_SEED, compare_values, table_tests
from test_report import REPO, write_run

A_VAL = [0.842, 0.851, 0.838, 0.846, 0.855]
B_VAL = [0.821, 0.834, 0.829, 0.818, 0.826]


def write_rows(root, rows):
    """rows: name -> [(seed, best_val_accuracy)], one run folder each (the other metrics derived from it)."""
    paths = []
    for name, values in rows.items():
        for seed, val in values:
            paths.append(write_run(root / name / f"seed{seed}", name=name, seed=seed,
                                   best=(val + 0.01, val, 1 - val, 1.1 - val), test=(1.05 - val, val - 0.005)))
    return paths


def one(tests, metric="best_val_accuracy"):
    (row,) = tests[tests["metric"] == metric].to_dict("records")
    return row


def test_welch_over_five_seeds_equals_scipy(tmp_path):
    paths = write_rows(tmp_path, {"cnn1": list(zip(range(5), A_VAL)), "cnn2": list(zip(range(5, 10), B_VAL))})
    tests = expkit.compare(paths, "cnn1", "cnn2")
    row = one(tests)
    expected = stats.ttest_ind(A_VAL, B_VAL, equal_var=False)
    low, high = expected.confidence_interval(0.95)
    assert row["test"] == "welch" and row["seeds"] == "5 vs 5" and row["note"] == ""
    assert row["difference"] == pytest.approx(sum(A_VAL) / 5 - sum(B_VAL) / 5, abs=1e-12)
    assert row["p_value"] == pytest.approx(expected.pvalue, rel=1e-9)
    assert (row["ci_low"], row["ci_high"]) == (pytest.approx(low, rel=1e-9), pytest.approx(high, rel=1e-9))
    assert row["p_value"] < 0.01  # these five seeds tell the rows apart
    # every metric with a direction is tested, none without one
    assert set(tests["metric"]) == {"best_accuracy", "best_val_accuracy", "best_loss", "best_val_loss", "test_loss",
                                    "test_accuracy", "fit_seconds"}


def test_paired_when_both_rows_ran_the_same_seeds(tmp_path):
    paths = write_rows(tmp_path, {"cnn1": list(zip(range(5), A_VAL)), "cnn2": list(zip(range(5), B_VAL))})
    row = one(expkit.compare(paths, "cnn1", "cnn2"))
    expected = stats.ttest_rel(A_VAL, B_VAL)
    assert row["test"] == "paired"
    assert row["p_value"] == pytest.approx(expected.pvalue, rel=1e-9)
    assert row["ci_low"] == pytest.approx(expected.confidence_interval(0.95).low, rel=1e-9)
    # forced Welch on the same runs gives Welch's number, not the paired one
    welch = one(expkit.compare(paths, "cnn1", "cnn2", test="welch"))
    assert welch["test"] == "welch"
    assert welch["p_value"] == pytest.approx(stats.ttest_ind(A_VAL, B_VAL, equal_var=False).pvalue, rel=1e-9)


def test_paired_refused_for_different_seeds_and_one_seed_gives_no_test():
    row = compare_values({0: 0.8, 1: 0.82}, {2: 0.7, 3: 0.71}, test="paired")
    assert math.isnan(row["p_value"]) and row["note"].startswith("paired: the rows ran different seeds")
    single = compare_values({0: 0.8}, {0: 0.7, 1: 0.72})
    assert single["note"] == ONE_SEED and math.isnan(single["p_value"]) and math.isnan(single["ci_low"])
    assert single["difference"] == pytest.approx(0.8 - 0.71)


def test_bootstrap_interval_and_permutation_p_are_scipys_and_fixed():
    a, b = {i: v for i, v in enumerate(A_VAL)}, {i + 5: v for i, v in enumerate(B_VAL)}
    row = compare_values(a, b, test="bootstrap")
    assert row["test"] == "bootstrap"
    assert row["ci_low"] > 0  # every resample keeps cnn1 ahead
    # five against five: 252 splits, all enumerated; only the observed split is as extreme, in both tails
    assert row["p_value"] == pytest.approx(2 / 252)
    assert compare_values(a, b, test="bootstrap") == row  # a fixed random state: the same interval every time


def test_against_a_published_number_is_a_one_sample_test():
    row = compare_values({0: 0.80, 1: 0.82, 2: 0.81}, 0.7980)
    expected = stats.ttest_1samp([0.80, 0.82, 0.81], 0.7980)
    assert row["test"] == "one-sample" and row["seeds"] == "3 vs published"
    assert row["p_value"] == pytest.approx(expected.pvalue)
    assert row["ci_low"] == pytest.approx(expected.confidence_interval(0.95).low - 0.7980)


def test_compare_all_and_unknown_rows(tmp_path):
    paths = write_rows(tmp_path, {"base": [(0, 0.80), (1, 0.81)], "a": [(0, 0.85), (1, 0.86)], "b": [(0, 0.79)]})
    runs = collect_runs(paths)
    table = comparison_table(runs)
    tests = table_tests(runs, table, compare_all=True, baseline="base", metrics=["best_val_accuracy"])
    assert [(r["a"], r["b"], r["note"]) for r in tests.to_dict("records")] == [("a", "base", ""), ("b", "base", ONE_SEED)]
    with pytest.raises(ConfigError, match="'c' names no row"):
        table_tests(runs, table, compare=[["a", "c"]])
    with pytest.raises(ConfigError, match="--baseline"):
        table_tests(runs, table, compare_all=True)


def test_cli_table_compare_prints_the_tests(tmp_path):
    write_rows(tmp_path / "runs", {"cnn1": list(zip(range(5), A_VAL)), "cnn2": list(zip(range(5, 10), B_VAL)),
                                   "one": [(0, 0.5)]})
    cmd = [sys.executable, "-m", "expkit", "table", str(tmp_path / "runs" / "cnn1" / "seed0")]
    cmd += [str(p) for p in sorted((tmp_path / "runs").glob("*/seed*"))][1:]
    out = subprocess.run(cmd + ["--compare", "cnn1", "cnn2", "--compare", "one", "cnn2"], capture_output=True,
                         text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    p = stats.ttest_ind(A_VAL, B_VAL, equal_var=False).pvalue
    assert f"| cnn1 - cnn2 | best_val_accuracy | welch | 5 vs 5 | +0.0208 | " in out.stdout
    assert f"| {p:.4f} |" in out.stdout
    assert f"| one - cnn2 | best_val_accuracy |  | 1 vs 5 | -0.3256 | {ONE_SEED} |  |" in out.stdout
    bad = subprocess.run(cmd + ["--compare-all"], capture_output=True, text=True, cwd=REPO)
    assert bad.returncode == 2 and "--compare-all" in bad.stderr and "Traceback" not in bad.stderr
    # csv: the table stays one table (for `expkit diff`); the tests go beside it
    out = subprocess.run(cmd + ["--compare", "cnn1", "cnn2", "--format", "csv", "-o", str(tmp_path / "t.csv")],
                         capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "t.csv").read_text().startswith("run,")
    assert (tmp_path / "t.tests.csv").read_text().startswith("a,b,metric,test,seeds,difference,ci_low,ci_high,p_value,note\n")


def test_the_html_report_shows_the_tests(tmp_path):
    from expkit.report.html import render_html_report

    paths = write_rows(tmp_path, {"cnn1": list(zip(range(5), A_VAL)), "cnn2": list(zip(range(5, 10), B_VAL)),
                                  "one": [(0, 0.5)]})
    page = render_html_report(paths, baseline="cnn2", compare_all=True)
    p = stats.ttest_ind(A_VAL, B_VAL, equal_var=False).pvalue
    assert "<h2>Is the difference real?</h2>" in page
    assert (f"<tr><td>cnn1 - cnn2</td><td>best_val_accuracy</td><td>welch</td><td>5 vs 5</td><td>+0.0208</td>"
            in page) and f"<td>{p:.4f}</td>" in page
    assert f"<tr><td>one - cnn2</td><td>best_val_accuracy</td><td></td><td>1 vs 5</td><td>-0.3256</td><td>{ONE_SEED}</td>" in page
    assert "Is the difference real?" not in render_html_report(paths)
