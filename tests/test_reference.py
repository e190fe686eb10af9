"""report/reference.py: published numbers as rows beside ours; `--difference` rows; `expkit diff` with a
reference file; the seed-000 reference files, faithful configs and candidate sweeps; `provenance`."""

import math
import re
from pathlib import Path

import pytest

from expkit.cli import main
from expkit.config import load_config, validate
from expkit.diff import diff_tables
from expkit.errors import ConfigError
from expkit.report import (PUBLISHED, add_differences, collect_runs, comparison_table, format_table, load_reference,
                           with_reference)
from expkit.sweeps.trials import expand_sweep
from test_report import write_run

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
MODELS_CSV = CONFIGS / "reference" / "seed000_models.csv"
VARIANTS_CSV = CONFIGS / "reference" / "seed000_variants.csv"

REFERENCE = """# a comment saying where the numbers come from
run,status,params,best_accuracy,best_val_accuracy,best_loss,best_val_loss,epochs
baseline,published,25450,0.7160,0.7313,1.0592,1.0020,5
cnn1,published,2378826,0.8434,0.8455,0.4389,0.4194,5
Difference (CNN1 - CNN2),published,,-0.0219,-0.0475,+0.0540,+0.1169,
"""


@pytest.fixture
def runs(tmp_path):
    """baseline and cnn1, two seeds each, as runs/<name>/<run-id> folders (the seed 000 table's shape)."""
    folders = []
    for name, results in {"baseline": [(0.71, 0.72, 1.04, 1.00), (0.73, 0.74, 1.02, 0.98)],
                          "cnn1": [(0.84, 0.85, 0.44, 0.42), (0.86, 0.87, 0.40, 0.40)]}.items():
        for seed, best in enumerate(results):
            folders.append(write_run(tmp_path / "runs" / f"seed{seed}" / name / "r1", name=name, seed=seed,
                                     best=best, params=25450 if name == "baseline" else 2378826))
    return folders


@pytest.fixture
def reference(tmp_path):
    path = tmp_path / "ref.csv"
    path.write_text(REFERENCE)
    return path


def rows_of(table):
    return {r["run"]: r for r in table.to_dict("records")}


# --- the reference file -------------------------------------------------------------------------


def test_load_reference_skips_comments_and_keeps_empty_cells_as_not_reported(reference):
    rows = load_reference(reference)
    assert [r["run"] for r in rows] == ["baseline", "cnn1", "Difference (CNN1 - CNN2)"]
    assert all(r["status"] == PUBLISHED and r["path"] == str(reference) for r in rows)
    assert rows[0]["best_val_accuracy"] == 0.7313 and rows[0]["params"] == 25450
    assert rows[2]["best_loss"] == 0.054 and math.isnan(rows[2]["params"])


