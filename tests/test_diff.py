import csv

import pytest

from expkit.diff import diff_tables
from expkit.errors import ConfigError
from expkit.report import collect_runs, comparison_table, format_table
from test_report import write_run, write_sweep


def write_table(path, runs, **kwargs):
    path.write_text(format_table(comparison_table(collect_runs(runs), **kwargs), "csv"))
    return path


def edit_csv(src, dst, edit):
    """Copy a table CSV, calling edit(rows) on its list of row dicts first."""
    with open(src, newline="") as fh:
        reader = csv.DictReader(fh)
        rows, columns = list(reader), reader.fieldnames
    rows = edit(rows) or rows
    with open(dst, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return dst


@pytest.fixture
def table(tmp_path):
    runs = [write_run(tmp_path / "cnn1" / "r", name="cnn1", best=(0.84, 0.8455, 0.44, 0.4194)),
            write_run(tmp_path / "cnn2" / "r", name="cnn2", best=(0.82, 0.7980, 0.49, 0.5364))]
    return write_table(tmp_path / "old.csv", runs)


def set_value(run, column, value):
    def edit(rows):
        for row in rows:
            if row["run"] == run:
                row[column] = value
    return edit


def test_a_table_against_itself_is_no_change(table):
    result = diff_tables(table, table, fail_on_worse="best_val_accuracy")
    assert result.text == "no change (2 rows match)\n"
    assert result.worse is False and result.changed is False
    assert [(r.label, r.change) for r in result.rows] == [("cnn1", "same"), ("cnn2", "same")]


def test_worse_beyond_the_tolerance(table, tmp_path):
    new = edit_csv(table, tmp_path / "new.csv", set_value("cnn1", "best_val_accuracy", "0.8255"))
    result = diff_tables(table, new, fail_on_worse="best_val_accuracy", tolerance=0.01)
    assert result.worse is True
    assert result.text == (
        "~ cnn1\n"
        "    best_val_accuracy  0.8455 -> 0.8255  -0.0200  worse\n"
        "1 changed, 1 same\n"
        "worse: best_val_accuracy got worse by more than 0.01 in 1 row(s): cnn1\n")
    (delta,) = [d for d in result.rows[0].deltas if d.metric == "best_val_accuracy"]
    assert (delta.old, delta.new, delta.verdict) == (0.8455, 0.8255, "worse")
    assert delta.delta == pytest.approx(-0.02)


def test_worse_within_the_tolerance_passes(table, tmp_path):
    new = edit_csv(table, tmp_path / "new.csv", set_value("cnn1", "best_val_accuracy", "0.8355"))
    # exactly the tolerance (0.01, despite 0.8455 - 0.8355 = 0.010000000000000009) is not beyond it
    assert diff_tables(table, new, fail_on_worse="best_val_accuracy", tolerance=0.01).worse is False
    assert diff_tables(table, new, fail_on_worse="best_val_accuracy", tolerance=0.005).worse is True
    # another metric getting worse does not fail this one
    assert diff_tables(table, new, fail_on_worse="best_val_loss").worse is False


def test_direction_losses_lower_is_better(table, tmp_path):
    new = edit_csv(table, tmp_path / "new.csv", set_value("cnn2", "best_val_loss", "0.6000"))
    result = diff_tables(table, new, fail_on_worse="best_val_loss")
    assert result.worse is True
    assert "    best_val_loss      0.5364 -> 0.6000  +0.0636  worse\n" in result.text
    better = edit_csv(table, tmp_path / "better.csv", set_value("cnn2", "best_val_loss", "0.5000"))
    result = diff_tables(table, better, fail_on_worse="best_val_loss")
    assert result.worse is False and "-0.0364  better" in result.text


def test_a_metric_becoming_nan_is_worse(table, tmp_path):
    new = edit_csv(table, tmp_path / "new.csv", set_value("cnn1", "best_val_loss", "nan"))
    result = diff_tables(table, new, fail_on_worse="best_val_loss", tolerance=100)
    assert result.worse is True
    assert "best_val_loss      0.4194 -> nan  nan  worse" in result.text


def test_added_and_removed_rows(table, tmp_path):
    def swap(rows):
        rows[1]["run"] = "cnn3"
    new = edit_csv(table, tmp_path / "new.csv", swap)
    result = diff_tables(table, new, fail_on_worse="best_val_accuracy")
    assert [(r.label, r.change) for r in result.rows] == [("cnn1", "same"), ("cnn3", "added"), ("cnn2", "removed")]
    assert result.text == "+ cnn3  (added)\n- cnn2  (removed)\n1 same, 1 added, 1 removed\n" + (
        "worse: 1 row(s) of the old table are missing from the new one, so best_val_accuracy was not compared "
        "there: cnn2 (--allow-removed accepts that)\n")
    assert result.worse is True and len(result.reasons) == 1
    allowed = diff_tables(table, new, fail_on_worse="best_val_accuracy", allow_removed=True)
    assert allowed.worse is False and allowed.reasons == [] and "worse:" not in allowed.text
    # without a gate nothing fails
    assert diff_tables(table, new).worse is False


def test_the_gate_fails_when_nothing_matched(table, tmp_path):
    def rename_all(rows):
        for row in rows:
            row["run"] += "_v2"
    new = edit_csv(table, tmp_path / "new.csv", rename_all)
    result = diff_tables(table, new, fail_on_worse="best_val_accuracy", allow_removed=True)
    assert result.worse is True
    assert result.reasons == ["no row of the new table matches a row of the old one, so best_val_accuracy was "
                              "compared nowhere"]
    assert result.text.endswith("worse: no row of the new table matches a row of the old one, so "
                                "best_val_accuracy was compared nowhere\n")


def test_the_gate_fails_on_an_empty_new_table(table, tmp_path):
    new = edit_csv(table, tmp_path / "new.csv", lambda rows: rows.clear())
    result = diff_tables(table, new, fail_on_worse="test_accuracy")
    assert result.worse is True
    assert [r.split(",")[0] for r in result.reasons] == [
        "no row of the new table matches a row of the old one", "2 row(s) of the old table are missing from the new one"]
    assert "cnn1, cnn2 (--allow-removed accepts that)" in result.text


def test_rows_match_by_config_not_by_path_or_order(tmp_path):
    def sweep(name, trials):
        return write_sweep(tmp_path / name, [(t, {"train.learning_rate": lr}, 0, {"best": (0.8, acc, 0.5, 0.5)})
                                             for t, lr, acc in trials])
    old = write_table(tmp_path / "old.csv", [sweep("a", [("t1", 0.1, 0.80), ("t2", 0.01, 0.85)])])
    new = write_table(tmp_path / "new.csv", [sweep("b", [("u2", 0.01, 0.86), ("u1", 0.1, 0.80)])])
    result = diff_tables(old, new)
    assert [(r.key, r.change) for r in result.rows] == [
        ((("run", "sweep_lr[learning_rate=0.01]"), ("train.learning_rate", "0.01")), "changed"),
        ((("run", "sweep_lr[learning_rate=0.1]"), ("train.learning_rate", "0.1")), "same")]


def seeded_table(tmp_path, name, accs):
    return write_table(tmp_path / f"{name}.csv", [
        write_run(tmp_path / name / f"r{seed}", name="cnn1", seed=seed, best=(0.8, acc, 0.5, 0.5))
        for seed, acc in enumerate(accs)])


def test_the_seed_spread_verdict(tmp_path):
    old = seeded_table(tmp_path, "old", [0.80, 0.82])    # mean 0.81, std 0.0141
    near = seeded_table(tmp_path, "near", [0.81, 0.83])  # +0.01: within sqrt(2) * 0.0141 = 0.0199
    far = seeded_table(tmp_path, "far", [0.85, 0.87])    # +0.05: beyond it
    (delta,) = [d for d in diff_tables(old, near).rows[0].deltas if d.metric == "best_val_accuracy"]
    assert delta.spread == pytest.approx(0.02, abs=1e-4) and delta.beyond_spread is False
    result = diff_tables(old, far)
    assert "best_val_accuracy  0.8100 -> 0.8600  +0.0500  better  (beyond the seed spread 0.0199)" in result.text
    assert "(within the seed spread 0.0199)" in diff_tables(old, near).text


def test_no_spread_verdict_without_repeated_seeds(table, tmp_path):
    new = edit_csv(table, tmp_path / "new.csv", set_value("cnn1", "best_val_accuracy", "0.9"))
    (delta,) = [d for d in diff_tables(table, new).rows[0].deltas if d.metric == "best_val_accuracy"]
    assert delta.spread is None and delta.beyond_spread is None
    assert "seed spread" not in diff_tables(table, new).text


def test_seed_count_change_is_reported(tmp_path):
    old = seeded_table(tmp_path, "old", [0.80, 0.80])
    new = seeded_table(tmp_path, "new", [0.80, 0.80, 0.80])
    result = diff_tables(old, new)
    assert result.text.splitlines()[:2] == ["~ cnn1", "    seeds              2 -> 3"]


def test_difference_rows_are_not_compared(tmp_path):
    runs = [write_run(tmp_path / "a" / "r", name="a", best=(0.8, 0.8, 0.5, 0.5)),
            write_run(tmp_path / "b" / "r", name="b", best=(0.7, 0.7, 0.6, 0.6))]
    with_diff = write_table(tmp_path / "old.csv", runs, baseline="b")
    plain = write_table(tmp_path / "new.csv", runs)
    assert diff_tables(with_diff, plain).text == "no change (2 rows match)\n"


def test_unknown_metric_lists_the_metric_columns(table):
    with pytest.raises(ConfigError, match=r"unknown metric 'val_acc' \(metrics in both tables: best_accuracy, "
                                          r"best_val_accuracy, best_loss, best_val_loss, test_loss, test_accuracy, "
                                          r"fit_seconds\)"):
        diff_tables(table, table, fail_on_worse="val_acc")


def test_not_a_table(tmp_path, table):
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ConfigError, match="x.csv: not an expkit table"):
        diff_tables(table, tmp_path / "x.csv")
    with pytest.raises(ConfigError, match="missing.csv: file not found"):
        diff_tables(tmp_path / "missing.csv", table)


