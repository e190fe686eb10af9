import copy
import csv
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from expkit.errors import ConfigError
from expkit.report import (architecture, collect_runs, comparison_table, flatten_config, format_table,
                           write_sweep_results)

REPO = Path(__file__).resolve().parents[1]

BASE_CONFIG = {
    "name": "cnn1",
    "description": "",
    "seed": 0,
    "data": {"dataset": "fashion_mnist_sample", "options": {}, "validation_split": None},
    "model": {"layers": [{"reshape": [28, 28, 1]}, {"conv2d": {"filters": 32, "kernel_size": 3, "activation": "relu"}},
                         {"flatten": {}}, {"dense": {"units": 10, "activation": "softmax"}}],
              "input_shape": None},
    "train": {"optimizer": "sgd", "learning_rate": 0.01, "metrics": ["accuracy"], "batch_size": 32, "epochs": 5},
}


def dead_pid() -> int:
    """The pid of a process that has exited."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def write_run(folder: Path, *, name="cnn1", seed=0, config=None, best=None, test=(0.42, 0.84), params=1000,
              fit_seconds=12.0, epochs=5, status="done", pid=None, metrics=None, trial=None) -> Path:
    """A run folder as docs/run-folder.md describes it. `best` is (acc, val_acc, loss, val_loss);
    best=None writes no results.json (a run still going, or killed)."""
    folder.mkdir(parents=True)
    cfg = copy.deepcopy(BASE_CONFIG)
    cfg.update(name=name, seed=seed)
    for key, value in (config or {}).items():
        node = cfg
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    (folder / "status.json").write_text(json.dumps(
        {"status": "running" if best is None else status, "pid": pid or os.getpid(), "started": "2026-11-22T22:15:30+00:00"}))
    if metrics:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(metrics[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(metrics)
        (folder / "metrics.csv").write_text(buf.getvalue())
    if best is not None:
        acc, val_acc, loss, val_loss = best
        record = {"name": name, "run_id": folder.name, "status": status, "error": None, "seed": seed,
                  "params": params, "trainable_params": params,
                  "best": {"accuracy": acc, "val_accuracy": val_acc, "loss": loss, "val_loss": val_loss},
                  "final": {"accuracy": acc, "val_accuracy": val_acc, "loss": loss, "val_loss": val_loss},
                  "test": None if test is None else {"loss": test[0], "accuracy": test[1]},
                  "fit_seconds": fit_seconds, "epochs_run": epochs, "diverged": status == "diverged"}
        if trial is not None:
            record["trial"] = trial
        (folder / "results.json").write_text(json.dumps(record, allow_nan=True))
    return folder


def metric_rows(losses, accs):
    return [{"epoch": i + 1, "loss": l, "accuracy": a, "val_loss": l + 0.1, "val_accuracy": a - 0.01,
             "learning_rate": 0.01, "epoch_seconds": 2.0} for i, (l, a) in enumerate(zip(losses, accs))]


def write_sweep(root: Path, trials, name="sweep_lr", keys=("train.learning_rate",)) -> Path:
    """trials: (id, values, seed, run kwargs or None for a trial with no folder yet)."""
    sweep = root / name
    sweep.mkdir(parents=True)
    manifest = {"name": name, "keys": list(keys), "trials": []}
    for trial_id, values, seed, run in trials:
        manifest["trials"].append({"id": trial_id, "values": values, "seed": seed, "status": "done"})
        if run is not None:
            config = dict(values, **run.pop("config", {}))
            write_run(sweep / trial_id, name=name, seed=seed, config=config,
                      trial={"id": trial_id, "values": values, "seed": seed}, **run)
    (sweep / "manifest.json").write_text(json.dumps(manifest))
    return sweep


@pytest.fixture
def lr_sweep(tmp_path):
    """Three learning rates x two seeds, in a manifest order unlike the folder names' order;
    lr=10 diverged (NaN), lr=0.001 seed 1 not started yet."""
    return write_sweep(tmp_path, [
        ("c3", {"train.learning_rate": 0.01}, 0, {"best": (0.80, 0.82, 0.50, 0.46), "fit_seconds": 10.0}),
        ("a1", {"train.learning_rate": 0.01}, 1, {"best": (0.82, 0.84, 0.48, 0.44), "fit_seconds": 12.0}),
        ("b2", {"train.learning_rate": 10.0}, 0, {"best": (0.10, 0.10, math.nan, math.nan), "status": "diverged",
                                                 "test": (math.nan, 0.1), "fit_seconds": 3.0, "epochs": 2}),
        ("d4", {"train.learning_rate": 0.001}, 0, {"best": (0.70, 0.71, 0.90, 0.88), "fit_seconds": 11.0}),
        ("e5", {"train.learning_rate": 0.001}, 1, None),
    ])


# --- collect_runs ---------------------------------------------------------------------------------


def test_collect_a_run_folder(tmp_path):
    run = write_run(tmp_path / "runs" / "cnn1" / "20261122-221530-a3f9", best=(0.8434, 0.8455, 0.4389, 0.4194),
                    params=2378826, fit_seconds=123.4)
    df = collect_runs([run])
    assert len(df) == 1
    row = df.iloc[0]
    assert (row["run"], row["path"], row["status"], row["seed"]) == ("cnn1", str(run), "done", 0)
    assert (row["params"], row["best_val_accuracy"], row["best_loss"], row["test_accuracy"]) == (2378826, 0.8455, 0.4389, 0.84)
    assert (row["fit_seconds"], row["epochs"]) == (123.4, 5)
    assert row["cfg:train.learning_rate"] == 0.01
    assert row["cfg:model.layers"] == "reshape(28,28,1) conv2d(32,k3,relu) flatten dense(10,softmax)"
    assert list(df.columns[:4]) == ["run", "path", "status", "seed"]


def test_a_config_read_again_comes_from_memory_until_the_file_changes(tmp_path, monkeypatch):
    """A sweep's tables are rebuilt after every batch of trials: each run's config.yaml is parsed once,
    and parsed again when the file is rewritten; a caller changing what it got changes nothing kept."""
    from expkit.report import collect

    run = write_run(tmp_path / "runs" / "cnn1" / "20261122-221530-a3f9", best=(0.8434, 0.8455, 0.4389, 0.4194))
    parsed = []
    real = collect.read_yaml_file
    monkeypatch.setattr(collect, "read_yaml_file", lambda path: parsed.append(path) or real(path))
    assert collect_runs([run]).iloc[0]["cfg:train.learning_rate"] == 0.01
    got = collect._read_config(run / "config.yaml")
    got["train"]["learning_rate"] = 5.0
    assert collect_runs([run]).iloc[0]["cfg:train.learning_rate"] == 0.01
    assert len(parsed) == 1
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["train"]["learning_rate"] = 0.003
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert collect_runs([run]).iloc[0]["cfg:train.learning_rate"] == 0.003
    assert len(parsed) == 2


def test_a_run_name_folder_stands_for_its_latest_finished_run(tmp_path):
    name_dir = tmp_path / "runs" / "cnn1"
    write_run(name_dir / "20261122-100000-aaaa", best=(0.5, 0.5, 1.0, 1.0))
    write_run(name_dir / "20261123-100000-bbbb", best=(0.6, 0.6, 0.9, 0.9))
    write_run(name_dir / "20261124-100000-cccc", best=None, pid=dead_pid())  # killed, no results
    df = collect_runs([name_dir])
    assert df["path"].tolist() == [str(name_dir / "20261123-100000-bbbb")]
    assert df["best_accuracy"].tolist() == [0.6]


def test_running_with_a_dead_pid_is_interrupted_and_metrics_come_from_the_csv(tmp_path):
    killed = write_run(tmp_path / "killed" / "20261122-100000-aaaa", best=None, pid=dead_pid(),
                       metrics=metric_rows([1.0, 0.7, 0.8], [0.5, 0.7, 0.6]))
    alive = write_run(tmp_path / "alive" / "20261122-100000-bbbb", best=None, pid=os.getpid())
    df = collect_runs([killed, alive])
    assert df["status"].tolist() == ["interrupted", "running"]
    assert df["run"].tolist() == ["cnn1", "cnn1"]
    row = df.iloc[0]
    assert (row["best_loss"], row["best_accuracy"], row["epochs"], row["fit_seconds"]) == (0.7, 0.7, 3, 6.0)
    assert row["best_val_loss"] == pytest.approx(0.8)
    assert math.isnan(df.iloc[1]["best_loss"]) and math.isnan(df.iloc[1]["params"])


def test_collect_a_sweep_in_manifest_order(lr_sweep):
    df = collect_runs([lr_sweep])
    assert df["path"].tolist() == [str(lr_sweep / t) for t in ("c3", "a1", "b2", "d4", "e5")]
    assert df["run"].tolist() == ["sweep_lr[learning_rate=0.01]"] * 2 + ["sweep_lr[learning_rate=10.0]"] \
        + ["sweep_lr[learning_rate=0.001]"] * 2
    assert df["status"].tolist() == ["done", "done", "diverged", "done", "pending"]
    assert df["seed"].tolist() == [0, 1, 0, 0, 1]
    assert df["train.learning_rate"].tolist() == [0.01, 0.01, 10.0, 0.001, 0.001]
    assert math.isnan(df.iloc[2]["best_loss"]) and df.iloc[2]["best_accuracy"] == 0.10
    assert df.iloc[4][["best_accuracy", "params", "cfg:train.learning_rate"]].isna().all()


def test_a_plain_run_beside_a_sweep_shows_the_swept_key_from_its_config(tmp_path, lr_sweep):
    run = write_run(tmp_path / "base" / "20261122-100000-aaaa", config={"train.learning_rate": 0.05},
                    best=(0.7, 0.7, 0.6, 0.6))
    df = collect_runs([run, lr_sweep])
    assert df["run"].iloc[0] == "cnn1"
    assert df["train.learning_rate"].iloc[0] == 0.05


def test_a_path_that_is_not_a_run_is_a_config_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="empty: not a run folder: expected a run folder") as err:
        collect_runs([tmp_path / "empty"])
    assert "manifest.json" in str(err.value)
    with pytest.raises(ConfigError, match="nowhere: no such file or folder"):
        collect_runs([tmp_path / "nowhere"])


def test_architecture_string():
    layers = [{"reshape": [28, 28, 1]}, {"conv2d": {"filters": 32, "kernel_size": 3}},
              {"conv2d": {"filters": 64, "kernel_size": [3, 3], "strides": 2, "activation": "relu", "padding": "same"}},
              {"dropout": 0.25}, {"flatten": None}, {"dense": {"units": 64, "l2": 0.001}}, {"dense": 10},
              {"LeakyReLU": {"negative_slope": 0.1}}]
    assert architecture(layers) == ("reshape(28,28,1) conv2d(32,k3) conv2d(64,k3x3,s2,relu,padding=same) dropout(0.25) "
                                    "flatten dense(64,l2=0.001) dense(10) LeakyReLU(negative_slope=0.1)")


def test_flatten_config_dotted_keys():
    flat = flatten_config({"train": {"optimizer": {"name": "adam", "beta_1": 0.9}, "metrics": ["accuracy"],
                                     "schedule": None}, "data": {"options": {}}})
    assert flat == {"train.optimizer.name": "adam", "train.optimizer.beta_1": 0.9, "train.metrics": "[accuracy]",
                    "train.schedule": None, "data.options": "{}"}


# --- comparison_table -----------------------------------------------------------------------------


def test_a_sweep_over_seeds_alone_is_one_row_named_like_its_config(tmp_path):
    """`sweep.seeds` without a grid: the trials are the config's own runs, so the row is `cnn2_base`, the
    name a reference file's published row and `--difference cnn2_leaky-cnn2_base` use."""
    sweep = write_sweep(tmp_path, [(f"t{s}", {}, s, {"best": (0.80 + s / 100, 0.82, 0.50, 0.46)}) for s in (14, 15, 16)],
                        name="cnn2_base", keys=())
    table = comparison_table(collect_runs([sweep]))
    assert table["run"].tolist() == ["cnn2_base"]
    assert table["seeds"].tolist() == [3]
    assert table.iloc[0]["best_accuracy"] == pytest.approx(0.95)


