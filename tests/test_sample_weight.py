"""data.options.sample_weight: per-example weights from the user's data (an .npz array or a CSV column),
given to Keras' fit as its sample_weight, multiplied by train.class_weight when both are set, recorded in
results.json."""

import json
import subprocess
import sys

import numpy as np
import pytest

from expkit.config import validate
from expkit.data.dataset import load_dataset
from expkit.errors import ConfigError


def _arrays(n=96, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, 6, 6), dtype=np.uint8)
    y = np.arange(n) % 3
    return x, y


def _npz(tmp_path, **extra):
    x, y = _arrays()
    path = tmp_path / "weighted.npz"
    np.savez(path, x_train=x, y_train=y, x_test=x[:24], y_test=y[:24], **extra)
    return path


def _raw(path, weights="w_train", **train):
    return {"name": "weighted", "seed": 5,
            "data": {"dataset": "npz", "path": str(path), **({"options": {"sample_weight": weights}} if weights else {})},
            "model": {"layers": [{"flatten": {}}, {"dense": {"units": 8, "activation": "relu"}},
                                 {"dense": {"units": 3, "activation": "softmax"}}]},
            "train": {"optimizer": "adam", "learning_rate": 0.01, "epochs": 2, "batch_size": 16, "verbose": 0,
                      "shuffle": False, **train}}


