"""train.class_weight: Keras' own class weighting, balanced or per class, recorded in results.json."""

import json

import numpy as np
import pytest

from expkit.config import validate
from expkit.data.dataset import Dataset
from expkit.errors import ConfigError
from expkit.train import class_weights


def _dataset(labels, classes=("cat", "dog", "bird")):
    y = np.asarray(labels)
    x = np.zeros((len(y), 2), dtype="float32")
    return Dataset(x, y, x[:0], y[:0], None, None, list(classes))


def _cfg(tiny_config, **train):
    return validate({**tiny_config, "train": {**tiny_config["train"], **train}})


def test_balanced_is_scikit_learns_and_names_or_indexes_pick_classes(tiny_config):
    labels = [0] * 6 + [1] * 3 + [2] * 1
    got = class_weights(_cfg(tiny_config, class_weight="balanced"), _dataset(labels))
    assert got == pytest.approx({0: 10 / 18, 1: 10 / 9, 2: 10 / 3})
    utils = pytest.importorskip("sklearn.utils")
    expected = utils.compute_class_weight("balanced", classes=np.arange(3), y=np.asarray(labels))
    assert [got[i] for i in range(3)] == pytest.approx(list(expected))
    one_hot = np.eye(3)[labels]  # categorical_crossentropy's labels: the same weights
    assert class_weights(_cfg(tiny_config, class_weight="balanced"), _dataset(one_hot)) == got
    named = class_weights(_cfg(tiny_config, class_weight={"bird": 4.0, 1: 2}), _dataset(labels))
    assert named == {0: 1.0, 1: 2.0, 2: 4.0}  # a class not named weighs 1


def test_a_wrong_class_names_the_key(tiny_config):
    with pytest.raises(ConfigError, match=r"train\.class_weight\.brid: no class named 'brid'; did you mean 'bird'"):
        class_weights(_cfg(tiny_config, class_weight={"brid": 2.0}), _dataset([0, 1, 2]))
    with pytest.raises(ConfigError, match=r"class index 7 is out of range: the data has 3 classes"):
        class_weights(_cfg(tiny_config, class_weight={7: 2.0}), _dataset([0, 1, 2]))
    with pytest.raises(ConfigError, match=r"train\.class_weight\[1\]: a class weight must be a finite number >= 0"):
        _cfg(tiny_config, class_weight={1: -2.0})


def test_class_weights_change_the_loss_as_keras_own_class_weight_does(tiny_config, tmp_path):
    """The run's per-epoch losses equal plain Keras fit with class_weight on the same data and initial
    weights, and differ from the unweighted ones; results.json records the weights by class name."""
    import keras

    import expkit
    from expkit.backend import seed_everything
    from expkit.runner import prepare

    raw = {**tiny_config, "train": {**tiny_config["train"], "epochs": 2, "shuffle": False,
                                    "class_weight": {0: 3.0, "2": 0.5}}}
    run = expkit.run(raw, runs_dir=tmp_path)
    cfg = validate(raw)
    weights = {0: 3.0, 1: 1.0, 2: 0.5}
    losses = {}
    for name, weighted in (("weighted", weights), ("plain", None)):
        seed_everything(cfg.seed, False)  # as run_experiment does before building: the same initial weights
        dataset, model = prepare(cfg)
        model.compile(optimizer=keras.optimizers.Adam(cfg.train.learning_rate), loss=cfg.train.loss, metrics=["accuracy"])
        history = model.fit(dataset.x_train, dataset.y_train, batch_size=cfg.train.batch_size, epochs=2, shuffle=False,
                            class_weight=weighted, verbose=0)
        losses[name] = history.history["loss"]
    ours = list(run.history["loss"])
    assert ours == pytest.approx(losses["weighted"], rel=1e-5)
    assert abs(ours[0] - losses["plain"][0]) > 1e-3  # the weights did change the loss
    assert json.loads((run.path / "results.json").read_text())["class_weight"] == {"0": 3.0, "1": 1.0, "2": 0.5}