def test_seeds_become_one_row_with_mean_and_std(lr_sweep):
    table = comparison_table(collect_runs([lr_sweep]))
    assert table["run"].tolist() == ["sweep_lr[learning_rate=0.01]", "sweep_lr[learning_rate=10.0]",
                                     "sweep_lr[learning_rate=0.001]"]
    assert table["seeds"].tolist() == [2, 1, 1]
    assert table["status"].tolist() == ["done", "diverged", "1 done, 1 pending"]
    first = table.iloc[0]
    assert first["best_val_accuracy"] == pytest.approx(0.83)
    assert first["best_val_accuracy_std"] == pytest.approx(math.sqrt(2) * 0.01)
    assert first["fit_seconds"] == pytest.approx(11.0)
    assert first["path"] == f"{lr_sweep / 'c3'};{lr_sweep / 'a1'}"
    assert math.isnan(table.iloc[1]["best_val_loss"]) and math.isnan(table.iloc[1]["best_val_loss_std"])
    # the pending seed is not averaged in
    assert table.iloc[2]["best_val_accuracy"] == pytest.approx(0.71)
    assert list(table.columns[:4]) == ["run", "train.learning_rate", "status", "seeds"]
    assert "params_std" not in table.columns and table.columns[-1] == "path"


def test_plain_runs_group_by_label_and_config_apart_from_seed(tmp_path):
    runs = [write_run(tmp_path / "cnn1" / "r1", seed=0, best=(0.8, 0.80, 0.5, 0.5)),
            write_run(tmp_path / "cnn2" / "r1", name="cnn2", best=(0.7, 0.70, 0.6, 0.6)),
            write_run(tmp_path / "cnn1" / "r2", seed=1, best=(0.8, 0.84, 0.5, 0.5)),
            write_run(tmp_path / "cnn1" / "r3", seed=2, config={"train.learning_rate": 0.1}, best=(0.8, 0.6, 0.5, 0.5))]
    table = comparison_table(collect_runs(runs))
    assert table["run"].tolist() == ["cnn1[learning_rate=0.01]", "cnn2", "cnn1[learning_rate=0.1]"]
    assert table["seeds"].tolist() == [2, 1, 1]
    assert table["best_val_accuracy"].tolist() == pytest.approx([0.82, 0.70, 0.6])