def test_weights_travel_with_their_examples_through_limit_shuffle_and_split(tmp_path):
    """Each example keeps its own weight: with weight = 10 * label + its index's parity, the loaded
    (limited, shuffled, split) training set's weights still match its labels; the validation part's
    weights are dropped, not shifted."""
    x, y = _arrays()
    w = (10 * y + np.arange(len(y)) % 2).astype(np.float32)
    path = _npz(tmp_path, w_train=w)
    cfg = validate({**_raw(path), "data": {**_raw(path)["data"], "limit": 80, "validation_split": 0.25, "shuffle": True}})
    ds = load_dataset(cfg.data, cfg.seed, cfg.train.loss)
    assert len(ds.w_train) == len(ds.x_train) == 60 and len(ds.x_val) == 20
    assert np.array_equal(ds.w_train // 10, ds.y_train.argmax(1))  # the label part follows the example (one-hot y)
    # the parity part too: find each training example among the first 80 and compare its weight
    index = {x[i].tobytes(): i for i in range(80)}
    positions = np.array([index[e.astype(np.uint8).tobytes()] for e in np.rint(ds.x_train * 255)])
    assert np.array_equal(ds.w_train, w[positions])
    unweighted = validate(_raw(path, weights=None))
    assert load_dataset(unweighted.data, 5, unweighted.train.loss).w_train is None


def test_the_loss_equals_keras_fit_with_sample_weight_and_class_weights_multiply(tmp_path):
    """A run's per-epoch losses equal plain Keras fit(sample_weight=...) on the same data and initial
    weights; with train.class_weight too they equal fit with the product of the two; results.json says
    where the weights came from and what they hold."""
    import keras

    import expkit
    from expkit.backend import seed_everything
    from expkit.runner import prepare

    x, y = _arrays()
    w = np.where(y == 1, 4.0, 0.25).astype(np.float32) * (1 + (np.arange(len(y)) % 5))
    path = _npz(tmp_path, w_train=w)
    for class_weight in (None, {0: 3.0, 2: 0.5}):
        raw = _raw(path, **({"class_weight": class_weight} if class_weight else {}))
        run = expkit.run(raw, runs_dir=tmp_path / "runs")
        cfg = validate(raw)
        seed_everything(cfg.seed, False)  # as run_experiment does before building: the same initial weights
        dataset, model = prepare(cfg)
        expected = dataset.w_train.copy()
        if class_weight:
            expected *= np.array([3.0, 1.0, 0.5], dtype=np.float32)[dataset.y_train.argmax(1)]
        model.compile(optimizer=keras.optimizers.Adam(cfg.train.learning_rate), loss=cfg.train.loss, metrics=["accuracy"])
        history = model.fit(dataset.x_train, dataset.y_train, sample_weight=expected, batch_size=16, epochs=2,
                            shuffle=False, verbose=0)
        assert list(run.history["loss"]) == pytest.approx(history.history["loss"], rel=1e-5)
        record = json.loads((run.path / "results.json").read_text())
        kept = dataset.w_train
        assert record["sample_weight"]["from"] == "w_train"
        assert record["sample_weight"]["examples"] == len(kept) == len(dataset.x_train)
        assert record["sample_weight"]["mean"] == pytest.approx(float(kept.mean()), rel=1e-5)
        assert record["sample_weight"]["max"] == pytest.approx(float(kept.max()))
        assert record["class_weight"] == ({"0": 3.0, "1": 1.0, "2": 0.5} if class_weight else None)
    plain = expkit.run(_raw(path, weights=None), runs_dir=tmp_path / "plain")
    assert abs(plain.history["loss"][0] - run.history["loss"][0]) > 1e-3  # the weights did change the loss
    assert json.loads((plain.path / "results.json").read_text())["sample_weight"] is None


def test_a_csv_column_of_weights(tmp_path):
    """csv_pixels reads the weights from a column, the training rows' only."""
    rows = ["emotion,pixels,Usage,w"]
    for i in range(12):
        rows.append(f"{i % 2},{' '.join(str((i * 7 + j) % 256) for j in range(16))},"
                    f"{'Training' if i < 8 else 'PublicTest'},{i + 1}")
    path = tmp_path / "faces.csv"
    path.write_text("\n".join(rows) + "\n")
    cfg = validate({**_raw(path), "data": {"dataset": "csv_pixels", "path": str(path), "shuffle": False,
                                           "validation_split": 0.25, "options": {"sample_weight": "w"}}})
    ds = load_dataset(cfg.data, 0, cfg.train.loss)
    assert ds.w_train.tolist() == [1, 2, 3, 4, 5, 6]  # 8 training rows, the last 2 cut for validation
    bad = validate({**_raw(path), "data": {"dataset": "csv_pixels", "path": str(path), "options": {"sample_weight": "wt"}}})
    with pytest.raises(ConfigError, match=r"has no column 'wt'; did you mean 'w'"):
        load_dataset(bad.data, 0, bad.train.loss)


@pytest.mark.parametrize("weights, name, message", [
    (None, "w_trian", r"has no array 'w_trian'; did you mean 'w_train'"),
    (np.ones(5), "w_train", r"expected one weight per training example \(96\), found shape \(5,\)"),
    (np.full(96, -1.0), "w_train", r"weights must be finite and >= 0; example 0 has -1\.0"),
    (np.zeros(96), "w_train", r"every weight is 0, so nothing would train"),
    (None, "y_train", r"'y_train' is one of .* data arrays, not weights"),
])
def test_bad_weights_name_the_key(tmp_path, weights, name, message):
    path = _npz(tmp_path, **({"w_train": weights} if weights is not None else {"w_train": np.ones(96)}))
    cfg = validate(_raw(path, weights=name))
    with pytest.raises(ConfigError, match=message) as err:
        load_dataset(cfg.data, 0, cfg.train.loss)
    assert err.value.path in ("data.options.sample_weight", "data.path")


def test_a_dataset_without_weights_refuses_the_option_in_one_line(tmp_path):
    """A built-in dataset has no per-example weights: one line naming the key and what it takes, exit 2."""
    raw = _raw(tmp_path / "unused.npz")
    raw["data"] = {"dataset": "fashion_mnist_sample", "options": {"sample_weight": "w"}}
    path = tmp_path / "c.yaml"
    import yaml

    path.write_text(yaml.safe_dump(raw))
    proc = subprocess.run([sys.executable, "-m", "expkit", "run", str(path), "--runs-dir", str(tmp_path / "runs")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "data.options.sample_weight" in lines[0] and "unknown option" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "runs").exists()


def test_a_weighted_sweep_trains_one_at_a_time_and_says_why(tmp_path):
    from expkit.sweeps.trials import expand_sweep
    from expkit.sweeps.vectorize import grouping
    from expkit.sweeps.vectorize.grouping import ModelShape

    cfg = validate({**_raw(_npz(tmp_path, w_train=np.ones(96))), "sweep": {"grid": {"train.learning_rate": [0.1, 0.01]}}})
    trials = expand_sweep(cfg)
    plan = grouping.plan_groups(cfg, trials, {t.id: ModelShape((), 1000.0) for t in trials})
    assert plan.groups == [] and len(plan.alone) == 2
    assert any(n.startswith("data.options.sample_weight: per-example weights are not vectorised") for n in plan.notes)
    tf_data = validate(_raw(tmp_path / "weighted.npz", input_pipeline="tf_data"))
    from expkit.train import example_weights

    with pytest.raises(ConfigError, match=r"tf_data input pipeline does not carry per-example weights"):
        example_weights(tf_data, load_dataset(tf_data.data, 0, tf_data.train.loss), None)
