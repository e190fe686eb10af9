"""The Python API (`import expkit`): config loading, runs, sweeps and tables, on tiny real training."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import expkit

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO / "src")}
HISTORY_COLUMNS = ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"]


def without_name(config: dict) -> dict:
    return {k: v for k, v in config.items() if k != "name"}


def python(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


# --- import ---------------------------------------------------------------------------------------------


def test_import_loads_no_backend():
    assert python("import expkit, sys; print('tensorflow' in sys.modules, 'keras' in sys.modules)") == "False False"


def test_loading_a_config_loads_no_backend(tiny_config):
    code = (f"import expkit, sys; cfg = expkit.load_config({without_name(tiny_config)!r}); "
            "print(cfg.name, 'tensorflow' in sys.modules, 'keras' in sys.modules)")
    assert python(code) == "experiment False False"


def test_public_names():
    assert {"load_config", "run", "sweep", "table", "Run", "Sweep", "ConfigError"} <= set(dir(expkit))
    from expkit.errors import ConfigError

    assert expkit.ConfigError is ConfigError
    with pytest.raises(AttributeError, match="no attribute 'trian'"):
        expkit.trian  # noqa: B018


# --- load_config ----------------------------------------------------------------------------------------


def test_load_config_from_a_dict(tiny_config):
    raw = without_name(tiny_config)
    cfg = expkit.load_config(raw)
    assert cfg.name == "experiment" and cfg.train.epochs == 3 and cfg.seed == 3
    assert "name" not in raw  # the caller's dict is not changed
    assert expkit.load_config(tiny_config).name == "tiny"

    by_mapping = expkit.load_config(raw, overrides={"train.epochs": 2, "model.layers[1].dense.units": 5})
    assert by_mapping.train.epochs == 2 and by_mapping.model.layers[1] == {"dense": {"units": 5, "activation": "relu"}}
    by_text = expkit.load_config(raw, overrides=["train.epochs=2", "train.learning_rate=1e-3"])
    assert by_text.train.epochs == 2 and by_text.train.learning_rate == 0.001
    assert expkit.load_config(raw, overrides="train.epochs=4").train.epochs == 4
    assert tiny_config["train"]["epochs"] == 3  # overrides never write into the caller's dict

    # a config already loaded goes through again, with more overrides
    assert expkit.load_config(by_text, overrides={"seed": 9}).seed == 9
    assert expkit.load_config(by_text, overrides={"seed": 9}).train.epochs == 2


def test_load_config_from_a_yaml_file(tiny_config, write_yaml):
    path = write_yaml("baby.yaml", without_name(tiny_config))
    cfg = expkit.load_config(path)
    assert cfg.name == "baby" and cfg.train.epochs == 3  # named after the file
    assert expkit.load_config(str(path), overrides={"train.epochs": 2}).train.epochs == 2
    assert expkit.load_config(path, overrides=["train.epochs=2"]).train.epochs == 2
    both = expkit.load_config(path, overrides={"train.batch_size": 8})
    assert both.train.batch_size == 8 and both.name == "baby"


def test_mapping_overrides_apply_to_a_file_before_validation(tiny_config, write_yaml):
    layers = tiny_config["model"]["layers"]
    no_model = write_yaml("no_model.yaml", {"train": {"epochs": 1}})
    text = "model.layers=" + json.dumps(layers)
    assert expkit.load_config(no_model, overrides=[text]).model.layers == layers  # the text form works
    assert expkit.load_config(no_model, overrides={"model.layers": layers}).model.layers == layers

    bad = write_yaml("bad.yaml", {**tiny_config, "train": {**tiny_config["train"], "epochs": -1}})
    assert expkit.load_config(bad, overrides=["train.epochs=2"]).train.epochs == 2
    assert expkit.load_config(bad, overrides={"train.epochs": 2}).train.epochs == 2


def test_bad_overrides_name_the_key(tiny_config, write_yaml):
    with pytest.raises(expkit.ConfigError) as info:
        expkit.load_config(tiny_config, overrides={"train.epochs": "many"})
    assert info.value.path == "train.epochs" and "many" in str(info.value)

    with pytest.raises(expkit.ConfigError) as info:
        expkit.load_config(tiny_config, overrides=["train.epocs=2"])
    assert info.value.path == "train.epocs" and "did you mean 'epochs'" in str(info.value)

    with pytest.raises(expkit.ConfigError, match="not a key path"):
        expkit.load_config(tiny_config, overrides={"train..epochs": 2})
    with pytest.raises(expkit.ConfigError, match="KEY=VALUE"):
        expkit.load_config(tiny_config, overrides=["train.epochs"])

    path = write_yaml("exp.yaml", tiny_config)
    for overrides in ({"train.epochs": -1}, ["train.epochs=-1"]):
        with pytest.raises(expkit.ConfigError) as info:
            expkit.load_config(path, overrides=overrides)
        assert info.value.path == "train.epochs" and info.value.file == str(path), overrides
        assert str(info.value).startswith(f"{path}: train.epochs: ")


# --- run ------------------------------------------------------------------------------------------------


def test_run_returns_the_trained_run(tiny_config, tmp_path):
    run = expkit.run(tiny_config, runs_dir=tmp_path)
    assert isinstance(run, expkit.Run)
    assert run.status == "done" and run.record.status == "done" and run.record.error is None
    assert run.path.parent == tmp_path / "tiny" and run.path.is_dir()
    for name in ("results.json", "config.yaml", "metrics.csv", "status.json"):
        assert (run.path / name).is_file(), name
    assert json.loads((run.path / "results.json").read_text())["run_id"] == run.path.name == run.record.run_id

    history = run.history
    assert isinstance(history, pd.DataFrame) and len(history) == 3
    assert list(history.columns)[:6] == HISTORY_COLUMNS
    assert history["epoch"].tolist() == [1, 2, 3]
    assert history["learning_rate"].tolist() == pytest.approx([0.01] * 3)
    assert history["accuracy"].between(0, 1).all() and np.isfinite(history["loss"]).all()
    assert run.record.epochs_run == 3
    assert run.record.best["val_accuracy"] == pytest.approx(history["val_accuracy"].max())
    assert run.record.final["loss"] == pytest.approx(history["loss"].iloc[-1])

    import keras

    assert isinstance(run.model, keras.Model)
    # the 8x8 synthetic images get a channel axis
    assert tuple(run.model.input_shape[1:]) == (8, 8, 1) and tuple(run.model.output_shape[1:]) == (3,)
    x = np.random.default_rng(0).random((5, 8, 8, 1), dtype=np.float32)
    probs = run.model.predict(x, verbose=0)
    assert probs.shape == (5, 3) and (probs >= 0).all()
    assert probs.sum(axis=1) == pytest.approx(np.ones(5), abs=1e-5)

    assert run.config == expkit.load_config(tiny_config)
    text = run._repr_html_()
    assert text.startswith("<div>") and "<table" in text and "</table>" in text
    assert "tiny" in text and "done" in text and str(run.path) in text
    assert repr(run).startswith("Run('tiny', status='done', best_val_accuracy=")

    back = expkit.Run.from_folder(run.path)
    assert back.model is None and back.record.to_dict() == run.record.to_dict()
    assert back.history.equals(history)


def test_run_with_overrides_and_no_name(tiny_config, tmp_path):
    run = expkit.run(without_name(tiny_config), {"train.epochs": 1}, runs_dir=tmp_path / "new" / "runs")
    assert run.status == "done" and run.record.epochs_run == 1 and len(run.history) == 1
    assert run.path.parent == tmp_path / "new" / "runs" / "experiment"


def test_run_refuses_a_sweep(tiny_config, tmp_path):
    config = {**tiny_config, "sweep": {"grid": {"train.learning_rate": [0.1, 0.01]}}}
    with pytest.raises(expkit.ConfigError) as info:
        expkit.run(config, runs_dir=tmp_path / "runs")
    assert info.value.path == "sweep" and "expkit.sweep()" in str(info.value)
    assert not (tmp_path / "runs").exists()  # refused before anything is written
    with pytest.raises(expkit.ConfigError, match=r"expkit.run\(\)") as info:
        expkit.sweep(tiny_config, runs_dir=tmp_path / "runs")
    assert info.value.path == "sweep" and not (tmp_path / "runs").exists()


def test_run_refuses_a_bad_config_before_writing(tiny_config, tmp_path):
    with pytest.raises(expkit.ConfigError) as info:
        expkit.run(tiny_config, {"train.optimizer": 3}, runs_dir=tmp_path / "runs")
    assert info.value.path.startswith("train.optimizer")
    assert not (tmp_path / "runs").exists()


# --- sweep ----------------------------------------------------------------------------------------------


def test_sweep_trains_every_trial_once(tiny_config, tmp_path):
    config = {**tiny_config, "name": "lr", "train": {**tiny_config["train"], "epochs": 1},
              "sweep": {"grid": {"train.learning_rate": [0.01, 0.05]}}}
    sweep = expkit.sweep(config, runs_dir=tmp_path)
    assert isinstance(sweep, expkit.Sweep)
    assert sweep.path == tmp_path / "lr" and sweep.counts == {"done": 2}
    assert repr(sweep) == f"Sweep('{sweep.path}', 2 done)"

    results = sweep.results
    assert isinstance(results, pd.DataFrame) and len(results) == 2
    assert results["status"].tolist() == ["done", "done"]
    assert results["best_val_accuracy"].between(0, 1).all()

    trials = sweep.trials
    assert len(trials) == 2 and all(isinstance(t, expkit.Run) for t in trials)
    assert [t.record.trial["values"] for t in trials] == [{"train.learning_rate": 0.01},
                                                          {"train.learning_rate": 0.05}]
    assert all(t.status == "done" and t.record.epochs_run == 1 and t.model is None for t in trials)
    assert [t.path.parent for t in trials] == [sweep.path, sweep.path]
    assert [t.history["learning_rate"].iloc[0] for t in trials] == pytest.approx([0.01, 0.05])
    assert sorted(results["best_val_accuracy"]) == pytest.approx(
        sorted(t.record.best["val_accuracy"] for t in trials), abs=1e-4)

    text = sweep._repr_html_()
    assert "<table" in text and "lr" in text

    results_json = [t.path / "results.json" for t in trials]
    mtimes = [p.stat().st_mtime_ns for p in results_json]
    again = expkit.sweep(config, runs_dir=tmp_path)
    assert again.counts == {"done": 2} and again.path == sweep.path
    assert [p.stat().st_mtime_ns for p in results_json] == mtimes  # nothing trained again
    assert [t.record.run_id for t in again.trials] == [t.record.run_id for t in trials]


# --- table ----------------------------------------------------------------------------------------------


def test_table_of_one_run(tiny_config, tmp_path):
    run = expkit.run(tiny_config, {"train.epochs": 2}, runs_dir=tmp_path)
    for paths in ([run.path], run.path, str(run.path)):
        table = expkit.table(paths)
        assert isinstance(table, pd.DataFrame) and len(table) == 1
        row = table.iloc[0]
        assert row["status"] == "done" and row["epochs"] == 2
        assert row["best_val_accuracy"] == pytest.approx(run.record.best["val_accuracy"], abs=5e-5)
        assert row["best_loss"] == pytest.approx(run.record.best["loss"], abs=5e-5)
    assert run.summary().equals(expkit.table([run.path]))


def test_the_sweeps_package_never_hides_the_sweep_function():
    """A subpackage named like an API function would replace it on the package once imported."""
    import expkit.sweeps.driver  # noqa: F401

    assert callable(expkit.sweep) and expkit.sweep.__module__ == "expkit.api"