def test_only_changed_adds_the_differing_config_keys(tmp_path):
    runs = [write_run(tmp_path / "a" / "r", name="a", seed=0, best=(0.8, 0.8, 0.5, 0.5)),
            write_run(tmp_path / "b" / "r", name="b", seed=7, best=(0.8, 0.8, 0.5, 0.5),
                      config={"train.learning_rate": 0.001, "model.layers": [{"flatten": {}}, {"dense": 10}]})]
    df = collect_runs(runs)
    assert list(comparison_table(df).columns[:3]) == ["run", "status", "seeds"]
    table = comparison_table(df, only_changed=True)
    assert list(table.columns[:5]) == ["run", "model.layers", "train.learning_rate", "status", "seeds"]
    assert table["model.layers"].tolist() == ["reshape(28,28,1) conv2d(32,k3,relu) flatten dense(10,softmax)",
                                              "flatten dense(10)"]
    assert table["train.learning_rate"].tolist() == [0.01, 0.001]
    assert "seed" not in table.columns and "name" not in table.columns


def seed_report_runs(tmp_path):
    """The seed report's models table: best train/val accuracy and loss."""
    return collect_runs([
        write_run(tmp_path / "basic" / "r", name="basic", best=(0.7160, 0.7313, 1.0592, 1.0020), params=25450,
                  test=None, fit_seconds=20.0),
        write_run(tmp_path / "cnn1" / "r", name="cnn1", best=(0.8434, 0.8455, 0.4389, 0.4194), params=2378826,
                  test=None, fit_seconds=120.5),
        write_run(tmp_path / "cnn2" / "r", name="cnn2", best=(0.8215, 0.7980, 0.4929, 0.5364), params=797154,
                  test=None, fit_seconds=99.25),
    ])


