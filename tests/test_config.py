import json

import pytest

from expkit.config import deep_merge, json_schema, load_config, parse_override, read_yaml, set_path, split_key
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


# --- YAML reading ---------------------------------------------------------------------------------


def test_duplicate_key_names_key_path_and_lines(write_yaml):
    text = ("model:\n  layers:\n    - dense: {units: 10, activation: softmax}\n"
            "train:\n  epochs: 3\n  learning_rate: 0.1\n  epochs: 4\n")
    err = error_of(write_yaml("dup.yaml", text))
    assert err.file.endswith("dup.yaml") and err.path == "train.epochs"
    assert "duplicate key 'epochs' on line 7 (first on line 5)" in err.message
    # inside a flow mapping in a list, and at the top level
    err = error_of(write_yaml("dup2.yaml", "model:\n  layers:\n    - dense: {units: 3, units: 4}\n"))
    assert err.path == "model.layers[0].dense.units" and "duplicate key 'units'" in err.message
    err = error_of(write_yaml("dup3.yaml", "seed: 1\nmodel: {layers: [{dense: 3}]}\nseed: 2\n"))
    assert err.path == "seed" and "line 3 (first on line 1)" in err.message


def test_duplicate_key_in_an_extended_base_names_the_base(write_yaml):
    write_yaml("base.yaml", "train: {epochs: 1}\ntrain: {epochs: 2}\n")
    err = error_of(write_yaml("child.yaml", {"extends": "base.yaml", **MINIMAL}))
    assert err.file.endswith("base.yaml") and err.path == "train"


def test_merge_keys_may_override(write_yaml):
    path = write_yaml("m.yaml", "model: {layers: [{dense: 10}]}\ntrain:\n  <<: {epochs: 2, batch_size: 8}\n  epochs: 5\n")
    cfg = load_config(path)
    assert cfg.train.epochs == 5 and cfg.train.batch_size == 8


@pytest.mark.parametrize("content, expected", [
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "expected a UTF-8 YAML text file, found binary data"),
    (b"name: caf\xe9\nmodel: {layers: [{dense: 10}]}\n", "found byte 0xe9 on line 1 that is not UTF-8"),
    ("name: x\n".encode("utf-16"), "found UTF-16 text"),
    (b"name: a\x07b\n", "is not allowed in YAML"),
])
def test_unreadable_files_are_one_line(tmp_path, content, expected):
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    err = error_of(path)
    assert expected in err.message and err.file == str(path)
    assert "\n" not in str(err)


def test_a_folder_is_not_a_config(tmp_path):
    (tmp_path / "d.yaml").mkdir()
    assert "found a folder" in error_of(tmp_path / "d.yaml").message


@pytest.mark.parametrize("text, value", [
    ("1e-3", 0.001), ("1E-3", 0.001), ("1e3", 1000.0), ("-2.5e-4", -0.00025), ("+1.5E+2", 150.0),
    ("1.0e3", 1000.0), (".5e-2", 0.005), ("0.01", 0.01), ("1.0e-3", 0.001),
])
def test_exponent_numbers_are_floats_in_files_and_overrides(write_yaml, text, value):
    raw = read_yaml(write_yaml("r.yaml", f"x: {text}\ny: [{text}]\n"))
    assert raw == {"x": value, "y": [value]} and isinstance(raw["x"], float)
    assert parse_override(f"train.learning_rate={text}") == ("train.learning_rate", value)
    if value > 0:
        cfg = load_config(write_yaml("a.yaml", f"model: {{layers: [{{dense: 10}}]}}\ntrain: {{learning_rate: {text}}}\n"))
        assert cfg.train.learning_rate == value and isinstance(cfg.train.learning_rate, float)
        assert load_config(write_yaml("b.yaml", MINIMAL), [f"train.learning_rate={text}"]).train.learning_rate == value


@pytest.mark.parametrize("text", ["e3", "1e", "1e3x", "abc", "1e-", "1.2.3e4", "e-3", "2024-01-01e"])
def test_other_strings_stay_strings(text):
    assert parse_override(f"description={text}") == ("description", text)


def test_exponent_floats_are_strict_where_ints_are_expected(write_yaml):
    err = error_of(write_yaml("a.yaml", "model: {layers: [{dense: 10}]}\ntrain: {epochs: 1e3}\n"))
    assert err.path == "train.epochs" and "integer" in err.message and "1000.0" in err.message


