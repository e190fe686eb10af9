"""The user's own code by "module:attribute": a model factory, custom layers and losses from a module
beside the config file, their hashes in results.json, model.keras loading them, --resume finding them."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from expkit.config import validate
from expkit.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO / "src")}

MY_LAYERS = '''
import keras


class Scale(keras.layers.Layer):
    """A learned per-feature scale, times a fixed factor."""

    def __init__(self, factor=1.0, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1],), initializer="ones")

    def call(self, x):
        return x * self.w * self.factor

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}


def build(input_shape, num_classes, units=8):
    inputs = keras.Input(shape=input_shape)
    x = Scale(0.5)(keras.layers.Flatten()(inputs))
    x = keras.layers.Dense(units, activation="relu")(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes, activation="softmax")(x))


def half(shape, dtype=None):
    return keras.ops.full(shape, 0.5, dtype=dtype)


def layer_only():
    return Scale()


def plain_crossentropy(y_true, y_pred):
    return keras.losses.categorical_crossentropy(y_true, y_pred)
'''


@pytest.fixture
def exp(tmp_path, monkeypatch, tiny_config):
    """A folder holding my_layers.py beside a config that uses it; the test runs from another folder."""
    folder = tmp_path / "exp"
    folder.mkdir()
    (folder / "my_layers.py").write_text(MY_LAYERS)
    cfg = {**tiny_config, "name": "custom", "model": {"layers": [
        {"flatten": {}}, {"my_layers:Scale": {"factor": 0.5}}, {"dense": {"units": 8, "activation": "relu"}},
        {"dense": {"units": 3, "activation": "softmax"}}]},
        "train": {**tiny_config["train"], "epochs": 2, "loss": "my_layers:plain_crossentropy"},
        "data": {**tiny_config["data"], "labels": "one_hot"}}  # a loss of one's own: say the labels it takes
    (folder / "custom.yaml").write_text(yaml.safe_dump(cfg))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.delitem(sys.modules, "my_layers", raising=False)
    yield folder
    sys.modules.pop("my_layers", None)


LOAD_AND_RESUME = """
import json, sys
import numpy as np
import expkit
done = expkit.Run.from_folder(sys.argv[1])
x = np.load(sys.argv[2])
predicted = done.load_model().predict(x, verbose=0).tolist()
resumed = expkit.resume(sys.argv[3])
print(json.dumps({"predicted": predicted, "status": resumed.status, "epochs": resumed.record.epochs_run}))
"""


def test_a_custom_layer_and_loss_beside_the_config_are_recorded_saved_loaded_and_resumed(exp, tmp_path, monkeypatch):
    import keras

    import expkit
    import expkit.train as train_module

    runs = tmp_path / "runs"
    done = expkit.run(exp / "custom.yaml", runs_dir=runs)
    assert done.status == "done"
    assert "Scale" in (done.path / "summary.txt").read_text()
    (code,) = json.loads((done.path / "results.json").read_text())["user_code"]
    assert code == {"module": "my_layers", "path": str((exp / "my_layers.py").resolve()),
                    "sha256": hashlib.sha256((exp / "my_layers.py").read_bytes()).hexdigest()}

    # an interrupted run of the same config (Ctrl-C in epoch 2) ...
    real = train_module.make_callbacks

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "make_callbacks", lambda *a, **k: real(*a, **k) + [Interrupt()])
    with pytest.raises(KeyboardInterrupt):
        expkit.run(exp / "custom.yaml", runs_dir=runs)
    monkeypatch.undo()
    (cut,) = [p for p in (runs / "custom").iterdir() if p != done.path]

    # ... resumes in a fresh process started elsewhere (its config.yaml is in the run folder now), and
    # that process loads the finished run's model.keras, custom layer and all
    x = np.random.default_rng(0).random((4, *done.model.inputs[0].shape[1:])).astype("float32")
    np.save(tmp_path / "x.npy", x)
    script = tmp_path / "load_and_resume.py"
    script.write_text(LOAD_AND_RESUME)
    out = subprocess.run([sys.executable, str(script), str(done.path), str(tmp_path / "x.npy"), str(cut)],
                         cwd=tmp_path / "elsewhere", env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(got["predicted"], done.model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    assert got["status"] == "done" and got["epochs"] == 2


def test_a_factory_beside_the_config_builds_the_model_with_its_args(exp, tmp_path):
    from expkit.models import count_params
    from expkit.repro import config_source
    from expkit.runner import prepare

    raw = yaml.safe_load((exp / "custom.yaml").read_text())
    raw["model"] = {"factory": "my_layers:build", "args": {"units": 5}}
    with config_source(exp / "custom.yaml"):
        _, model = prepare(validate(raw))
    assert [type(layer).__name__ for layer in model.layers] == ["InputLayer", "Flatten", "Scale", "Dense", "Dense"]
    assert count_params(model)[0] == 64 + (64 * 5 + 5) + (5 * 3 + 3)  # Scale's 64 weights, then the two Dense

    raw["model"] = {"layers": [{"flatten": {}}, {"dense": {"units": 3, "activation": "softmax",
                                                           "kernel_initializer": "my_layers:half"}}]}
    with config_source(exp / "custom.yaml"):
        _, model = prepare(validate(raw))  # an initializer of one's own, where Keras takes a name
    assert np.all(keras_numpy(model.layers[-1].kernel) == 0.5)


def keras_numpy(variable):
    import keras

    return keras.ops.convert_to_numpy(variable)


@pytest.mark.parametrize("model, loss, expected", [
    ({"factory": "my_layers:biuld"}, None, "model.factory: module 'my_layers' has no attribute 'biuld'; did you mean 'build'?"),
    ({"factory": "no_such_models:build"}, None, "model.factory: no module 'no_such_models' (looked in {exp}, then on sys.path)"),
    ({"factory": "broken:build"}, None, "model.factory: module 'broken' failed to import: NameError: name 'oops' is not defined"),
    ({"factory": "my_layers:layer_only"}, None, "model.factory: my_layers:layer_only returned a Scale; a factory "
     "returns a keras.Model"),
    (None, "my_layers:no_loss", "train.loss: module 'my_layers' has no attribute 'no_loss'"),
    ({"layers": [{"flatten": {}}, {"my_layers:Scael": {}}]}, None, "model.layers[1].my_layers:Scael: module 'my_layers' has "
     "no attribute 'Scael'; did you mean 'Scale'?"),
])
def test_user_code_mistakes_are_one_line_naming_the_key_and_module(exp, model, loss, expected):
    from expkit.repro import config_source
    from expkit.runner import prepare

    (exp / "broken.py").write_text("x = oops\n")
    raw = yaml.safe_load((exp / "custom.yaml").read_text())
    if model is not None:
        raw["model"] = model
    if loss is not None:
        raw["train"]["loss"] = loss
    with config_source(exp / "custom.yaml"), pytest.raises(ConfigError) as info:
        prepare(validate(raw))
    assert str(info.value) == expected.format(exp=exp.resolve())


def test_diff_says_when_the_user_code_changed():
    from expkit.report.provenance import compare_provenance

    old = [{"run": "a", "user_code": {"my_models": "a" * 64}}]
    new = [{"run": "a", "user_code": {"my_models": "b" * 64}}]
    assert compare_provenance(old, new) == [
        f"the tables come from different user code: my_models sha256 {'a' * 12} -> {'b' * 12}"]
    assert compare_provenance(old, old) == []


MY_TERMS = '''
import keras


def quarter(y_true, y_pred):
    """A metric of one's own: always 0.25 (connected to the prediction, so Keras tracks it)."""
    return 0.0 * keras.ops.mean(y_pred) + 0.25