def test_baseline_adds_signed_difference_rows(tmp_path):
    table = comparison_table(seed_report_runs(tmp_path), baseline="cnn1")
    assert table["run"].tolist()[3:] == ["Difference (basic - cnn1)", "Difference (cnn2 - cnn1)"]
    diff = table.iloc[4]
    assert [diff[m] for m in ("best_accuracy", "best_val_accuracy", "best_loss", "best_val_loss")] == \
        pytest.approx([-0.0219, -0.0475, +0.0540, +0.1170])
    line = format_table(table, "markdown").splitlines()[-1]
    assert line == ("| Difference (cnn2 - cnn1) |  |  | -1581672 | -0.0219 | -0.0475 | +0.0540 | +0.1170 | nan | nan "
                    "| -21.2 | +0 |")


def test_baseline_by_path_and_unknown_baseline(tmp_path):
    df = seed_report_runs(tmp_path)
    table = comparison_table(df, baseline=str(tmp_path / "cnn2"))  # the run-name folder of the row
    assert table["run"].tolist()[3:] == ["Difference (basic - cnn2)", "Difference (cnn1 - cnn2)"]
    with pytest.raises(ConfigError, match=r"'cnn3' names no row.*rows: basic, cnn1, cnn2"):
        comparison_table(df, baseline="cnn3")


# --- format_table ---------------------------------------------------------------------------------


@pytest.fixture
def small_table(tmp_path):
    runs = [write_run(tmp_path / "cnn1" / "r1", seed=0, best=(0.8434, 0.8424, 0.4389, 0.4194), params=2378826,
                      fit_seconds=120.0),
            write_run(tmp_path / "cnn1" / "r2", seed=1, best=(0.8434, 0.8468, 0.4389, 0.4150), params=2378826,
                      fit_seconds=121.2),
            write_run(tmp_path / "my_base" / "r1", name="my_base", best=(0.7160, 0.7313, 1.0592, 1.0020),
                      params=25450, test=None, fit_seconds=20.0)]
    return comparison_table(collect_runs(runs))


def test_markdown_exactly(small_table):
    assert format_table(small_table, "markdown") == (
        "| run | status | seeds | params | best_accuracy | best_val_accuracy | best_loss | best_val_loss | test_loss "
        "| test_accuracy | fit_seconds | epochs |\n"
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n"
        "| cnn1 | done | 2 | 2378826 | 0.8434 ± 0.0000 | 0.8446 ± 0.0031 | 0.4389 ± 0.0000 | 0.4172 ± 0.0031 "
        "| 0.4200 ± 0.0000 | 0.8400 ± 0.0000 | 120.6 ± 0.8 | 5 ± 0 |\n"
        "| my_base | done | 1 | 25450 | 0.7160 | 0.7313 | 1.0592 | 1.0020 | nan | nan | 20.0 | 5 |\n")