def test_set_value_with_a_duplicate_key_is_refused(write_yaml):
    err = error_of(write_yaml("a.yaml", MINIMAL), ["train.optimizer={name: sgd, name: adam}"])
    assert "--set train.optimizer: duplicate key 'name'" in err.message


# --- values ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("key, value", [
    ("train.learning_rate", ".inf"), ("train.learning_rate", ".nan"), ("train.early_stopping.min_delta", ".inf"),
    ("train.schedule", "{type: exponential, decay_rate: .nan}"), ("data.validation_split", "-.inf"),
])
def test_non_finite_floats_are_refused(write_yaml, key, value):
    err = error_of(write_yaml("a.yaml", MINIMAL), [f"{key}={value}"])
    assert err.path.startswith(key) and "finite number" in err.message


@pytest.mark.parametrize("override, path", [
    ("train.optimizer={name: sgd, momentum: .nan}", "train.optimizer.momentum"),
    ("model.layers.0.dense={units: 10, l2: .inf}", "model.layers[0].dense.l2"),
    ("data.options={noise: [1.0, .nan]}", "data.options.noise[1]"),
])
def test_non_finite_values_in_free_form_arguments_are_refused(write_yaml, override, path):
    err = error_of(write_yaml("a.yaml", MINIMAL), [override])
    assert err.path == path and ("finite number, found nan" in err.message or "finite number, found inf" in err.message)


@pytest.mark.parametrize("seed", [-1, 2**32, 10**20])
def test_seed_out_of_range(write_yaml, seed):
    err = error_of(write_yaml("a.yaml", {**MINIMAL, "seed": seed}))
    assert err.path == "seed" and "0..4294967295" in err.message and str(seed) in err.message


def test_seed_limits_are_accepted(write_yaml):
    assert load_config(write_yaml("a.yaml", {**MINIMAL, "seed": 2**32 - 1})).seed == 2**32 - 1
    assert load_config(write_yaml("b.yaml", {**MINIMAL, "seed": 0})).seed == 0


def test_sweep_seed_out_of_range(write_yaml):
    err = error_of(write_yaml("a.yaml", {**MINIMAL, "sweep": {"seeds": [1, 2**32]}}))
    assert err.path == "sweep.seeds[1]" and "0..4294967295" in err.message


def test_name_length_limit(write_yaml):
    assert load_config(write_yaml("a.yaml", {**MINIMAL, "name": "n" * 100})).name == "n" * 100
    err = error_of(write_yaml("b.yaml", {**MINIMAL, "name": "n" * 101}))
    assert err.path == "name" and "at most 100" in err.message and "101" in err.message
    err = error_of(write_yaml("c.yaml", {**MINIMAL, "name": "é" * 60}))  # 120 bytes: too long for some file systems
    assert err.path == "name" and "at most 100" in err.message
    err = error_of(write_yaml("x" * 120 + ".yaml", MINIMAL))  # the default: the file's stem
    assert err.path == "name" and "file's stem" in err.message


@pytest.mark.parametrize("train, key", [
    ({"early_stopping": {}}, "early_stopping"),
    ({"early_stopping": {"monitor": "val_accuracy"}}, "early_stopping"),
    ({"schedule": {"type": "plateau"}}, "schedule"),
])
def test_val_monitor_without_a_validation_set(write_yaml, train, key):
    cfg = {**MINIMAL, "data": {"validation_split": 0.0}, "train": train}
    err = error_of(write_yaml("a.yaml", cfg))
    assert err.path == f"train.{key}.monitor"
    assert "data.validation_split > 0 or monitor a training metric" in err.message


def test_training_monitor_or_a_validation_set_is_fine(write_yaml):
    cfg = {**MINIMAL, "data": {"validation_split": 0.0}, "train": {"early_stopping": {"monitor": "loss"}}}
    assert load_config(write_yaml("a.yaml", cfg)).train.early_stopping.monitor == "loss"
    cfg = {**MINIMAL, "data": {"validation_split": 0.2}, "train": {"early_stopping": {}}}
    assert load_config(write_yaml("b.yaml", cfg)).train.early_stopping.monitor == "val_loss"
    # a step schedule watches nothing
    cfg = {**MINIMAL, "data": {"validation_split": 0.0}, "train": {"schedule": {"type": "step"}}}
    load_config(write_yaml("c.yaml", cfg))


