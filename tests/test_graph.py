"""Graphs in model.layers (names, inputs, merges), blocks with parameters, frozen layers and weights files."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from expkit.config import load_config, validate
from expkit.errors import ConfigError
from expkit.graph import plan_nodes
from expkit.layers import LAYERS
from expkit.models import build_model, count_params, summary_text

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO / "src")}


def cfg(layers, blocks=None, **model):
    return validate({"name": "g", "model": {"layers": layers, **({"blocks": blocks} if blocks else {}), **model}})


def error(layers, blocks=None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        cfg(layers, blocks)
    return info.value


# A block with a skip connection: `input` is the block's input, `main` its last batch norm.
RESIDUAL = {"params": {"units": 4, "rate": 0.0},
            "layers": [{"dense": {"units": "$units", "activation": "relu"}},
                       {"dropout": {"rate": "$rate"}},
                       {"dense": {"units": "$units", "name": "main"}},
                       {"add": {"inputs": ["input", "main"]}}]}


# --- merges ---------------------------------------------------------------------------------------

# Two (4,) inputs x and x+1 through each merge: the expected output from numpy.
MERGES = {
    "add": ({}, lambda a, b: a + b),
    "subtract": ({}, lambda a, b: a - b),
    "multiply": ({}, lambda a, b: a * b),
    "average": ({}, lambda a, b: (a + b) / 2),
    "maximum": ({}, np.maximum),
    "minimum": ({}, np.minimum),
    "concatenate": ({"axis": -1}, lambda a, b: np.concatenate([a, b], axis=-1)),
    "dot": ({"axes": 1}, lambda a, b: (a * b).sum(axis=1, keepdims=True)),
}


def test_every_merge_layer_has_a_case():
    assert {n for n in LAYERS.names() if LAYERS.get(n).merge} == set(MERGES)


@pytest.mark.parametrize("name", sorted(MERGES))
def test_merge_layers_compute_what_keras_computes_on_the_named_inputs(name):
    import keras

    args, expected = MERGES[name]
    shifted = {"dense": {"units": 4, "kernel_initializer": "identity", "bias_initializer": "ones", "name": "plus1"}}
    model = build_model(cfg([shifted, {name: {**args, "inputs": ["input", "plus1"]}}]), (4,), None)
    assert not isinstance(model, keras.Sequential)
    x = np.arange(8, dtype="float32").reshape(2, 4) - 3
    np.testing.assert_allclose(model.predict(x, verbose=0), expected(x, x + 1), rtol=1e-6)


def test_a_stack_with_names_is_still_sequential_and_a_skip_is_functional():
    import keras

    stack = build_model(cfg([{"dense": {"units": 4, "name": "hidden"}}, {"dense": {"units": 2}}]), (3,), None)
    assert isinstance(stack, keras.Sequential) and stack.layers[0].name == "hidden"
    skip = build_model(cfg([{"dense": {"units": 3, "name": "a"}}, {"dense": {"units": 3, "name": "b"}},
                            {"concatenate": {"inputs": ["a", "b"]}}, {"dense": {"units": 2}}]), (3,), None)
    assert not isinstance(skip, keras.Sequential)
    assert count_params(skip) == (12 + 12 + 14, 12 + 12 + 14)
    assert "Connected to" in summary_text(skip)


# --- graph errors name the key path ----------------------------------------------------------------


@pytest.mark.parametrize("layers, path, words", [
    ([{"dense": {"units": 3, "name": "a"}}, {"add": {"inputs": ["input", "b"]}}],
     "model.layers[1].add.inputs[1]", "no earlier layer is named 'b'"),
    ([{"dense": {"units": 3, "name": "hidden"}}, {"dense": {"units": 3, "inputs": "hiden"}}],
     "model.layers[1].dense.inputs", "did you mean 'hidden'?"),
    ([{"dense": {"units": 3, "inputs": "later"}}, {"dense": {"units": 3, "name": "later"}}],
     "model.layers[0].dense.inputs", "not an earlier layer (it is model.layers[1])"),
    ([{"dense": {"units": 3}}, {"add": {}}], "model.layers[1].add.inputs", "merges several inputs"),
    ([{"dense": {"units": 3, "name": "a"}}, {"dense": {"units": 3, "inputs": ["input", "a"]}}],
     "model.layers[1].dense.inputs", "takes one input, found 2"),
    ([{"dense": {"units": 3, "name": "a"}}, {"dense": {"units": 3, "name": "b", "inputs": "input"}},
      {"dense": {"units": 2}}], "model.layers[0].dense", "goes nowhere"),
    ([{"dense": {"units": 3, "name": "a"}}, {"dense": {"units": 3, "name": "a"}}],
     "model.layers[1].dense.name", "'a' already names model.layers[0]"),
    ([{"dense": {"units": 3, "name": "input"}}], "model.layers[0].dense.name", "names the model's input"),
])
def test_graph_mistakes_name_the_key_path_before_keras(layers, path, words):
    err = error(layers)
    assert err.path == path and words in err.message, str(err)


def test_shapes_that_do_not_merge_name_the_merge_layer():
    bad = cfg([{"dense": {"units": 3, "name": "a"}}, {"dense": {"units": 5, "name": "b"}},
               {"add": {"inputs": ["a", "b"]}}])
    with pytest.raises(ConfigError) as info:
        build_model(bad, (4,), None)
    assert info.value.path == "model.layers[2].add" and "Keras rejected this layer" in info.value.message


def test_a_graph_error_in_a_config_file_is_one_line_and_exit_status_2(write_yaml):
    path = write_yaml("bad.yaml", {"model": {"layers": [{"dense": {"units": 3}}, {"add": {"inputs": ["input", "x"]}}]}})
    done = subprocess.run([sys.executable, "-m", "expkit", "summary", str(path)], env=ENV,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"expkit: error: {path}: model.layers[1].add.inputs[1]: no earlier layer is named 'x' (earlier names: input)"]


# --- blocks ---------------------------------------------------------------------------------------


def test_a_block_expands_with_its_parameters_and_names_each_use():
    import keras

    model = build_model(cfg([{"dense": {"units": 4}}, {"res": {}}, {"res": {"name": "wide", "units": 4, "rate": 0.5}},
                             {"dense": {"units": 2}}], {"res": RESIDUAL}), (3,), None)
    names = [layer.name for layer in model.layers[2:]]  # after the input and the first (Keras-named) dense
    assert names[:4] == ["res_1_dense_0", "res_1_dropout_1", "res_1_main", "res_1_add_3"]
    assert names[4:8] == ["wide_dense_0", "wide_dropout_1", "wide_main", "wide_add_3"]
    assert model.get_layer("wide_dropout_1").rate == 0.5 and model.get_layer("res_1_dropout_1").rate == 0.0
    # the same model in plain Keras: two residual dense pairs of 4 units
    x = inp = keras.Input((3,))
    x = keras.layers.Dense(4)(x)
    for _ in range(2):
        y = keras.layers.Dense(4, activation="relu")(x)
        x = keras.layers.Add()([x, keras.layers.Dense(4)(y)])
    reference = keras.Model(inp, keras.layers.Dense(2)(x))
    assert count_params(model) == count_params(reference) == (16 + 2 * 40 + 10,) * 2


def test_a_stack_of_blocks_without_inputs_is_sequential_and_a_frozen_use_freezes_its_layers():
    import keras

    block = {"params": {"units": 4}, "layers": [{"dense": {"units": "$units"}}, {"batch_normalization": {}}]}
    model = build_model(cfg([{"pair": {}}, {"pair": {"units": 2, "trainable": False}}], {"pair": block}), (3,), None)
    assert isinstance(model, keras.Sequential)
    assert [layer.trainable for layer in model.layers] == [True, True, False, False]
    # Keras' own counts: 16 + 16 trainable in the first use; the second's 10 + 8 and both uses' moving stats frozen
    assert count_params(model) == (16 + 16 + 10 + 8, 16 + 8)
    text = summary_text(model)
    assert "Trainable params: 24" in text and "Non-trainable params: 26" in text


@pytest.mark.parametrize("layers, blocks, path, words", [
    ([{"res": {"unit": 3}}], {"res": RESIDUAL}, "model.layers[0].res.unit",
     "block 'res' has no parameter 'unit'; did you mean 'units'?"),
    ([{"res": {}}], {"res": {"params": {"units": 4}, "layers": [{"dense": {"units": "$unit"}}]}},
     "model.blocks.res.layers[0].dense.units", "'$unit' is not a parameter of block 'res'"),
    ([{"res": {}}], {"res": {"layers": [{"dense": {"units": 3, "inputs": "nope"}}]}},
     "model.blocks.res.layers[0].dense.inputs", "no earlier layer is named 'nope'"),
    ([{"loop": {}}], {"loop": {"layers": [{"loop": {}}]}}, "model.blocks.loop.layers[0].loop", "uses itself"),
    ([{"res": 3}], {"res": RESIDUAL}, "model.layers[0].res", "takes a mapping of its parameters"),
    ([{"res": {"trainable": "no"}}], {"res": RESIDUAL}, "model.layers[0].res.trainable", "true or false"),
    ([{"dense": 3}], {"dense": {"layers": [{"dense": 3}]}}, "model.blocks.dense", "is a layer type"),
    ([{"resid": {}}], {"res": RESIDUAL}, "model.layers[0]", "unknown layer type or block 'resid'; did you mean block 'res'?"),
    ([{"res": {}}], {"res": {"param": {}, "layers": [{"dense": 3}]}}, "model.blocks.res.param", "did you mean 'params'?"),
    ([{"res": {"name": "x"}}, {"res": {"name": "x"}}], {"res": RESIDUAL}, "model.layers[1].res.name", "already names"),
])
def test_block_mistakes_name_the_key_path(layers, blocks, path, words):
    err = error(layers, blocks)
    assert words in err.message and err.path == path, str(err)


def test_a_block_layer_keras_rejects_names_the_use_and_the_blocks_layer():
    bad = cfg([{"res": {"units": 5}}], {"res": RESIDUAL})  # 5 units cannot be added to the 3-wide input
    with pytest.raises(ConfigError) as info:
        build_model(bad, (3,), None)
    assert info.value.path == "model.layers[0].res"
    assert info.value.message.startswith("model.blocks.res.layers[3].add: Keras rejected this layer")


def test_a_sweep_over_a_block_parameter_builds_each_trial():
    from expkit.sweeps.trials import expand_sweep

    sweep = validate({"name": "s", "model": {"blocks": {"res": RESIDUAL},
                                             "layers": [{"dense": {"units": 4}}, {"res": {}}, {"dense": {"units": 2}}]},
                      "sweep": {"grid": {"model.layers[1].res.units": [4, 6]}}})
    trials = expand_sweep(sweep)
    assert [t.values for t in trials] == [{"model.layers[1].res.units": 4}, {"model.layers[1].res.units": 6}]
    with pytest.raises(ConfigError) as info:  # 6 units do not add to the block's 4-wide input: named per trial
        build_model(trials[1].config, (3,), None)
    assert info.value.path == "model.layers[1].res"
    assert count_params(build_model(trials[0].config, (3,), None))[0] == 16 + 40 + 10


def test_expkit_summary_shows_the_expanded_block(write_yaml):
    path = write_yaml("blocks.yaml", {"model": {"blocks": {"res": RESIDUAL}, "input_shape": [4],
                                                "layers": [{"res": {"name": "first"}}, {"dense": {"units": 10}}]}})
    done = subprocess.run([sys.executable, "-m", "expkit", "summary", str(path)], env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    for name in ("first_dense_0", "first_dropout_1", "first_main", "first_add_3"):
        assert name in done.stdout
    assert "Total params: 90" in done.stdout  # 20 + 20 in the block, 50 in the top


# --- fine-tuning: frozen layers, weights files ------------------------------------------------------


def test_pretrained_weights_beside_the_config_load_and_frozen_layers_stay_unchanged(tiny_config, write_yaml, tmp_path):
    import expkit

    layers = [{"flatten": {}}, {"dense": {"units": 8, "activation": "relu", "name": "hidden"}},
              {"dense": {"units": 3, "activation": "softmax", "name": "top"}}]
    source = build_model(validate({**tiny_config, "model": {"layers": layers}}), (8, 8), 3)
    pretrained = [w.copy() for w in source.get_layer("hidden").get_weights()]
    (tmp_path / "nets").mkdir()
    source.save_weights(tmp_path / "nets" / "pre.weights.h5")
    frozen = [layers[0], {"dense": {**layers[1]["dense"], "trainable": False}}, layers[2]]
    path = write_yaml("ft.yaml", {**tiny_config, "model": {"layers": frozen, "weights": "nets/pre.weights.h5"},
                                  "train": {**tiny_config["train"], "epochs": 2}})
    loaded = load_config(path)
    assert loaded.model.weights == str(tmp_path / "nets" / "pre.weights.h5")  # beside the config, not the cwd
    run = expkit.run(loaded, runs_dir=tmp_path / "runs")
    assert run.status == "done"
    after = run.model.get_layer("hidden").get_weights()
    for before, now in zip(pretrained, after):
        np.testing.assert_array_equal(before, now)
    top_before = source.get_layer("top").get_weights()[0]
    assert not np.allclose(top_before, run.model.get_layer("top").get_weights()[0])  # the rest trained
    assert (run.record.params, run.record.trainable_params) == (8 * 64 + 8 + 27, 27)
    summary = (run.path / "summary.txt").read_text()
    assert "Trainable params: 27" in summary and "Non-trainable params: 520" in summary
    import keras

    saved = keras.saving.load_model(run.path / "model.keras")  # the frozen layer stays frozen
    assert [layer.trainable for layer in saved.layers] == [True, False, True]
    import hashlib

    weights = tmp_path / "nets" / "pre.weights.h5"  # what it started from, in the reproducibility record
    assert run.record.weights_files == {str(weights): hashlib.sha256(weights.read_bytes()).hexdigest()}


def test_diff_says_when_the_pretrained_weights_changed():
    from expkit.report.provenance import compare_provenance

    old = [{"run": "a", "weights_files": {"w.weights.h5": "a" * 64}}]
    new = [{"run": "a", "weights_files": {"w.weights.h5": "b" * 64}}]
    assert compare_provenance(old, new) == [
        "the tables come from different pretrained weights: w.weights.h5 sha256 aaaaaaaaaaaa -> bbbbbbbbbbbb"]
    assert compare_provenance(old, old) == []


def test_weights_files_are_read_beside_the_file_that_names_them(write_yaml, tmp_path):
    (tmp_path / "base").mkdir()
    base = {"model": {"weights": "w.weights.h5", "layers": [
        {"application": {"name": "MobileNet", "weights": "backbone.weights.h5"}}, {"dense": 10}]}}
    (tmp_path / "base" / "base.yaml").write_text(yaml.safe_dump(base))
    child = load_config(write_yaml("child.yaml", {"extends": "base/base.yaml"}))
    assert child.model.weights == str(tmp_path / "base" / "w.weights.h5")
    assert child.model.layers[0]["application"]["weights"] == str(tmp_path / "base" / "backbone.weights.h5")
    imagenet = load_config(write_yaml("i.yaml", {"model": {"layers": [{"application": {"name": "MobileNet", "weights": "imagenet"}}]}}))
    assert imagenet.model.layers[0]["application"]["weights"] == "imagenet"


def test_a_weights_file_that_does_not_fit_names_model_weights(tmp_path):
    import keras

    other = keras.Sequential([keras.Input((3,)), keras.layers.Dense(5)])
    other.save_weights(tmp_path / "other.weights.h5")
    for weights, words in ((tmp_path / "other.weights.h5", "cannot load"), (tmp_path / "none.weights.h5", "no weights file")):
        with pytest.raises(ConfigError) as info:
            build_model(cfg([{"dense": {"units": 4}}], weights=str(weights)), (3,), None)
        assert info.value.path == "model.weights" and words in info.value.message


def test_a_frozen_application_reads_its_weights_beside_the_config_and_counts_as_keras_counts(write_yaml, tmp_path):
    import keras

    app = {"name": "MobileNet", "alpha": 0.25, "include_top": False, "pooling": "avg", "input_shape": [32, 32, 3]}
    pretrained = keras.applications.MobileNet(**{k: v for k, v in app.items() if k != "name"}, weights=None)
    pretrained.save_weights(tmp_path / "backbone.weights.h5")
    path = write_yaml("ft.yaml", {"model": {"input_shape": [32, 32, 3], "layers": [
        {"application": {**app, "weights": "backbone.weights.h5", "trainable": False}},
        {"dense": {"units": 10, "activation": "softmax"}}]}})
    model = build_model(load_config(path), (32, 32, 3), 10)
    backbone = model.layers[0]
    assert len(backbone.weights) == len(pretrained.weights)
    for mine, theirs in zip(backbone.weights, pretrained.weights):
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy())
    assert backbone.trainable is False and backbone.trainable_weights == []
    total, trainable = count_params(model)
    assert trainable == 256 * 10 + 10
    assert total == backbone.count_params() + trainable
    assert f"Trainable params: {trainable:,}" in summary_text(model)


def test_plan_nodes_is_pure_and_reads_the_validated_blocks():
    nodes = plan_nodes([{"res": {"units": 3}}], {"res": RESIDUAL})
    assert [(n.type, n.inputs) for n in nodes] == [("dense", (-1,)), ("dropout", (0,)), ("dense", (1,)), ("add", (-1, 2))]
    assert nodes[2].args == {"units": 3, "name": "res_1_main"} and nodes[3].within == "model.blocks.res.layers[3].add"


# --- vectorised sweeps ----------------------------------------------------------------------------


def _graph_sweep(tiny_config, sweep, frozen=True, **train):
    from test_vectorize import needs_jax, sweep_cfg

    if needs_jax.args[0]:
        pytest.skip(needs_jax.kwargs["reason"])
    graph = {**tiny_config, "model": {"blocks": {"res": RESIDUAL}, "layers": [
        {"flatten": {}}, {"dense": {"units": 4, "trainable": not frozen}}, {"res": {"rate": 0.1}},
        {"dense": {"units": 3, "activation": "softmax"}}]}}
    return sweep_cfg(graph, sweep, **train)


def test_a_graph_trains_in_a_vectorised_group(tiny_config, tmp_path):
    from expkit.runfolder import read_record
    from expkit.sweeps.driver import run_sweep

    cfg = _graph_sweep(tiny_config, {"grid": {"model.layers[2].res.rate": [0.1, 0.3]}, "vectorize": True}, epochs=1)
    log = tmp_path / "log.txt"
    with open(log, "w") as fh:
        sweep_dir, counts = run_sweep(cfg, runs_dir=tmp_path, log=fh)
    assert counts == {"done": 2}, log.read_text()
    assert "2 trials as one JAX program" in log.read_text()
    records = [read_record(p) for p in sweep_dir.iterdir() if (p / "results.json").exists()]
    assert len(records) == 2
    for record in records:  # the first dense layer frozen: trained in the group all the same
        assert record.extra["vectorized"]["trials"] == 2
        assert (record.params, record.trainable_params) == (64 * 4 + 4 + 2 * 20 + 15, 2 * 20 + 15)


@pytest.mark.slow
def test_a_graph_trains_in_a_vectorised_group_as_its_trials_do_one_at_a_time(tiny_config, tmp_path):
    """A block with a skip connection, its dropout rate swept: one JAX program whose every epoch equals
    the trials trained alone on JAX."""
    from test_vectorize import equal_to_one_at_a_time

    cfg = _graph_sweep(tiny_config, {"grid": {"model.layers[2].res.rate": [0.1, 0.3]}, "seeds": [3, 4], "vectorize": True}, epochs=2)
    log = equal_to_one_at_a_time(cfg, tmp_path, {"done": 4})
    assert "4 trials as one JAX program" in log


@pytest.mark.slow  # three tiny runs: about 20 s on an idle 2-core machine
def test_an_interrupted_graph_run_with_frozen_layers_resumes_to_the_uninterrupted_numbers(tiny_config, tmp_path, monkeypatch):
    import keras

    import expkit
    from expkit.runner import run_experiment
    from test_checkpoint import interrupt_in_epoch, rows

    graph = {**tiny_config, "model": {"blocks": {"res": RESIDUAL}, "layers": [
        {"flatten": {}}, {"dense": {"units": 4, "trainable": False}}, {"res": {"rate": 0.2}},
        {"dense": {"units": 3, "activation": "softmax"}}]}, "train": {**tiny_config["train"], "epochs": 3}}
    whole = run_experiment(validate(graph), runs_dir=tmp_path / "whole")
    interrupt_in_epoch(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(validate(graph), runs_dir=tmp_path / "cut")
    monkeypatch.undo()
    (cut,) = (tmp_path / "cut" / "tiny").iterdir()
    resumed = expkit.resume(cut)
    assert resumed.status == "done" and rows(cut) == rows(whole.path) and len(rows(cut)) == 3
    saved = keras.saving.load_model(cut / "model.keras")
    assert not isinstance(saved, keras.Sequential) and saved.get_layer("res_1_main").trainable
    assert count_params(saved) == (64 * 4 + 4 + 40 + 15, 40 + 15)
