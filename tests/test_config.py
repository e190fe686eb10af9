import json

import pytest

from expkit.config import deep_merge, json_schema, load_config, parse_override, set_path
from expkit.errors import ConfigError

MINIMAL = {"model": {"layers": [{"dense": {"units": 10, "activation": "softmax"}}]}}


def error_of(path, overrides=()):
    with pytest.raises(ConfigError) as info:
        load_config(path, list(overrides))
    return info.value


def test_defaults_filled_and_name_from_file(write_yaml):
    cfg = load_config(write_yaml("exp_a.yaml", MINIMAL))
    assert cfg.name == "exp_a"
    assert cfg.train.optimizer == "sgd" and cfg.train.learning_rate == 0.01
    assert cfg.train.batch_size == 32 and cfg.train.epochs == 10
    assert cfg.data.dataset == "fashion_mnist_sample" and cfg.data.layout == "image"
    resolved = cfg.to_dict()
    assert resolved["train"]["steps_per_execution"] == "auto"
    assert resolved["model"]["layers"] == [{"dense": {"units": 10, "activation": "softmax"}}]


def test_unknown_key_with_did_you_mean(write_yaml):
    err = error_of(write_yaml("a.yaml", {**MINIMAL, "train": {"learnin_rate": 0.1}}))
    assert err.file.endswith("a.yaml")
    assert err.path == "train.learnin_rate"
    assert "did you mean 'learning_rate'" in err.message


def test_unknown_top_level_key_lists_known(write_yaml):
    err = error_of(write_yaml("a.yaml", {**MINIMAL, "zzz": 1}))
    assert err.path == "zzz" and "known:" in err.message and "train" in err.message


def test_wrong_type_names_found_value(write_yaml):
    err = error_of(write_yaml("a.yaml", {**MINIMAL, "train": {"epochs": "ten"}}))
    assert err.path == "train.epochs"
    assert "'ten'" in err.message and "integer" in err.message


def test_out_of_range(write_yaml):
    err = error_of(write_yaml("a.yaml", {**MINIMAL, "data": {"validation_split": 1.5}}))
    assert err.path == "data.validation_split" and "less than 1" in err.message


def test_missing_required_key(write_yaml):
    err = error_of(write_yaml("a.yaml", {"name": "x"}))
    assert err.path == "model" and "missing" in err.message


def test_malformed_yaml_reports_line(write_yaml):
    path = write_yaml("bad.yaml", "name: x\nmodel:\n  layers: [\n    - dense: {units: 3\n")
    err = error_of(path)
    assert "malformed YAML" in err.message and "line" in err.message
    assert str(err).startswith(str(path))


def test_top_level_must_be_mapping(write_yaml):
    err = error_of(write_yaml("list.yaml", "- 1\n- 2\n"))
    assert "mapping" in err.message


def test_layer_spec_errors_name_the_layer(write_yaml):
    cfg = {"model": {"layers": [{"flatten": {}}, {"dense": {"units": 3}, "dropout": 0.2}]}}
    err = error_of(write_yaml("a.yaml", cfg))
    assert err.path == "model.layers[1]" and "single-key" in err.message
    cfg = {"model": {"layers": [{"flatten": {}}, {"denze": {"units": 3}}]}}
    err = error_of(write_yaml("b.yaml", cfg))
    assert err.path == "model.layers[1]" and "did you mean 'dense'" in err.message


def test_extends_merges_and_child_wins(write_yaml):
    write_yaml("base.yaml", {"name": "base", "seed": 14, "train": {"epochs": 7, "learning_rate": 0.5}, **MINIMAL})
    child = write_yaml("child.yaml", {"extends": "base.yaml", "train": {"epochs": 2}})
    cfg = load_config(child)
    assert cfg.name == "child"  # a child is its own experiment
    assert cfg.seed == 14 and cfg.train.epochs == 2 and cfg.train.learning_rate == 0.5


def test_extends_missing_and_cycle(write_yaml):
    err = error_of(write_yaml("c.yaml", {"extends": "nope.yaml", **MINIMAL}))
    assert err.path == "extends" and "not found" in err.message
    write_yaml("x.yaml", {"extends": "y.yaml"})
    err = error_of(write_yaml("y.yaml", {"extends": "x.yaml"}))
    assert "cycle" in err.message


def test_set_overrides_typed_as_yaml_and_validated(write_yaml):
    path = write_yaml("a.yaml", {"model": {"layers": [{"flatten": {}}, {"dropout": 0.2},
                                                      {"dense": {"units": 10}}]}})
    cfg = load_config(path, ["train.epochs=3", "model.layers.1.dropout=0.4", "train.optimizer={name: sgd, momentum: 0.9}"])
    assert cfg.train.epochs == 3
    assert cfg.model.layers[1] == {"dropout": 0.4}
    assert cfg.train.optimizer == {"name": "sgd", "momentum": 0.9}
    err = error_of(path, ["train.epochs=many"])
    assert err.path == "train.epochs"
    err = error_of(path, ["model.layers.9.dropout=0.1"])
    assert "out of range" in err.message and err.path == "model.layers[9]"
    err = error_of(path, ["train.epoch=3"])
    assert err.path == "train.epoch" and "did you mean 'epochs'" in err.message
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_override("train.epochs")


def test_optimizer_mapping_needs_name(write_yaml):
    err = error_of(write_yaml("a.yaml", {**MINIMAL, "train": {"optimizer": {"momentum": 0.9}}}))
    assert err.path == "train.optimizer" and "name" in err.message


def test_sweep_block_checks(write_yaml):
    bad = {**MINIMAL, "sweep": {"zip": {"a.b": [1, 2], "c.d": [1]}}}
    assert "same length" in error_of(write_yaml("a.yaml", bad)).message
    bad = {**MINIMAL, "sweep": {}}
    assert "empty sweep" in error_of(write_yaml("b.yaml", bad)).message


def test_deep_merge_replaces_lists_and_merges_maps():
    merged = deep_merge({"a": {"x": 1, "y": [1, 2]}, "b": 1}, {"a": {"y": [3]}, "c": 2})
    assert merged == {"a": {"x": 1, "y": [3]}, "b": 1, "c": 2}


def test_set_path_creates_mappings_and_does_not_mutate():
    raw = {"train": None}
    out = set_path(raw, "train.early_stopping.patience", 5)
    assert out == {"train": {"early_stopping": {"patience": 5}}} and raw == {"train": None}


def test_json_schema_exports_descriptions():
    schema = json_schema()
    json.dumps(schema)
    assert "extends" in schema["properties"]
    train = schema["$defs"]["TrainConfig"]["properties"]
    assert "description" in train["steps_per_execution"]