def test_csv_round_trip(small_table, tmp_path):
    text = format_table(small_table, "csv")
    header = text.splitlines()[0].split(",")
    assert header == ["run", "status", "seeds", "params", "best_accuracy", "best_accuracy_std", "best_val_accuracy",
                      "best_val_accuracy_std", "best_loss", "best_loss_std", "best_val_loss", "best_val_loss_std",
                      "test_loss", "test_loss_std", "test_accuracy", "test_accuracy_std", "fit_seconds",
                      "fit_seconds_std", "epochs", "epochs_std", "path"]
    back = pd.read_csv(io.StringIO(text))
    assert back["run"].tolist() == ["cnn1", "my_base"]
    assert back["best_val_accuracy"].tolist() == [0.8446, 0.7313]
    assert back["best_val_accuracy_std"].iloc[0] == 0.0031 and math.isnan(back["best_val_accuracy_std"].iloc[1])
    assert back["params"].tolist() == [2378826, 25450]
    assert math.isnan(back["test_loss"].iloc[1])
    assert back["path"].iloc[0] == f"{tmp_path / 'cnn1' / 'r1'};{tmp_path / 'cnn1' / 'r2'}"
    assert "nan" in text.splitlines()[2].split(",")


def test_latex_is_escaped(small_table):
    text = format_table(small_table, "latex")
    lines = text.splitlines()
    assert lines[0] == "\\begin{tabular}{llrrrrrrrrrr}"
    assert lines[2].startswith("run & status & seeds & params & best\\_accuracy & best\\_val\\_accuracy")
    assert "my\\_base & done & 1 & 25450 & 0.7160 &" in text
    assert "0.8446 $\\pm$ 0.0031" in text
    assert lines[-1] == "\\end{tabular}"


def test_unknown_format(small_table):
    with pytest.raises(ConfigError, match="unknown table format 'html'"):
        format_table(small_table, "html")


# --- write_sweep_results --------------------------------------------------------------------------


def test_write_sweep_results_rebuilds_from_the_folders(lr_sweep):
    csv_path, md_path = write_sweep_results(lr_sweep)
    assert (csv_path, md_path) == (lr_sweep / "results.csv", lr_sweep / "results.md")
    rows = list(csv.DictReader(csv_path.open()))
    assert [r["run"] for r in rows] == ["sweep_lr[learning_rate=0.01]", "sweep_lr[learning_rate=10.0]",
                                        "sweep_lr[learning_rate=0.001]"]
    assert rows[0]["path"] == "c3;a1" and rows[2]["status"] == "1 done, 1 pending"
    assert md_path.read_text().startswith("# sweep_lr\n\n| run | train.learning_rate | status |")
    # the pending trial finishes: results are rebuilt from the folders, not from memory
    write_run(lr_sweep / "e5", name="sweep_lr", seed=1, best=(0.72, 0.73, 0.85, 0.86))
    write_sweep_results(lr_sweep)
    rows = list(csv.DictReader(csv_path.open()))
    assert (rows[2]["status"], rows[2]["seeds"], rows[2]["best_val_accuracy"]) == ("done", "2", "0.7200")
    assert not [p for p in lr_sweep.iterdir() if p.name.endswith(".tmp")]


def test_write_sweep_results_needs_a_sweep(tmp_path):
    with pytest.raises(ConfigError, match="not a sweep folder"):
        write_sweep_results(tmp_path)



# --- damaged records, folders of runs, earlier grids ------------------------------------------------


def warnings(capsys) -> list[str]:
    return capsys.readouterr().err.splitlines()


def test_a_garbage_results_json_is_a_damaged_row_with_a_warning(tmp_path, capsys):
    good = write_run(tmp_path / "cnn1" / "r1", best=(0.8, 0.8, 0.5, 0.5))
    bad = write_run(tmp_path / "cnn1" / "r2", seed=1, best=(0.9, 0.9, 0.4, 0.4))
    (bad / "results.json").write_text('{"name": "cnn1", "status": "do')  # cut off mid-write
    df = collect_runs([good, bad])
    assert df["status"].tolist() == ["done", "damaged"]
    assert df["run"].tolist() == ["cnn1", "cnn1"] and df["seed"].tolist() == [0, 1]
    assert df.iloc[1][list(df.columns[df.columns.get_loc("params"):df.columns.get_loc("epochs") + 1])].isna().all()
    [line] = warnings(capsys)
    assert line.startswith(f"expkit: warning: {bad / 'results.json'}: damaged record: malformed JSON")
    table = comparison_table(df)  # the damaged seed is not averaged in
    assert (table["status"].tolist(), table["seeds"].tolist()) == (["1 done, 1 damaged"], [1])
    assert table["best_val_accuracy"].tolist() == [0.8]