@pytest.mark.parametrize("tolerance", [float("nan"), float("inf"), -0.1])
def test_non_finite_or_negative_tolerance_is_refused(table, tmp_path, tolerance):
    new = edit_csv(table, tmp_path / "new.csv", set_value("cnn1", "best_val_accuracy", "0.8255"))
    with pytest.raises(ConfigError, match="--tolerance must be a finite number >= 0"):
        diff_tables(table, new, fail_on_worse="best_val_accuracy", tolerance=tolerance)


def test_rows_of_one_folder_match_by_path_when_labels_repeat(tmp_path):
    """A sweep folder with trials of two datasets labels each trial twice, told apart by `grid`, which flips when
    the sweep runs again: rows pair up by their run folder, so nothing retrained means nothing changed."""
    head = "run,path,status,grid,data.dataset,best_val_accuracy\n"
    old = tmp_path / "old.csv"
    new = tmp_path / "new.csv"
    old.write_text(head + "s[lr=1],runs/s/a,ok,,sample,0.8\ns[lr=1],runs/s/b,ok,earlier,full,0.5\n")
    new.write_text(head + "s[lr=1],runs/s/b,ok,,full,0.5\ns[lr=1],runs/s/a,ok,earlier,sample,0.8\n")
    result = diff_tables(old, new, fail_on_worse="best_val_accuracy")
    assert [r.change for r in result.rows] == ["same", "same"]
    assert result.worse is False
    assert [d.old for r in result.rows for d in r.deltas if d.metric == "best_val_accuracy"] == [0.5, 0.8]


