"""A real (tiny) training run end to end: the run folder's files and values."""

import csv
import json
import math

import pytest
import yaml

from expkit.config import validate
from expkit.errors import ConfigError
from expkit.runfolder import RunFolder, read_status
from expkit.runfolder import RunRecord
from expkit.runner import run_experiment


def read_results(run):
    return json.loads((run.path / "results.json").read_text())


def test_run_folder_contents(tmp_path, tiny_config):
    cfg = validate(tiny_config)
    run = run_experiment(cfg, runs_dir=tmp_path)
    assert run.path.parent == tmp_path / "tiny"
    names = sorted(p.name for p in run.path.iterdir())
    assert names == ["config.yaml", "confusion.csv", "confusion.png", "curves.png", "metrics.csv", "model.keras",
                     "results.json", "status.json",
                     "summary.txt"]  # model.keras: train.save_model (on by default); the checkpoint is gone once done

    saved = yaml.safe_load((run.path / "config.yaml").read_text())
    assert saved == cfg.to_dict() and saved["train"]["steps_per_execution"] == "auto"
    assert "Total params: 1,091" in (run.path / "summary.txt").read_text()  # 64*16+16 + 16*3+3

    rows = list(csv.DictReader((run.path / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert list(rows[0])[:7] == ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "epoch_seconds"]
    assert all(float(r["learning_rate"]) == pytest.approx(0.01) for r in rows)

    res = read_results(run)
    assert res["status"] == "done" and res["error"] is None
    assert res["params"] == 1091 and res["epochs_run"] == 3 and not res["diverged"]
    assert res["n_train"] == 108 and res["n_val"] == 12 and res["n_test"] == 40
    accs = [float(r["accuracy"]) for r in rows]
    assert res["best"]["accuracy"] == pytest.approx(max(accs))
    assert res["final"]["accuracy"] == pytest.approx(accs[-1])
    assert 0.0 <= res["test"]["accuracy"] <= 1.0 and math.isfinite(res["test"]["loss"])
    assert res["fit_seconds"] > 0 and res["samples_per_second"] > 0
    assert res["versions"]["keras"].startswith("3.")
    assert json.loads((run.path / "status.json").read_text())["status"] == "done"
    assert (run.path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rerun_never_overwrites(tmp_path, tiny_config):
    cfg = validate({**tiny_config, "train": {**tiny_config["train"], "epochs": 1}})
    a = run_experiment(cfg, runs_dir=tmp_path)
    b = run_experiment(cfg, runs_dir=tmp_path)
    assert a.path != b.path and a.path.exists() and b.path.exists()


def test_same_seed_same_result(tmp_path, tiny_config):
    cfg = validate({**tiny_config, "train": {**tiny_config["train"], "epochs": 2}})
    a = read_results(run_experiment(cfg, runs_dir=tmp_path))
    b = read_results(run_experiment(cfg, runs_dir=tmp_path))
    assert a["final"]["loss"] == pytest.approx(b["final"]["loss"], rel=1e-5)
    assert a["test"] == pytest.approx(b["test"], rel=1e-5)


def test_nan_loss_ends_as_diverged_not_a_crash(tmp_path, tiny_config):
    # 1e30, not 1e12: JAX's crossentropy clips probabilities, so at 1e12 its loss saturates without turning NaN
    cfg = validate({**tiny_config, "train": {**tiny_config["train"], "optimizer": "sgd", "learning_rate": 1e30, "epochs": 4}})
    run = run_experiment(cfg, runs_dir=tmp_path)
    res = read_results(run)
    assert res["status"] == "diverged" and res["diverged"] is True
    assert res["epochs_run"] < 4 or math.isnan(res["final"]["loss"])
    assert read_status(run.path) == "diverged"


def test_early_stopping_and_step_schedule(tmp_path, tiny_config):
    train = {**tiny_config["train"], "epochs": 30, "learning_rate": 0.02,
             "early_stopping": {"monitor": "loss", "patience": 0, "min_delta": 10.0},
             "schedule": {"type": "step", "step_epochs": 1, "factor": 0.5}}
    run = run_experiment(validate({**tiny_config, "train": train}), runs_dir=tmp_path)
    res = read_results(run)
    assert res["stopped_early"] and res["epochs_run"] < 30
    rates = [float(r["learning_rate"]) for r in csv.DictReader((run.path / "metrics.csv").open())]
    assert rates[:2] == pytest.approx([0.02, 0.01])


def test_learning_rate_column_is_the_rate_the_epoch_trained_with(tmp_path, tiny_config):
    """A per-step schedule halves the rate after each epoch's steps: epoch 1 trained at 0.02, not
    at the 0.01 in force once it ended."""
    train = {**tiny_config["train"], "learning_rate": 0.02,
             "schedule": {"type": "exponential", "decay_rate": 0.5, "decay_epochs": 1.0, "staircase": True}}
    run = run_experiment(validate({**tiny_config, "train": train}), runs_dir=tmp_path)
    rates = [float(r["learning_rate"]) for r in csv.DictReader((run.path / "metrics.csv").open())]
    assert rates == pytest.approx([0.02, 0.01, 0.005])


def test_data_that_does_not_fit_a_stated_input_shape_is_refused_before_training(tmp_path, tiny_config):
    cfg = validate({**tiny_config, "model": {**tiny_config["model"], "input_shape": [64]}})
    with pytest.raises(ConfigError) as info:
        run_experiment(cfg, runs_dir=tmp_path)
    assert info.value.path == "model.input_shape" and "[8, 8, 1]" in info.value.message
    assert not (tmp_path / "tiny").exists()


def test_a_write_failure_mid_run_is_one_error_and_records_that_agree(tmp_path, tiny_config, monkeypatch):
    """The disk fills after the second epoch: RunWriteError (one line, exit 1 in the CLI), and the
    folder says failed in both status.json and results.json, never 'running' beside 'done'."""
    import errno

    import expkit.runfolder.records as rf
    from expkit.errors import RunWriteError

    real = rf.write_text_atomic
    calls = {"metrics": 0}

    def fill_disk_on_third_epoch(path, text):
        if path.name == "metrics.csv":
            calls["metrics"] += 1
            if calls["metrics"] == 3:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, text)

    monkeypatch.setattr(rf, "write_text_atomic", fill_disk_on_third_epoch)
    with pytest.raises(RunWriteError, match="No space left on device"):
        run_experiment(validate(tiny_config), runs_dir=tmp_path)
    (run_dir,) = (tmp_path / "tiny").iterdir()
    record = json.loads((run_dir / "results.json").read_text())
    assert record["status"] == "failed" and "No space left" in record["error"]
    assert json.loads((run_dir / "status.json").read_text())["status"] == "failed"
    assert record["epochs_run"] >= 2


def test_user_mistake_raises_before_any_folder(tmp_path, tiny_config):
    bad = {**tiny_config, "train": {**tiny_config["train"], "optimizer": "adamm"}}
    with pytest.raises(ConfigError) as info:
        run_experiment(validate(bad), runs_dir=tmp_path)
    assert info.value.path == "train.optimizer" and "did you mean 'adam'" in info.value.message
    bad = {**tiny_config, "model": {"layers": [{"flatten": {}}, {"dense": {"units": 5, "activation": "softmax"}}]}}
    with pytest.raises(ConfigError, match="3 classes"):
        run_experiment(validate(bad), runs_dir=tmp_path)


def test_interrupted_run_is_marked(tmp_path, tiny_config, monkeypatch):
    import expkit.train as train_mod

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_mod, "train", interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(validate(tiny_config), runs_dir=tmp_path)
    (run_dir,) = (tmp_path / "tiny").iterdir()
    assert read_status(run_dir) == "interrupted"
    assert json.loads((run_dir / "results.json").read_text())["status"] == "interrupted"
    assert (run_dir / "config.yaml").exists() and (run_dir / "summary.txt").exists()


def test_killed_run_reads_as_interrupted(tmp_path):
    folder = RunFolder.create(tmp_path, "x")
    (folder.path / "status.json").write_text(json.dumps({"status": "running", "pid": 2 ** 22 + 12345}))
    assert read_status(folder.path) == "interrupted"


def test_summarise_best_and_final_ignore_nan():
    record = RunRecord("x", "r", fit_seconds=2.0)
    record.summarise([{"accuracy": 0.5, "loss": 1.0, "val_accuracy": 0.4, "val_loss": 1.2},
                      {"accuracy": 0.7, "loss": float("nan"), "val_accuracy": 0.3, "val_loss": 1.1}], n_train=10)
    best, final = record.best, record.final
    assert record.epochs_run == 2 and record.samples_per_second == 10.0
    assert best == {"accuracy": 0.7, "val_accuracy": 0.4, "loss": 1.0, "val_loss": 1.1}
    assert final["accuracy"] == 0.7 and math.isnan(final["loss"])


def test_training_on_the_shipped_sample_learns(tmp_path):
    """The real sample, a real model: one epoch of the seed's baseline beats chance by far."""
    cfg = validate({"name": "sample", "seed": 14, "data": {"dataset": "fashion_mnist_sample", "layout": "flat"},
                    "model": {"layers": [{"dense": {"units": 32, "activation": "sigmoid"}},
                                         {"dense": {"units": 10, "activation": "softmax"}}]},
                    "train": {"optimizer": "adam", "learning_rate": 0.003, "epochs": 2, "verbose": 0}})
    res = read_results(run_experiment(cfg, runs_dir=tmp_path))
    assert res["n_train"] == 3600 and res["n_test"] == 1000
    assert res["best"]["val_accuracy"] > 0.6 and res["test"]["accuracy"] > 0.6


def test_each_trials_curves_are_titled_with_its_values_and_seed(tmp_path, tiny_config, monkeypatch):
    """Two trials' curves.png were titled with the sweep's name alone; now each names what sets it apart."""
    import io
    from pathlib import Path

    from expkit.report import plots
    from expkit.sweeps.driver import run_sweep

    titles, draw = {}, plots.plot_curves
    monkeypatch.setattr(plots, "plot_curves", lambda csv, png, title: titles.setdefault(Path(png).parent.name, title)
                        and draw(csv, png, title))
    cfg = {**tiny_config, "train": {**tiny_config["train"], "epochs": 1},
           "sweep": {"grid": {"train.learning_rate": [0.01, 0.001]}, "seeds": [3]}}
    sweep_dir, counts = run_sweep(validate(cfg), runs_dir=tmp_path, log=io.StringIO())
    assert counts == {"done": 2}
    assert sorted(titles.values()) == ["tiny train.learning_rate=0.001 seed=3", "tiny train.learning_rate=0.01 seed=3"]
    assert all((sweep_dir / trial_id / "curves.png").stat().st_size > 0 for trial_id in titles)
