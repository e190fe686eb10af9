import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from expkit.config import validate
from expkit.errors import ConfigError
from expkit.layers import LAYERS, build_layer
from expkit.models import build_model, count_params, layer_table, output_shape, summary_text

SRC = Path(__file__).resolve().parents[1] / "src"

# A small input and a valid spec for every registered layer type (application has its own test).
LAYER_CASES = {
    "dense": ({"units": 4}, (6,), (None, 4)),
    "conv1d": ({"filters": 2, "kernel_size": 3}, (8, 3), (None, 6, 2)),
    "conv2d": ({"filters": 2, "kernel_size": 3, "strides": 2, "padding": "same"}, (8, 8, 1), (None, 4, 4, 2)),
    "conv3d": ({"filters": 2, "kernel_size": 2}, (4, 4, 4, 1), (None, 3, 3, 3, 2)),
    "conv2d_transpose": ({"filters": 2, "kernel_size": 2, "strides": 2}, (4, 4, 1), (None, 8, 8, 2)),
    "separable_conv2d": ({"filters": 2, "kernel_size": 3}, (8, 8, 2), (None, 6, 6, 2)),
    "depthwise_conv2d": ({"kernel_size": 3}, (8, 8, 2), (None, 6, 6, 2)),
    "max_pooling1d": (2, (8, 3), (None, 4, 3)),
    "max_pooling2d": ({"pool_size": 2}, (8, 8, 1), (None, 4, 4, 1)),
    "average_pooling1d": (2, (8, 3), (None, 4, 3)),
    "average_pooling2d": ({"pool_size": 2}, (8, 8, 1), (None, 4, 4, 1)),
    "global_max_pooling1d": (None, (8, 3), (None, 3)),
    "global_max_pooling2d": ({}, (8, 8, 2), (None, 2)),
    "global_average_pooling1d": (None, (8, 3), (None, 3)),
    "global_average_pooling2d": ({}, (8, 8, 2), (None, 2)),
    "flatten": ({}, (4, 4, 2), (None, 32)),
    "reshape": ([4, 4, 1], (16,), (None, 4, 4, 1)),
    "dropout": (0.3, (6,), (None, 6)),
    "spatial_dropout2d": (0.3, (4, 4, 2), (None, 4, 4, 2)),
    "gaussian_noise": (0.1, (6,), (None, 6)),
    "batch_normalization": ({}, (6,), (None, 6)),
    "layer_normalization": ({}, (6,), (None, 6)),
    "activation": ("relu", (6,), (None, 6)),
    "leaky_relu": (0.1, (6,), (None, 6)),
    "relu": ({}, (6,), (None, 6)),
    "prelu": ({}, (6,), (None, 6)),
    "elu": (1.0, (6,), (None, 6)),
    "softmax": ({}, (6,), (None, 6)),
    "zero_padding2d": (1, (4, 4, 1), (None, 6, 6, 1)),
    "cropping2d": (1, (4, 4, 1), (None, 2, 2, 1)),
    "upsampling2d": (2, (4, 4, 1), (None, 8, 8, 1)),
    "rescaling": (0.5, (6,), (None, 6)),
    "random_flip": ("horizontal", (4, 4, 1), (None, 4, 4, 1)),
    "random_rotation": (0.1, (4, 4, 1), (None, 4, 4, 1)),
    "random_translation": ({"height_factor": 0.2, "width_factor": 0.2}, (4, 4, 1), (None, 4, 4, 1)),
    "random_zoom": (0.2, (4, 4, 1), (None, 4, 4, 1)),
    "random_contrast": (0.2, (4, 4, 1), (None, 4, 4, 1)),
}


def test_every_registered_layer_has_a_case():
    # merge layers take several inputs: their cases are in tests/test_graph.py
    merges = {n for n in LAYERS.names() if LAYERS.get(n).merge}
    assert set(LAYERS.names()) - {"application"} - merges == set(LAYER_CASES)


@pytest.mark.parametrize("name", sorted(LAYER_CASES))
def test_layer_builds_with_expected_shape_and_round_trips(name):
    import keras

    args, in_shape, out_shape = LAYER_CASES[name]
    layer = build_layer(name, args, in_shape)
    x = keras.Input(shape=in_shape)
    y = layer(x)
    assert tuple(y.shape) == out_shape
    model = keras.Model(x, y)
    data = np.random.default_rng(0).random((2, *in_shape)).astype("float32")
    out = model.predict(data, verbose=0)
    assert out.shape == (2, *out_shape[1:]) and np.isfinite(out).all()
    clone = type(layer).from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()


def cfg(layers, **train):
    return validate({"name": "m", "model": {"layers": layers}, "train": train})