class Five(keras.regularizers.Regularizer):
    """A regularizer of one's own adding 5 to the loss: zero gradient, so training is unchanged."""

    def __call__(self, x):
        return 0.0 * keras.ops.sum(x) + 5.0

    def get_config(self):
        return {}
'''


def test_a_metric_and_a_regularizer_of_ones_own_by_module_attribute(tmp_path, tiny_config, monkeypatch):
    """train.metrics and a layer's kernel_regularizer name the user's function and class: the metric's
    column is its value every epoch, and the regularizer adds its 5 to the loss Keras reports, weights unchanged."""
    import expkit
    from expkit.runfolder import read_metrics

    folder = tmp_path / "exp"
    folder.mkdir()
    (folder / "my_terms.py").write_text(MY_TERMS)
    monkeypatch.delitem(sys.modules, "my_terms", raising=False)
    layers = tiny_config["model"]["layers"]
    regularized = [layers[0], {"dense": {**layers[1]["dense"], "kernel_regularizer": "my_terms:Five"}}, layers[2]]
    plain = {**tiny_config, "name": "terms", "train": {**tiny_config["train"], "metrics": ["accuracy", "my_terms:quarter"]}}
    (folder / "plain.yaml").write_text(yaml.safe_dump(plain))
    (folder / "five.yaml").write_text(yaml.safe_dump({**plain, "model": {"layers": regularized}}))
    a = read_metrics(expkit.run(folder / "plain.yaml", runs_dir=tmp_path / "runs").path)
    b = read_metrics(expkit.run(folder / "five.yaml", runs_dir=tmp_path / "runs").path)
    assert [r["quarter"] for r in a] == pytest.approx([0.25] * 3) and [r["val_quarter"] for r in a] == pytest.approx([0.25] * 3)
    assert [r["loss"] - 5.0 for r in b] == pytest.approx([r["loss"] for r in a], abs=1e-4)
    assert [r["accuracy"] for r in b] == [r["accuracy"] for r in a]
    sys.modules.pop("my_terms", None)