# --- sweeps ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("sweep, path, shown", [
    ({"seeds": [1, 1, 2]}, "sweep.seeds", "1 listed twice"),
    ({"grid": {"train.learning_rate": [0.1, 0.01, 0.1]}}, "sweep.grid.train.learning_rate", "0.1 listed twice"),
    ({"grid": {"train.optimizer": [{"name": "sgd", "momentum": 0.9}, {"momentum": 0.9, "name": "sgd"}]}},
     "sweep.grid.train.optimizer", "'name': 'sgd'"),
    ({"zip": {"train.epochs": [1, 2, 1], "train.batch_size": [8, 16, 8]}}, "sweep.zip",
     "positions 0, 2 repeat the same values (train.epochs=1, train.batch_size=8)"),
])
def test_sweep_repeats_are_refused(write_yaml, sweep, path, shown):
    err = error_of(write_yaml("a.yaml", {**MINIMAL, "sweep": sweep}))
    assert err.path == path and shown in err.message


def test_zip_values_may_repeat_in_one_key(write_yaml):
    sweep = {"zip": {"train.epochs": [1, 1], "train.batch_size": [8, 16]}}
    assert load_config(write_yaml("a.yaml", {**MINIMAL, "sweep": sweep})).sweep.zip["train.epochs"] == [1, 1]


def test_sweep_keys_are_checked(write_yaml):
    sweep = {"grid": {"model.layers[0].dense.units": [10, 20], "model.layers.0.dense.units": [30]}}
    err = error_of(write_yaml("a.yaml", {**MINIMAL, "sweep": sweep}))
    assert err.path == "sweep.grid.model.layers.0.dense.units" and "same key as sweep.grid.model.layers[0]" in err.message
    err = error_of(write_yaml("b.yaml", {**MINIMAL, "sweep": {"grid": {"train..epochs": [1]}}}))
    assert err.path == "sweep.grid.train..epochs" and "not a key path" in err.message
    err = error_of(write_yaml("c.yaml", {**MINIMAL, "sweep": {"grid": {"a": [1]}, "zip": {"a": [2]}}}))
    assert err.path == "sweep.zip.a" and "same key as sweep.grid.a" in err.message
    err = error_of(write_yaml("d.yaml", {**MINIMAL, "sweep": {"grid": {"train.epochs": []}}}))
    assert err.path == "sweep.grid.train.epochs" and "at least one value" in err.message


# --- key paths ------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["model.layers.1.dense.units", "model.layers[1].dense.units", " model.layers[1].dense.units"])
def test_set_accepts_both_index_spellings(write_yaml, key):
    path = write_yaml("a.yaml", {"model": {"layers": [{"flatten": {}}, {"dense": {"units": 10}}]}})
    assert load_config(path, [f"{key}=20"]).model.layers[1] == {"dense": {"units": 20}}


def test_split_key_forms():
    assert split_key("model.layers[1].dense.units") == ["model", "layers", 1, "dense", "units"]
    assert split_key("model.layers.1.dense.units") == ["model", "layers", 1, "dense", "units"]
    assert split_key("a[0][2].b") == ["a", 0, 2, "b"]
    for bad in ["", "a..b", "a.", "a[x]", "a[1", "a]", "[1].b", "a.[1]"]:
        with pytest.raises(ConfigError, match="not a key path"):
            split_key(bad)


def test_set_index_errors_use_the_printed_form(write_yaml):
    err = error_of(write_yaml("a.yaml", MINIMAL), ["model.layers[3].dense.units=2"])
    assert err.path == "model.layers[3]" and "out of range" in err.message


def test_sweep_grid_key_with_brackets_expands(write_yaml):
    from expkit.sweeps.trials import expand_sweep

    cfg = load_config(write_yaml("a.yaml", {"model": {"layers": [{"flatten": {}}, {"dense": {"units": 10}}]},
                                            "sweep": {"grid": {"model.layers[1].dense.units": [10, 20]}}}))
    assert [t.config.model.layers[1]["dense"]["units"] for t in expand_sweep(cfg)] == [10, 20]


# --- schema ---------------------------------------------------------------------------------------