def test_leaky_relu_slope_and_l1_l2_sugar():
    model = build_model(cfg([{"dense": {"units": 4, "l1": 0.0003, "l2": 0.001}}, {"leaky_relu": 0.1},
                             {"dense": {"units": 3, "activation": "softmax"}}]), (5,), 3)
    reg = model.layers[0].kernel_regularizer
    assert reg.l1 == pytest.approx(0.0003) and reg.l2 == pytest.approx(0.001)
    assert model.layers[1].negative_slope == pytest.approx(0.1)
    assert model.layers[2].kernel_regularizer is None


def test_kernel_regularizer_mapping_and_initializer_with_seed():
    spec = {"dense": {"units": 3, "activation": "softmax", "kernel_regularizer": {"l2": 0.01},
                      "kernel_initializer": {"name": "glorot_normal", "seed": 14}}}
    a = build_model(cfg([spec]), (4,), 3)
    b = build_model(cfg([spec]), (4,), 3)
    assert a.layers[0].kernel_regularizer.l2 == pytest.approx(0.01)
    np.testing.assert_array_equal(a.layers[0].kernel.numpy(), b.layers[0].kernel.numpy())


def test_keras_class_named_directly():
    model = build_model(cfg([{"Flatten": {}}, {"dense": {"units": 2, "activation": "softmax"}}]), (3, 3), 2)
    assert type(model.layers[0]).__name__ == "Flatten"
    with pytest.raises(ConfigError) as info:
        build_model(cfg([{"Flaten": {}}, {"dense": {"units": 2}}]), (3, 3), 2)
    assert info.value.path == "model.layers[0].Flaten" and "did you mean 'Flatten'" in info.value.message


def test_image_shrinking_below_one_pixel_is_reported():
    layers = [{"conv2d": {"filters": 4, "kernel_size": 3, "strides": 2}} for _ in range(4)]
    with pytest.raises(ConfigError) as info:
        build_model(cfg(layers + [{"flatten": {}}, {"dense": {"units": 10}}]), (16, 16, 1), 10)
    assert info.value.path.startswith("model.layers[")
    assert info.value.path in ("model.layers[2].conv2d", "model.layers[3].conv2d")


def test_output_size_must_match_classes():
    with pytest.raises(ConfigError) as info:
        build_model(cfg([{"flatten": {}}, {"dense": {"units": 7, "activation": "softmax"}}]), (4, 4), 10)
    assert info.value.path == "model.layers[1].dense" and "10 classes" in info.value.message


def test_missing_and_unknown_arguments_name_the_layer():
    with pytest.raises(ConfigError) as info:
        build_model(cfg([{"conv2d": {"kernel_size": 3}}, {"flatten": {}}, {"dense": {"units": 2}}]), (8, 8, 1), 2)
    assert info.value.path == "model.layers[0].conv2d" and "filters" in info.value.message
    with pytest.raises(ConfigError) as info:
        build_model(cfg([{"dense": {"units": 2, "unitz": 3}}]), (4,), 2)
    assert "unitz" in info.value.message


def test_application_resnet50_without_weights():
    spec = [{"application": {"name": "ResNet50", "include_top": False, "pooling": "avg"}},
            {"dense": {"units": 7, "activation": "softmax"}}]
    model = build_model(cfg(spec), (48, 48, 1), 7)
    import keras

    assert output_shape(model) == (None, 7)
    body = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(48, 48, 1))
    assert count_params(model)[0] == body.count_params() + 2048 * 7 + 7
    with pytest.raises(ConfigError, match="did you mean 'ResNet50'"):
        build_model(cfg([{"application": {"name": "ResNet05"}}]), (48, 48, 1), 7)


def test_summary_text_and_layer_table():
    model = build_model(cfg([{"dense": {"units": 32, "activation": "sigmoid"}},
                             {"dense": {"units": 10, "activation": "softmax"}}]), (784,), 10)
    text = summary_text(model)
    assert "Total params: 25,450" in text
    assert [(r[1], r[2], r[3]) for r in layer_table(model)] == [("Dense", (None, 32), 25120), ("Dense", (None, 10), 330)]


def test_mixed_precision_keeps_output_in_float32():
    import keras

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = build_model(cfg([{"dense": {"units": 4}}, {"dense": {"units": 3, "activation": "softmax"}}],
                                precision="mixed_bfloat16"), (5,), 3)
        assert model.layers[0].compute_dtype == "bfloat16"
        assert model.layers[-1].compute_dtype == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("name", ["MobileNetV2", "ResNet50"])