def test_binary_garbage_metrics_csv_of_a_killed_run_is_a_damaged_row(tmp_path, capsys):
    killed = write_run(tmp_path / "cnn1" / "r1", best=None, pid=dead_pid())
    (killed / "metrics.csv").write_bytes(b"\xff\xfe\x00garbage")
    df = collect_runs([killed])
    assert df["status"].tolist() == ["damaged"] and math.isnan(df["epochs"].iloc[0])
    [line] = warnings(capsys)
    assert line.startswith(f"expkit: warning: {killed / 'metrics.csv'}: damaged record: cannot read as CSV")


def test_a_finished_record_is_the_truth_even_beside_a_garbage_metrics_csv(tmp_path, capsys):
    run = write_run(tmp_path / "cnn1" / "r1", best=(0.8, 0.8, 0.5, 0.5))
    (run / "metrics.csv").write_bytes(b"\xff\xfe\x00garbage")
    df = collect_runs([run])
    assert (df["status"].tolist(), df["best_accuracy"].tolist()) == (["done"], [0.8])
    assert warnings(capsys) == []


def test_an_unreadable_status_is_a_damaged_row_naming_status_json(tmp_path, capsys):
    run = write_run(tmp_path / "cnn1" / "r1", best=None)
    (run / "status.json").write_text('{"status": "sleeping", "pid": 1}')
    assert collect_runs([run])["status"].tolist() == ["damaged"]
    [line] = warnings(capsys)
    assert line.startswith(f"expkit: warning: {run / 'status.json'}: damaged record")



def test_an_unreadable_config_is_a_damaged_row_naming_config_yaml(tmp_path, capsys):
    run = write_run(tmp_path / "runs" / "cnn1" / "r1", name="cnn7", best=(0.8, 0.8, 0.5, 0.5))
    (run / "config.yaml").write_bytes(b"\x00\x01binary")
    df = collect_runs([run])
    assert (df["run"].tolist(), df["status"].tolist(), df["seed"].tolist()) == (["cnn7"], ["damaged"], [0])
    assert math.isnan(df["best_accuracy"].iloc[0])
    [line] = warnings(capsys)
    assert line.startswith(f"expkit: warning: {run / 'config.yaml'}: expected a UTF-8 YAML text file")

def test_expkit_table_exits_0_over_damaged_records(tmp_path, capsys, lr_sweep):
    from expkit.cli import main

    (lr_sweep / "c3" / "results.json").write_text("not json at all")
    killed = write_run(tmp_path / "killed" / "r1", best=None, pid=dead_pid(),
                       metrics=metric_rows([1.0, 0.7], [0.5, 0.7]))
    (killed / "metrics.csv").write_bytes(b"\xff\xfe\x00garbage")
    assert main(["table", str(lr_sweep), str(killed)]) == 0
    captured = capsys.readouterr()
    assert "| sweep_lr[learning_rate=0.01] | 0.01 | 1 damaged, 1 done | 1 |" in captured.out
    assert "| cnn1 | 0.01 | damaged | 0 | nan |" in captured.out
    assert [line.split(": ")[2] for line in captured.err.splitlines()] == [
        str(lr_sweep / "c3" / "results.json"), str(killed / "metrics.csv")]
    write_sweep_results(lr_sweep)  # a sweep's own tables survive a damaged trial too
    assert "1 damaged, 1 done" in (lr_sweep / "results.md").read_text()


def test_a_folder_of_run_name_and_sweep_folders_stands_for_each(tmp_path, lr_sweep):
    runs = lr_sweep.parent
    write_run(runs / "cnn2" / "20261122-100000-aaaa", name="cnn2", best=(0.7, 0.7, 0.6, 0.6))
    write_run(runs / "base" / "20261122-100000-aaaa", name="base", best=(0.5, 0.5, 1.0, 1.0))
    write_run(runs / "base" / "20261123-100000-bbbb", name="base", best=(0.6, 0.6, 0.9, 0.9))
    write_run(runs / ".trash" / "20261122-100000-aaaa", name="trash", best=(0.1, 0.1, 2.0, 2.0))
    (runs / "notes").mkdir()  # neither runs nor a sweep: passed over
    (runs / "README.md").write_text("my runs")
    df = collect_runs([runs])
    assert df["path"].tolist() == [str(runs / "base" / "20261123-100000-bbbb"), str(runs / "cnn2" / "20261122-100000-aaaa")] \
        + [str(lr_sweep / t) for t in ("c3", "a1", "b2", "d4", "e5")]
    assert df["run"].tolist()[:3] == ["base", "cnn2", "sweep_lr[learning_rate=0.01]"]
    # one level only: a folder holding a `runs/` is still not a run
    write_run(tmp_path / "outer" / "runs" / "cnn1" / "r1", best=(0.5, 0.5, 1.0, 1.0))
    with pytest.raises(ConfigError, match="outer: not a run folder"):
        collect_runs([tmp_path / "outer"])