# --- --significance: a gate that knows noise ---------------------------------------------------------


def test_significance_passes_a_drop_inside_the_noise_and_fails_one_outside(tmp_path):
    from scipy import stats

    old = seeded_table(tmp_path, "old", [0.80, 0.82, 0.81, 0.79, 0.83])
    noisy = seeded_table(tmp_path, "noisy", [0.79, 0.81, 0.80, 0.82, 0.78])  # -0.01, std 0.0158: noise
    worse = seeded_table(tmp_path, "worse", [0.76, 0.77, 0.75, 0.76, 0.77])  # -0.05: a real drop
    # without a test both fail a zero tolerance
    assert diff_tables(old, noisy, fail_on_worse="best_val_accuracy").worse is True
    passed = diff_tables(old, noisy, fail_on_worse="best_val_accuracy", significance=0.05)
    assert passed.worse is False and passed.reasons == []
    (delta,) = [d for d in passed.rows[0].deltas if d.metric == "best_val_accuracy"]
    expected = stats.ttest_ind([0.79, 0.81, 0.80, 0.82, 0.78], [0.80, 0.82, 0.81, 0.79, 0.83], equal_var=False,
                               alternative="less").pvalue
    assert delta.p_value == pytest.approx(expected, rel=1e-3)  # the tables hold 4 decimals of each std
    assert delta.p_value > 0.05
    failed = diff_tables(old, worse, fail_on_worse="best_val_accuracy", significance=0.05)
    assert failed.worse is True
    (reason,) = failed.reasons
    p = stats.ttest_ind([0.76, 0.77, 0.75, 0.76, 0.77], [0.80, 0.82, 0.81, 0.79, 0.83], equal_var=False,
                        alternative="less").pvalue
    assert reason == f"best_val_accuracy got worse by Welch's test at 0.05 in 1 row(s): cnn1 (-0.0480, p={p:.4f})"
    assert "p=" in failed.text.splitlines()[1]  # the delta line says its p-value