def test_an_application_written_as_a_layer_points_to_the_application_form(name):
    with pytest.raises(ConfigError) as info:
        build_model(cfg([{name: {"include_top": False}}, {"dense": {"units": 3}}]), (32, 32, 3), 3)
    assert info.value.path == f"model.layers[0].{name}"
    assert info.value.message.startswith(f"'{name}' is a keras.applications model, not a keras.layers layer: "
                                         f"write it as {{application: {{name: {name}, ")


def test_an_unknown_keras_class_still_suggests_a_layer():
    with pytest.raises(ConfigError) as info:
        build_model(cfg([{"Dense2": {"units": 3}}]), (4,), 3)
    assert info.value.path == "model.layers[0].Dense2"
    assert "keras.layers has no layer 'Dense2'; did you mean 'Dense'?" == info.value.message


def test_applications_written_as_layers_pass_config_validation_without_tensorflow():
    code = ("import sys; from expkit.config import validate; "
            "validate({'name': 'm', 'model': {'layers': [{'MobileNetV2': {}}]}}); "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, env={"PYTHONPATH": str(SRC), "PATH": ""})


def test_a_stray_label_in_a_local_file_is_blamed_on_the_data():
    config = validate({"name": "m", "data": {"dataset": "npz", "path": "data/d.npz"},
                       "model": {"layers": [{"dense": {"units": 10, "activation": "softmax"}}]}})
    with pytest.raises(ConfigError) as info:
        build_model(config, (4,), 11)
    assert info.value.path == "model.layers[0].dense"
    assert ("if the data has 10 classes, its labels must be 0..9 integers, but data/d.npz holds label 10: "
            "fix the file") in info.value.message
    # with named classes (or a built-in dataset) the label range is already checked by the data
    assert "holds label" not in str(pytest.raises(ConfigError, build_model, cfg([{"dense": {"units": 10}}]), (4,), 11).value)


def test_any_valid_run_name_builds_a_model():
    """A name is a folder name, not a Python identifier: '<', '&' or spaces must not reach Keras."""
    cfg = validate({"name": "lr<0.1 & more", "model": {"layers": [{"dense": {"units": 3, "activation": "softmax"}}]},
                    "train": {"loss": "sparse_categorical_crossentropy"}})
    model = build_model(cfg, (4,), 3)
    assert model.name == "lr_0_1___more" and model.output_shape == (None, 3)


@pytest.mark.parametrize("name", ["_baseline", "-v2", "(test)"])
def test_every_name_the_schema_accepts_trains(tmp_path, tiny_config, name):
    import json

    from expkit.models import keras_model_name
    from expkit.runner import run_experiment

    cfg = validate({**tiny_config, "name": name, "train": {**tiny_config.get("train", {}), "epochs": 1}})
    run = run_experiment(cfg, runs_dir=tmp_path / "runs", device="cpu")
    results = json.loads((run.path / "results.json").read_text())
    assert (results["name"], results["status"]) == (name, "done")
    assert run.path.parent == tmp_path / "runs" / name
    assert keras_model_name(name) == {"_baseline": "m_baseline", "-v2": "m_v2", "(test)": "m_test_"}[name]


def test_augmentation_layers_act_in_training_only(tmp_path, tiny_config):
    """Keras' random preprocessing layers named in a config: identity at inference (evaluate, predict,
    the confusion matrix), random in training, on whichever backend the suite runs (make test: both)."""
    import keras

    import expkit
    from expkit.runfolder.confusion import read_confusion

    augment = [{"random_flip": "horizontal"}, {"RandomTranslation": {"height_factor": 0.25, "width_factor": 0.25}},
               {"random_rotation": 0.1}]
    layers = [{"reshape": [8, 8, 1]}, *augment, *tiny_config["model"]["layers"]]
    run = expkit.run({**tiny_config, "model": {"layers": layers}, "train": {**tiny_config["train"], "epochs": 1}},
                     runs_dir=tmp_path)
    model = run.model
    assert [type(layer).__name__ for layer in model.layers[1:4]] == ["RandomFlip", "RandomTranslation", "RandomRotation"]
    x = np.random.default_rng(0).random((16, 8, 8, 1)).astype("float32")
    head = keras.Sequential([keras.Input((8, 8, 1)), *model.layers[4:]])  # the model without its augmentation
    expected = keras.ops.convert_to_numpy(head(x))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(x, training=False)), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-6)
    trained = [keras.ops.convert_to_numpy(model(x, training=True)) for _ in range(2)]
    assert np.abs(trained[0] - expected).max() > 1e-3 and np.abs(trained[0] - trained[1]).max() > 1e-3
    _, counts = read_confusion(run.path)  # the test set was seen as it is: its accuracy is the matrix's trace
    assert np.trace(counts) / counts.sum() == pytest.approx(run.record.test["accuracy"], abs=1e-6)