def mark_earlier(sweep: Path, *trial_ids, extra_values=None) -> None:
    """Turn trials of the manifest into trials kept from an earlier version of the grid."""
    manifest = json.loads((sweep / "manifest.json").read_text())
    for trial in manifest["trials"]:
        if trial["id"] in trial_ids:
            trial["in_grid"] = False
            trial["values"].update(extra_values or {})
    (sweep / "manifest.json").write_text(json.dumps(manifest))


def test_trials_from_an_earlier_grid_stay_and_are_marked(lr_sweep):
    plain = format_table(comparison_table(collect_runs([lr_sweep])), "markdown")
    mark_earlier(lr_sweep, "b2", "a1", extra_values={"train.batch_size": 64})
    df = collect_runs([lr_sweep])
    assert list(df.columns[:5]) == ["run", "path", "status", "grid", "seed"]
    assert df["grid"].tolist() == ["", "earlier", "earlier", "", ""]
    # the earlier grid's own key labels its trials and nobody else's
    assert df["run"].tolist() == ["sweep_lr[learning_rate=0.01]", "sweep_lr[learning_rate=0.01,batch_size=64]",
                                  "sweep_lr[learning_rate=10.0,batch_size=64]"] + ["sweep_lr[learning_rate=0.001]"] * 2
    table = comparison_table(df)
    assert list(table.columns[:5]) == ["run", "train.learning_rate", "train.batch_size", "status", "grid"]
    assert table["grid"].tolist() == ["", "earlier", "earlier", ""]
    assert table["seeds"].tolist() == [1, 1, 1, 1]  # an earlier trial never averages into the grid's row
    lines = format_table(table, "markdown").splitlines()
    assert lines[0].startswith("| run | train.learning_rate | train.batch_size | status | grid | seeds |")
    assert lines[3].startswith("| sweep_lr[learning_rate=0.01,batch_size=64] | 0.01 | 64 | done | earlier | 1 |")
    # a sweep without earlier trials has no grid column: its table is as it always was
    assert "grid" not in plain and plain.splitlines()[0].startswith("| run | train.learning_rate | status | seeds |")


def test_an_earlier_trial_with_the_same_values_keeps_its_own_row(lr_sweep):
    mark_earlier(lr_sweep, "a1")  # seed 1 of lr=0.01 came from a grid with more seeds
    table = comparison_table(collect_runs([lr_sweep]))
    assert table["run"].tolist()[:2] == ["sweep_lr[learning_rate=0.01]"] * 2
    assert table["grid"].tolist()[:2] == ["", "earlier"]
    assert table["best_val_accuracy"].tolist()[:2] == pytest.approx([0.82, 0.84])


# --- import cost ----------------------------------------------------------------------------------


def test_reporting_never_imports_tensorflow():
    code = ("import sys; import expkit.diff; light = 'pandas' not in sys.modules; "
            "import expkit.report, expkit.report.plots; expkit.report.architecture([{'dense': 3}]); "
            "print(light, any(m.split('.')[0] in ('tensorflow', 'keras', 'matplotlib') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(REPO / "src")}).stdout
    assert out.split() == ["True", "False"]


def test_recording_keys_are_the_same_in_config_and_tables():
    """Tables skip the keys that say how a run was recorded; they must be exactly config's list."""
    from expkit.config import RECORDING_KEYS
    from expkit.report.columns import NOT_COMPARED_KEYS, is_compared

    assert {".".join(k) for k in RECORDING_KEYS} <= set(NOT_COMPARED_KEYS)
    assert not is_compared("train.save_model") and not is_compared("track")
    assert is_compared("train.learning_rate") and not is_compared("seed")


def test_a_vectorised_groups_shared_fit_time_is_marked_in_the_table_and_the_plot(tmp_path):
    """Trials trained as one vectorised program all record that program's time: the table says so
    beside fit_seconds (`fit_shared`), and the sweep plot draws those times apart from own times."""
    from expkit.report.plots import plot_sweep

    sweep = write_sweep(tmp_path, [
        ("a1", {"train.learning_rate": 0.1}, 0, {"best": (0.80, 0.82, 0.50, 0.46), "fit_seconds": 7.0}),
        ("b2", {"train.learning_rate": 0.01}, 0, {"best": (0.82, 0.84, 0.48, 0.44), "fit_seconds": 7.0}),
        ("c3", {"train.learning_rate": 0.001}, 0, {"best": (0.70, 0.71, 0.60, 0.58), "fit_seconds": 3.0}),
    ])
    for trial_id in ("a1", "b2"):
        path = sweep / trial_id / "results.json"
        path.write_text(json.dumps({**json.loads(path.read_text()),
                                    "vectorized": {"group": "1/1", "lane": 0, "chunk": 1, "trials": 2}}))
    table = comparison_table(collect_runs([sweep]))
    assert list(table["fit_shared"]) == ["2 trials", "2 trials", ""]
    assert list(table.columns).index("fit_shared") == list(table.columns).index("fit_seconds_std") + 1
    text = format_table(table, "markdown")
    assert "fit_shared" in text.splitlines()[0] and text.count("2 trials") == 2
    out = plot_sweep(table, "train.learning_rate", tmp_path / "sweep.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (sweep / "a1" / "results.json").write_text(json.dumps({k: v for k, v in json.loads(
        (sweep / "a1" / "results.json").read_text()).items() if k != "vectorized"}))
    (sweep / "b2" / "results.json").write_text(json.dumps({k: v for k, v in json.loads(
        (sweep / "b2" / "results.json").read_text()).items() if k != "vectorized"}))
    assert "fit_shared" not in comparison_table(collect_runs([sweep])).columns  # only where a row needs it