def test_significance_judges_one_seed_rows_by_the_tolerance(table, tmp_path):
    new = edit_csv(table, tmp_path / "new.csv", set_value("cnn1", "best_val_accuracy", "0.8255"))
    result = diff_tables(table, new, fail_on_worse="best_val_accuracy", significance=0.05, tolerance=0.01)
    assert result.reasons == ["best_val_accuracy got worse by more than 0.01 in 1 row(s): cnn1 (one seed, or a "
                              "published number, on a side: judged by --tolerance)"]
    assert diff_tables(table, new, fail_on_worse="best_val_accuracy", significance=0.05, tolerance=0.03).worse is False


def test_significance_needs_the_gate_and_a_level(table):
    with pytest.raises(ConfigError, match="--significance is the level of --fail-on-worse"):
        diff_tables(table, table, significance=0.05)
    with pytest.raises(ConfigError, match="between 0 and 1"):
        diff_tables(table, table, fail_on_worse="best_val_accuracy", significance=5)


def test_cli_significance_exit_status(tmp_path):
    import subprocess
    import sys

    from test_report import REPO

    old = seeded_table(tmp_path, "old", [0.80, 0.82, 0.81])
    noisy = seeded_table(tmp_path, "noisy", [0.79, 0.81, 0.82])
    worse = seeded_table(tmp_path, "worse", [0.70, 0.71, 0.70])
    gate = ["--fail-on-worse", "best_val_accuracy", "--significance", "0.05"]
    run = [sys.executable, "-m", "expkit", "diff", str(old)]
    passed = subprocess.run(run + [str(noisy), *gate], capture_output=True, text=True, cwd=REPO)
    assert passed.returncode == 0, passed.stdout + passed.stderr
    failed = subprocess.run(run + [str(worse), *gate], capture_output=True, text=True, cwd=REPO)
    assert failed.returncode == 1
    assert "worse: best_val_accuracy got worse by Welch's test at 0.05 in 1 row(s): cnn1 (-0.1067, p=" in failed.stdout