def test_every_schema_property_has_a_description():
    missing = []

    def walk(node, where):
        if isinstance(node, dict):
            for name, prop in (node.get("properties") or {}).items():
                if not (isinstance(prop, dict) and prop.get("description")):
                    missing.append(f"{where}.{name}")
            for key, value in node.items():
                walk(value, f"{where}/{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{where}[{i}]")

    schema = json_schema()
    walk(schema, "")
    assert missing == []
    assert len(schema["$defs"]) >= 6  # the walk saw every section
    assert schema["properties"]["seed"]["maximum"] == 2**32 - 1


def _run_config_command(path, timeout=60):
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    return subprocess.run([sys.executable, "-m", "expkit.cli", "config", str(path)], env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_alias_bomb_is_refused_fast_naming_the_file(write_yaml):
    import time

    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 10):
        prev = f"*a{i - 1}"
        lines.append(f"a{i}: &a{i} [{', '.join([prev] * 9)}]")
    text = "model:\n  layers:\n  - dense: {units: 10, activation: softmax}\ndata:\n  options:\n"
    text += "".join(f"    {line}\n" for line in lines)
    path = write_yaml("bomb.yaml", text)
    err = error_of(path)
    assert err.file is not None and str(path) in str(err) and "expands to more than" in err.message
    began = time.perf_counter()
    proc = _run_config_command(path, timeout=30)
    assert time.perf_counter() - began < 30
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and str(path) in proc.stderr and "expands to more than" in proc.stderr


def test_deeply_nested_list_is_refused_without_a_traceback(write_yaml):
    path = write_yaml("deep.yaml", "model:\n  layers: " + "[" * 5000 + "]" * 5000 + "\n")
    proc = _run_config_command(path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert str(path) in proc.stderr and "nested too deep" in proc.stderr


def test_long_extends_chain_resolves_without_recursion(write_yaml):
    write_yaml("c0.yaml", {"seed": 5, **MINIMAL})
    for i in range(1, 1200):
        write_yaml(f"c{i}.yaml", {"extends": f"c{i - 1}.yaml", "train": {"epochs": i}})
    cfg = load_config(write_yaml("top.yaml", {"extends": "c1199.yaml"}))
    assert (cfg.name, cfg.seed, cfg.train.epochs) == ("top", 5, 1199)
    proc = _run_config_command(write_yaml("top2.yaml", {"extends": "c1199.yaml"}))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr


def test_extends_naming_a_folder_names_the_key(write_yaml, tmp_path):
    (tmp_path / "base").mkdir()
    err = error_of(write_yaml("c.yaml", {"extends": "base", **MINIMAL}))
    assert err.path == "extends" and "is a folder" in err.message and "c.yaml" in str(err)


def _example_configs():
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    # a study's claims.yaml is no config (tests/test_claims.py checks configs/seed000/claims.yaml)
    files = [(str(p.relative_to(root)), p.read_text()) for p in sorted((root / "configs").rglob("*.yaml"))
             if p.name != "claims.yaml"]
    blocks = re.findall(r"```yaml\n(.*?)```", (root / "README.md").read_text(), flags=re.S)
    files += [(f"README.md block {i}", text) for i, text in enumerate(blocks) if re.search(r"^(model|extends):", text, re.M)]
    return files


@pytest.mark.parametrize("name, text", _example_configs(), ids=[n for n, _ in _example_configs()])
def test_json_schema_accepts_every_shipped_config(name, text):
    jsonschema = pytest.importorskip("jsonschema")
    from expkit.files import load_yaml_text

    errors = [e.message for e in jsonschema.Draft202012Validator(json_schema()).iter_errors(load_yaml_text(text))]
    assert errors == [], name


def test_json_schema_requires_model_unless_extends_and_allows_dollar_schema(write_yaml):
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator(json_schema())
    assert [e.message for e in validator.iter_errors({"seed": 1})] == ["'model' is a required property"]
    assert list(validator.iter_errors({"extends": "base.yaml", "seed": 1, "$schema": "expkit.json"})) == []
    assert [e.message for e in validator.iter_errors({"extends": "b.yaml", "sed": 1})] == [
        "Additional properties are not allowed ('sed' was unexpected)"]
    cfg = load_config(write_yaml("s.yaml", {"$schema": "./expkit.schema.json", **MINIMAL}))
    assert cfg.name == "s"