def two_dataset_sweep(tmp_path) -> Path:
    """One rate on two datasets in one sweep folder: the current grid's trial, and an earlier grid's."""
    sweep = write_sweep(tmp_path, [
        ("a1", {"train.learning_rate": 0.1}, 0, {"best": (0.80, 0.82, 0.50, 0.46), "config": {"data.dataset": "fashion_mnist"}}),
        ("b2", {"train.learning_rate": 0.1}, 0, {"best": (0.70, 0.72, 0.60, 0.56),
                                                 "config": {"data.dataset": "fashion_mnist_sample"}}),
    ])
    manifest = json.loads((sweep / "manifest.json").read_text())
    manifest["trials"][1]["in_grid"] = False
    (sweep / "manifest.json").write_text(json.dumps(manifest))
    return sweep


def test_a_sweep_folder_holding_two_datasets_shows_the_dataset_column(tmp_path):
    """The same rates run on two datasets in one sweep folder: results.md said each label twice, told
    apart only by `grid=earlier`; the dataset the rows differ in is now a column of its own."""
    sweep = two_dataset_sweep(tmp_path)
    csv_path, md_path = write_sweep_results(sweep)
    rows = pd.read_csv(csv_path)
    assert list(rows["data.dataset"]) == ["fashion_mnist", "fashion_mnist_sample"]
    header = md_path.read_text().splitlines()[2]
    assert "| data.dataset |" in header


def test_difference_rows_of_rows_sharing_a_label_say_which_grid(tmp_path):
    """`--baseline` over a folder whose label repeats (a trial of an earlier grid beside the current
    one) gave two 'Difference' rows with one label; each now says which row it is."""
    sweep = two_dataset_sweep(tmp_path)
    (tmp_path / "cnn2").mkdir()
    base = write_run(tmp_path / "cnn2" / "r1", name="cnn2", best=(0.9, 0.9, 0.3, 0.3))
    table = comparison_table(collect_runs([sweep, base.parent]), baseline="cnn2")
    diffs = [r for r in table["run"] if r.startswith("Difference")]
    assert diffs == ["Difference (sweep_lr[learning_rate=0.1] - cnn2)",
                     "Difference (sweep_lr[learning_rate=0.1] (grid earlier) - cnn2)"]
    assert len(set(diffs)) == 2


def test_a_run_name_folder_of_several_runs_says_its_row_is_the_latest(tmp_path, capsys):
    from expkit.cli import main

    for run_id, acc in (("20261201-100000-aaaa", 0.7), ("20261202-100000-bbbb", 0.8)):
        write_run(tmp_path / "runs" / "cnn1" / run_id, name="cnn1", best=(acc, acc, 0.5, 0.5))
    assert main(["table", str(tmp_path / "runs" / "cnn1"), "--format", "csv"]) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 2 and "20261202-100000-bbbb" in out.splitlines()[1]
    assert err.strip() == (f"{tmp_path / 'runs' / 'cnn1'}: the latest of its 2 runs (20261202-100000-bbbb); name a run "
                           f"folder ({tmp_path / 'runs' / 'cnn1' / '20261201-100000-aaaa'}) or several to compare others")
    assert main(["table", str(tmp_path / "runs"), "--format", "csv"]) == 0
    assert capsys.readouterr().err == ""  # runs/: one row per name, as documented