@pytest.mark.parametrize("text, message", [
    ("model,best_val_accuracy\nx,0.7\n", "expected a CSV with a 'run' column"),
    ("run,best_val_acc\nx,0.7\n", "unknown column 'best_val_acc'; did you mean 'best_val_accuracy'?"),
    ("run,best_val_accuracy\nx,0.7\nx,0.8\n", "row 2 ('x'): run 'x' is listed twice"),
    ("run,best_val_accuracy\nx,73.13%\n", "row 1 ('x'): best_val_accuracy: expected a number or an empty cell, found '73.13%'"),
    ("run,status,best_val_accuracy\nx,done,0.7\n", "status must be 'published' (or empty), found 'done'"),
    ("run,best_val_accuracy\n", "no rows"),
])
def test_load_reference_refuses_what_it_cannot_show(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_reference(path)
    assert message in str(err.value) and str(path) in str(err.value)


# --- the table ----------------------------------------------------------------------------------


def test_published_rows_stand_beside_ours(runs, reference):
    table = with_reference(comparison_table(collect_runs(runs)), reference)
    assert list(table["run"]) == ["baseline", "baseline (published)", "cnn1", "cnn1 (published)",
                                  "Difference (CNN1 - CNN2) (published)"]
    assert list(table["status"]) == ["done", PUBLISHED, "done", PUBLISHED, PUBLISHED]
    published = rows_of(table)["cnn1 (published)"]
    assert published["best_val_accuracy"] == 0.8455 and math.isnan(published["best_val_accuracy_std"])
    assert published["path"] == str(reference)
    assert rows_of(table)["cnn1"]["seeds"] == 2  # ours: the mean of the two seeds


def test_published_numbers_the_report_does_not_give_are_empty_not_nan(runs, reference):
    table = with_reference(comparison_table(collect_runs(runs)), reference)
    md = {line.split(" | ")[0].lstrip("| "): line for line in format_table(table, "markdown").splitlines()}
    assert md["cnn1 (published)"].endswith(
        "| published |  | 2378826 | 0.8434 | 0.8455 | 0.4389 | 0.4194 |  |  |  | 5 |")
    assert md["Difference (CNN1 - CNN2) (published)"].endswith(
        "| published |  |  | -0.0219 | -0.0475 | +0.0540 | +0.1169 |  |  |  |  |")
    csv_rows = format_table(table, "csv").splitlines()
    assert csv_rows[2].startswith("baseline (published),published,,25450,0.7160,,0.7313,,")
    assert csv_rows[2].endswith(f",5,,{reference}")  # epochs 5, its std (not given) empty, the file as path


def test_reference_differences_are_ours_minus_published_in_our_spreads(runs, reference):
    table = with_reference(comparison_table(collect_runs(runs)), reference, differences=True)
    diff = rows_of(table)["Difference (cnn1 - cnn1 (published))"]
    assert diff["best_val_accuracy"] == pytest.approx(0.86 - 0.8455)
    ours = rows_of(table)["cnn1"]
    assert diff["best_val_accuracy_std"] == pytest.approx(ours["best_val_accuracy_std"])  # the published one: exact
    assert math.isnan(diff["test_accuracy"])  # not published
    line = next(l for l in format_table(table, "markdown").splitlines() if "cnn1 - cnn1 (published)" in l)
    # +0.0145 is 1.0 of our seed spread (0.0141): within 2 standard deviations
    assert "| +0.0145 (1.0σ) |" in line and "| +0 |" in line and line.endswith("|  |  |  | +0 |")


def test_published_rows_without_a_run_of_their_name_are_left_out_unless_asked(tmp_path, reference):
    table = comparison_table(collect_runs([write_run(tmp_path / "other" / "r", name="other", best=(0.5, 0.5, 1, 1))]))
    left_out = []
    assert list(with_reference(table, reference, differences=True, left_out=left_out)["run"]) == ["other"]
    assert left_out == ["baseline (published)", "cnn1 (published)", "Difference (CNN1 - CNN2) (published)"]
    out = with_reference(table, reference, differences=True, every=True)
    assert list(out["run"]) == ["other", "baseline (published)", "cnn1 (published)",
                                "Difference (CNN1 - CNN2) (published)"]  # and no difference to compute


def test_a_table_of_cnn1_gets_cnn1s_published_row_not_the_baselines(runs, reference, capsys):
    """--reference added every published row, a `baseline (published)` row in a table without a
    baseline; now only those beside our rows, and one line names what was left out."""
    paths = [str(p.parent) for p in runs if p.parent.name == "cnn1"]
    assert main(["table", *paths, "--reference", str(reference), "--format", "csv"]) == 0
    out, err = capsys.readouterr()
    assert [line.split(",")[0] for line in out.splitlines()[1:]] == [
        "cnn1", "cnn1 (published)", "Difference (CNN1 - CNN2) (published)"]
    assert err.strip() == (f"--reference {reference}: 1 published row(s) stand beside none of this table's rows and "
                           "are left out (baseline (published)); --reference-all shows them")
    assert main(["table", *paths, "--reference", str(reference), "--reference-all", "--format", "csv"]) == 0
    assert "baseline (published)" in capsys.readouterr().out


def test_a_published_row_stands_after_the_sweep_trials_of_its_name(tmp_path, reference):
    table = comparison_table(collect_runs([write_run(tmp_path / f"r{b}", name="baseline",
                                                     config={"train.batch_size": b}, best=(0.7, acc, 1.0, 1.0))
                                           for b, acc in ((32, 0.80), (128, 0.72))]))
    assert list(table["run"]) == ["baseline[batch_size=32]", "baseline[batch_size=128]"]  # as a sweep's trials
    out = with_reference(table, reference, differences=True)
    assert list(out["run"])[:3] == ["baseline[batch_size=32]", "baseline[batch_size=128]", "baseline (published)"]
    diffs = {r["run"]: r["best_val_accuracy"] for r in out.to_dict("records") if r["run"].startswith("Difference (b")}
    assert diffs == pytest.approx({"Difference (baseline[batch_size=32] - baseline (published))": 0.80 - 0.7313,
                                   "Difference (baseline[batch_size=128] - baseline (published))": 0.72 - 0.7313})


def test_a_second_reference_keeps_the_first_ones_rows_in_place(runs, reference, tmp_path):
    other = tmp_path / "other.csv"
    other.write_text("run,test_accuracy\ncnn1,0.84\ncnn9,0.5\n")
    table = with_reference(with_reference(comparison_table(collect_runs(runs)), reference, differences=True), other)
    assert list(table["run"]) == [
        "baseline", "baseline (published)", "cnn1", "cnn1 (published)", "cnn1 (published)",
        "Difference (CNN1 - CNN2) (published)", "Difference (baseline - baseline (published))",
        "Difference (cnn1 - cnn1 (published))"]  # cnn9 stands beside none of ours
    assert list(table["test_accuracy"])[4] == 0.84


def test_difference_is_computed_as_labelled(runs, reference):
    table = add_differences(with_reference(comparison_table(collect_runs(runs)), reference),
                            ["cnn1-baseline", "baseline (published)-cnn1 (published)"])
    rows = rows_of(table)
    assert rows["Difference (cnn1 - baseline)"]["best_val_accuracy"] == pytest.approx(0.86 - 0.73)
    # the spread of a difference of two means: sqrt(std_a² + std_b²)
    std = math.hypot(rows["cnn1"]["best_val_accuracy_std"], rows["baseline"]["best_val_accuracy_std"])
    assert rows["Difference (cnn1 - baseline)"]["best_val_accuracy_std"] == pytest.approx(std)
    published = rows["Difference (baseline (published) - cnn1 (published))"]
    assert published["best_val_accuracy"] == pytest.approx(0.7313 - 0.8455)
    assert published["best_val_accuracy_std"] == 0  # two published numbers: no spread known, no σ shown
    assert "| -0.1142 |" in format_table(table, "markdown").splitlines()[-1]


def test_difference_labels_may_hold_dashes(tmp_path):
    table = comparison_table(collect_runs([write_run(tmp_path / "a" / "r", name="lr-1e-05", best=(0.7, 0.7, 1, 1)),
                                           write_run(tmp_path / "b" / "r", name="lr-0.1", best=(0.6, 0.6, 1, 1))]))
    rows = rows_of(add_differences(table, ["lr-1e-05-lr-0.1"]))
    assert rows["Difference (lr-1e-05 - lr-0.1)"]["best_accuracy"] == pytest.approx(0.1)
    with pytest.raises(ConfigError, match="does not name two rows as A-B"):
        add_differences(table, ["lr-1e-05-cnn9"])


def test_tables_without_a_reference_have_no_spread_on_difference_rows(runs):
    # --baseline's difference rows are as before: no σ, nothing new in any cell
    text = format_table(comparison_table(collect_runs(runs), baseline="cnn1"), "markdown")
    assert "σ" not in text and "published" not in text


# --- the command --------------------------------------------------------------------------------


def test_cli_table_with_reference_and_differences(runs, reference, capsys):
    paths = [str(p.parent) for p in runs]
    assert main(["table", *paths, "--reference", str(reference), "--reference-differences",
                 "--difference", "cnn1-baseline", "--format", "csv"]) == 0
    labels = [line.split(",")[0] for line in capsys.readouterr().out.splitlines()[1:]]
    assert labels == ["baseline", "baseline (published)", "cnn1", "cnn1 (published)", "Difference (CNN1 - CNN2) (published)",
                      "Difference (baseline - baseline (published))", "Difference (cnn1 - cnn1 (published))",
                      "Difference (cnn1 - baseline)"]


def test_cli_reference_differences_without_a_reference_is_an_error(runs, capsys):
    assert main(["table", str(runs[0]), "--reference-differences"]) == 2
    assert "give them with --reference FILE" in capsys.readouterr().err


# --- expkit diff ----------------------------------------------------------------------------------


def test_diff_takes_a_reference_file_on_either_side(runs, reference, tmp_path):
    ours = tmp_path / "ours.csv"
    ours.write_text(format_table(comparison_table(collect_runs(runs)), "csv"))
    result = diff_tables(reference, ours)
    assert [(r.label, r.change) for r in result.rows] == [("baseline", "changed"), ("cnn1", "changed")]
    assert result.rows[0].seeds is None and "    seeds " not in result.text  # the report gives no seed count
    val = next(d for d in result.rows[1].deltas if d.metric == "best_val_accuracy")
    assert (val.old, val.new) == (0.8455, pytest.approx(0.86))
    assert val.spread == pytest.approx(0.0141, abs=1e-4) and val.beyond_spread is True  # 0.0145 > 0.0141
    assert {d.metric for d in result.rows[0].deltas} == {"params", "best_accuracy", "best_val_accuracy", "best_loss",
                                                         "best_val_loss", "epochs"}  # only what the report gives
    back = diff_tables(ours, reference, fail_on_worse="best_val_accuracy")
    assert [r.label for r in back.rows] == ["baseline", "cnn1"] and back.worse is True


# --- seed 000: the reference files, as printed ------------------------------------------------------------


def test_seed000_models_reference_holds_the_printed_table():
    rows = {r["run"]: r for r in load_reference(MODELS_CSV)}
    printed = {"baseline": (0.7160, 0.7313, 1.0592, 1.0020, 25450), "cnn1": (0.8434, 0.8455, 0.4389, 0.4194, 2378826),
               "cnn2": (0.8215, 0.7980, 0.4929, 0.5364, 798154)}
    for run, values in printed.items():
        row = rows[run]
        assert (row["best_accuracy"], row["best_val_accuracy"], row["best_loss"], row["best_val_loss"],
                row["params"]) == values
        assert row["epochs"] == 5


def test_seed000_printed_difference_row_holds_cnn2_minus_cnn1():
    rows = {r["run"]: r for r in load_reference(MODELS_CSV)}
    printed = rows["Difference (CNN1 - CNN2)"]
    for metric in ("best_accuracy", "best_val_accuracy", "best_loss", "best_val_loss"):
        cnn2_minus_cnn1 = rows["cnn2"][metric] - rows["cnn1"][metric]
        assert printed[metric] == pytest.approx(cnn2_minus_cnn1, abs=1.5e-4)  # printed from unrounded values
        assert math.copysign(1, printed[metric]) != math.copysign(1, -cnn2_minus_cnn1)


def test_seed000_variants_reference_holds_the_printed_table():
    rows = {r["run"]: (r["test_loss"], r["test_accuracy"], r["fit_seconds"], r["epochs"])
            for r in load_reference(VARIANTS_CSV)}
    assert rows == {"cnn2_leaky": (2.54, 0.8189, 1507, 10), "cnn2_dropout": (0.6033, 0.7641, 1592, 10),
                    "cnn2_l2": (2.61, 0.7799, 1432, 10), "cnn2_base": (0.6032, 0.7640, 1350, 10)}


# --- seed 000: faithful configs, candidate sweeps, the Makefile --------------------------------------------

FAITHFUL = {"baseline": "baseline", "cnn1": "cnn1", "cnn2": "cnn2", "cnn2_base": "cnn2",
            "cnn2_leaky": "cnn2_leaky", "cnn2_dropout": "cnn2_dropout", "cnn2_l2": "cnn2_l2"}


@pytest.mark.parametrize("name, base", sorted(FAITHFUL.items()))
def test_seed000_faithful_configs_change_only_the_unstated_settings(name, base):
    cfg = load_config(CONFIGS / "seed000" / f"{name}.yaml")
    top = load_config(CONFIGS / f"{base}.yaml")
    assert cfg.name == name and cfg.provenance == "reproduced"
    assert cfg.model == top.model  # the seed's printed layers (tests/test_configs.py checks those)
    assert (cfg.data.dataset, cfg.data.layout, cfg.seed) == ("fashion_mnist", "flat", 14)
    assert (cfg.train.optimizer, cfg.train.loss) == ("sgd", "categorical_crossentropy")
    first = (CONFIGS / "seed000" / f"{name}.yaml").read_text().splitlines()[0]
    assert first.startswith("# Seed 000 ")


@pytest.mark.parametrize("name, trials", [("candidates_baseline", 24), ("candidates_cnn1", 12),
                                          ("candidates_cnn2", 12), ("candidates_variants", 12)])
def test_seed000_candidate_sweeps_expand(name, trials):
    cfg = load_config(CONFIGS / "seed000" / f"{name}.yaml")
    assert len(expand_sweep(cfg)) == trials
    assert cfg.sweep.seeds == [14, 15, 16]


def test_makefile_seed000_names_files_that_exist():
    text = (REPO / "Makefile").read_text()
    target = text[text.index("\nSEED000 ="):]
    target = target[:target.index("\nbench:")]
    for path in re.findall(r"configs/reference/[\w.]+\.csv", target):
        assert (REPO / path).is_file(), path
    assert "--difference cnn1-cnn2" in target and "--reference" in target


# --- provenance ------------------------------------------------------------------------------------------

INVENTED = ["quickstart", "sweep_batch", "sweep_optimizer", "sweep_dropout", "sweep_depth", "sweep_units",
            "mnist_2g_cnn"]


@pytest.mark.parametrize("name", INVENTED)
def test_configs_the_seeds_do_not_specify_say_so(name):
    assert load_config(CONFIGS / f"{name}.yaml").provenance == "invented"


def test_every_config_states_its_provenance():
    unmarked = [p.name for p in CONFIGS.glob("*.yaml") if load_config(p).provenance is None]
    assert unmarked == []


def test_an_unmarked_config_resolves_as_before_provenance_existed():
    cfg = validate({"name": "x", "model": {"layers": [{"dense": {"units": 10}}]}})
    assert cfg.provenance is None and "provenance" not in cfg.to_dict()  # trial ids unchanged
    marked = validate({"name": "x", "provenance": "invented", "model": {"layers": [{"dense": {"units": 10}}]}})
    assert marked.to_dict()["provenance"] == "invented"
    with pytest.raises(ConfigError, match="provenance"):
        validate({"name": "x", "provenance": "guessed", "model": {"layers": [{"dense": {"units": 10}}]}})


def test_provenance_reaches_the_table(tmp_path):
    runs = [write_run(tmp_path / "a" / "r", name="a", config={"provenance": "invented"}, best=(0.5, 0.5, 1, 1)),
            write_run(tmp_path / "b" / "r", name="b", config={"provenance": "reproduced"}, best=(0.5, 0.5, 1, 1))]
    table = comparison_table(collect_runs(runs), only_changed=True)
    assert list(table["provenance"]) == ["invented", "reproduced"]
