"""Every config in configs/ loads, validates and builds; the seeds' printed models come out exactly.

Builds use `prepare(cfg, load_data=False)`: no dataset is read, so these run offline on a machine
without notMNIST, FER2013, CIFAR-10 or MNIST (the built-in sources know their shapes without their
files; configs reading a local file state `model.input_shape`). Each config's data section is run on
synthetic stand-in images of the real data's shape. Each model is built once per session and only its
description is kept (see `built`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pytest

from expkit.config import load_config
from expkit.models import count_params, layer_table, output_shape
from expkit.runner import prepare
from expkit.sweeps.trials import expand_sweep

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CONFIGS = sorted(p.name for p in CONFIG_DIR.glob("*.yaml"))
LOCAL_SOURCES = {"npz", "csv_pixels", "image_folder"}  # read data.path: absent on a fresh machine


@dataclass(frozen=True)
class Built:
    input: tuple   # without the batch axis
    total: int
    trainable: int
    layers: tuple  # (class, output shape without the batch axis, params) per layer
    output: tuple
    sequential: bool  # a keras.Sequential stack (every config without a graph)


def describe(cfg) -> Built:
    import keras

    _, model = prepare(cfg, load_data=False)
    total, trainable = count_params(model)
    rows = tuple((cls, shape[1:], params) for _, cls, shape, params in layer_table(model))
    out = output_shape(model)
    shape = tuple(model.inputs[0].shape[1:])
    sequential = isinstance(model, keras.Sequential)
    keras.backend.clear_session()
    return Built(shape, total, trainable, rows, out, sequential)


@lru_cache(maxsize=None)
def built(name: str, overrides: tuple = ()) -> Built:
    """The model of configs/<name>, built once per test session (ResNet101 takes seconds)."""
    from expkit.repro import config_source

    with config_source(CONFIG_DIR / name):  # a model.factory's module lies beside its config
        return describe(load_config(CONFIG_DIR / name, list(overrides)))


# --- every config -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CONFIGS)
def test_config_validates_and_builds(name):
    cfg = load_config(CONFIG_DIR / name)
    assert cfg.name == name.removesuffix(".yaml")
    model = built(name)
    assert model.total > 0
    assert len(model.output) == 2  # (batch, classes)


@pytest.mark.parametrize("name", CONFIGS)
def test_config_has_a_header_naming_its_seed(name):
    first = (CONFIG_DIR / name).read_text().splitlines()[0]
    assert re.match(r"# (Seed|The default experiment)", first), first


@pytest.mark.parametrize("name", [n for n in CONFIGS if load_config(CONFIG_DIR / n).data.dataset in LOCAL_SOURCES])
def test_local_data_configs_state_their_input_shape(name):
    cfg = load_config(CONFIG_DIR / name)
    assert cfg.model.input_shape is not None
    assert cfg.data.path is not None
    # The stated shape is the one the data will have after `layout`.
    flat = cfg.data.layout == "flat"
    assert (len(cfg.model.input_shape) == 1) == flat


# The real data's example shape and class count, per source (and file, for the local sources).
REAL_DATA = {
    ("fashion_mnist", None): ((28, 28), 10),
    ("fashion_mnist_sample", None): ((28, 28), 10),
    ("mnist", None): ((28, 28), 10),
    ("cifar10", None): ((32, 32, 3), 10),
    ("npz", "data/notMNIST.npz"): ((28, 28), 10),
    ("npz", "data/notMNIST_split.npz"): ((28, 28), 10),
    ("csv_pixels", "data/fer2013.csv"): ((48, 48), 7),
}
@pytest.mark.parametrize("name", CONFIGS)
def test_config_data_section_loads_stand_in_data_of_the_real_shape(name):
    # Synthetic images of the real data's shape and class count through the config's own data section
    # (layout, scale, shuffle, limit, validation split): what reaches the model must fit its input.
    from expkit.data import load_dataset

    cfg = load_config(CONFIG_DIR / name)
    shape, classes = REAL_DATA[(cfg.data.dataset, cfg.data.path)]
    stand_in = cfg.data.model_copy(update={
        "dataset": "synthetic", "path": None,
        "options": {"n_train": 80, "n_test": 10, "shape": list(shape), "classes": classes}})
    ds = load_dataset(stand_in, cfg.seed, cfg.train.loss)
    assert ds.input_shape == built(name).input
    assert built(name).output == (None, classes)
    assert len(ds.x_train) == min(80, cfg.data.limit or 80) - len(ds.x_val)
    if cfg.data.validation_split == 0.0:
        assert len(ds.x_val) == 0


def _writes_a_graph(cfg) -> bool:
    return bool(cfg.model.blocks) or any(isinstance(args, dict) and "inputs" in args
                                         for spec in cfg.model.layers for args in spec.values())


@pytest.mark.parametrize("name", [n for n in CONFIGS if "factory:" not in (CONFIG_DIR / n).read_text()])
def test_configs_without_a_graph_build_the_sequential_stack_they_always_did(name):
    # (a model.factory config builds what the user's code returns: cnn1_factory.yaml is checked against CNN1)
    # Names, inputs and blocks are the only way to a functional model: every older config is as it was.
    assert built(name).sequential is not _writes_a_graph(load_config(CONFIG_DIR / name))


def test_readme_lists_every_config():
    readme = (CONFIG_DIR / "README.md").read_text()
    missing = [n for n in CONFIGS if f"`{n}`" not in readme]
    assert not missing, f"configs/README.md does not list {missing}"


# --- the seeds' printed models (seed 000) ---------------------------------------------------------
# The Keras summaries printed in seed 000, row by row: (class, output shape, params).

CNN2_TABLE = [
    ("Reshape", (28, 28, 1), 0),
    ("Conv2D", (26, 26, 32), 320),
    ("Conv2D", (24, 24, 64), 18_496),
    ("Conv2D", (11, 11, 128), 73_856),
    ("Conv2D", (5, 5, 256), 295_168),
    ("Flatten", (6400,), 0),
    ("Dense", (64,), 409_664),
    ("Dense", (10,), 650),
]


def _interleave(table, layer_class):
    """CNN2's table with a parameter-free `layer_class` after every hidden layer (as the seed prints)."""
    rows = [table[0]]
    for row in table[1:-1]:
        rows.append(row)
        if row[0] != "Flatten":
            rows.append((layer_class, row[1], 0))
    return rows + [table[-1]]


SEED000_TABLES = {
    "baseline.yaml": [("Dense", (32,), 25_120), ("Dense", (10,), 330)],
    "cnn1.yaml": [
        ("Reshape", (28, 28, 1), 0),
        ("Conv2D", (26, 26, 32), 320),
        ("Conv2D", (24, 24, 64), 18_496),
        ("Flatten", (36864,), 0),
        ("Dense", (64,), 2_359_360),
        ("Dense", (10,), 650),
    ],
    "cnn2.yaml": CNN2_TABLE,
    "cnn2_leaky.yaml": _interleave(CNN2_TABLE, "LeakyReLU"),
    "cnn2_dropout.yaml": _interleave(CNN2_TABLE, "Dropout"),
    # The seed prints the first convolution as (None, 28, 28, 32), but its 320 parameters and the next
    # layer's 24x24 output are CNN2's valid 3x3 convolution (26x26), which is what the config builds.
    "cnn2_l2.yaml": CNN2_TABLE,
}
SEED000_TOTALS = {
    "baseline.yaml": 25_450,
    "cnn1.yaml": 2_378_826,
    "cnn2.yaml": 798_154,
    "cnn2_leaky.yaml": 798_154,
    "cnn2_dropout.yaml": 798_154,
    "cnn2_l2.yaml": 798_154,
}


def test_seed000_tables_are_self_consistent():
    for name, table in SEED000_TABLES.items():
        assert sum(params for *_, params in table) == SEED000_TOTALS[name], name


@pytest.mark.parametrize("name", sorted(SEED000_TOTALS))
def test_seed000_total_params_match_the_seed(name):
    model = built(name)
    assert model.total == SEED000_TOTALS[name]
    assert model.trainable == SEED000_TOTALS[name]


@pytest.mark.parametrize("name", sorted(SEED000_TABLES))
def test_seed000_layers_match_the_seed_summary(name):
    assert [list(row) for row in built(name).layers] == [list(row) for row in SEED000_TABLES[name]]


# --- the other seeds: counts from the layer sizes they state ---------------------------------------
# Not printed by the seeds; computed by hand from the sizes they give (weights + biases per layer),
# so a changed layer size or a dropped layer shows up here.

def _mlp(*sizes):
    return sum(a * b + b for a, b in zip(sizes, sizes[1:]))


DERIVED_TOTALS = {
    "mlp001_softmax.yaml": _mlp(784, 10),                      # 7,850
    "mlp001_a.yaml": _mlp(784, 300, 10),                       # 238,510
    "mlp001_b.yaml": _mlp(784, 300, 100, 10),                  # 266,610
    "sweep_l2.yaml": _mlp(784, 300, 100, 10),
    "sweep_l1.yaml": _mlp(784, 300, 100, 10),
    "notmnist_model1.yaml": _mlp(784, 10),
    "notmnist_model2.yaml": _mlp(784, 300, 10),
    "notmnist_model3.yaml": _mlp(784, 400, 200, 10),           # 396,210
    "notmnist_model4.yaml": _mlp(784, 600, 400, 200, 10),      # 793,610
    "notmnist_dropout.yaml": _mlp(784, 400, 200, 10),
    "notmnist_model4_dropout.yaml": _mlp(784, 600, 400, 200, 10),
    "cifar10_overfit.yaml": _mlp(3072, 1024, 512, 10),         # 3,676,682
    "cifar10_val50.yaml": _mlp(3072, 512, 256, 10),            # 1,707,274
    "fer_cnn.yaml": (25 * 16 + 16) + (25 * 16 * 32 + 32) + _mlp(4608, 1024, 7),  # 4,740,039
    "mnist_2d.yaml": _mlp(784, 100, 10),
    "mnist_2e.yaml": _mlp(784, 100, 100, 10),
    "mnist_2f.yaml": _mlp(784, 333, 333, 334, 10),             # 487,533
    "mlp004.yaml": _mlp(784, 1000, 10),                        # 795,010
    # conv 32 3x3 (320) + batch norm (4 x 32, half non-trainable) + 14*14*32 -> 784 -> 10
    "cnn004.yaml": 320 + 128 + _mlp(14 * 14 * 32, 784, 10),    # 4,926,330
    "cnn004_l2.yaml": 320 + 128 + _mlp(14 * 14 * 32, 784, 10),
    "cnn004_dropout.yaml": 320 + 128 + _mlp(14 * 14 * 32, 784, 10),
    "sweep_depth.yaml": _mlp(784, 300, 10),                    # the base; trials below
    "sweep_units.yaml": _mlp(784, 1000, 10),
    # Keras' own networks with a 48x48x1 input and a 7-class top (regression values, from Keras 3).
    "fer_resnet50.yaml": 23_595_783,
    "fer_resnet101.yaml": 42_666_247,
}


@pytest.mark.parametrize("name", sorted(DERIVED_TOTALS))
def test_total_params_match_the_stated_layer_sizes(name):
    assert built(name).total == DERIVED_TOTALS[name]


def test_fer_cnn_shapes_match_seed_002():
    # Seed 002: 24x24x16 after the first pool, 12x12x32 after the second, "reshaped to a vector of 4608".
    shapes = {cls: [] for cls in ("MaxPooling2D", "Flatten")}
    for cls, shape, _ in built("fer_cnn.yaml").layers:
        if cls in shapes:
            shapes[cls].append(shape)
    assert shapes["MaxPooling2D"] == [(24, 24, 16), (12, 12, 32)]
    assert shapes["Flatten"] == [(4608,)]
    assert built("fer_cnn.yaml").output == (None, 7)


@pytest.mark.parametrize("name", ["fer_resnet50.yaml", "fer_resnet101.yaml"])
def test_fer_resnets_take_48x48x1_and_output_7_classes(name):
    cfg = load_config(CONFIG_DIR / name)
    (app,) = cfg.model.layers
    assert app["application"]["weights"] is None
    assert tuple(cfg.model.input_shape) == (48, 48, 1)
    assert built(name).output == (None, 7)


def resnet20_v1_in_keras():
    """CIFAR-10's ResNet v1 with 20 layers in plain Keras, as Keras' cifar10_resnet example writes it."""
    import keras
    from keras import layers

    def conv(x, filters, kernel=3, strides=1):
        return layers.Conv2D(filters, kernel, strides=strides, padding="same", kernel_initializer="he_normal",
                             kernel_regularizer=keras.regularizers.l2(1e-4))(x)

    inputs = keras.Input((32, 32, 3))
    x = layers.ReLU()(layers.BatchNormalization()(conv(inputs, 16)))
    for stage, filters in enumerate((16, 32, 64)):
        for block in range(3):
            strides = 2 if stage and not block else 1
            y = layers.ReLU()(layers.BatchNormalization()(conv(x, filters, strides=strides)))
            y = layers.BatchNormalization()(conv(y, filters))
            if strides == 2:
                x = conv(x, filters, kernel=1, strides=2)
            x = layers.ReLU()(layers.Add()([x, y]))
    x = layers.Flatten()(layers.AveragePooling2D(8)(x))
    return keras.Model(inputs, layers.Dense(10, activation="softmax", kernel_initializer="he_normal")(x))


def test_resnet20_config_is_the_plain_keras_resnet20():
    import keras

    from expkit.models import count_params, layer_table

    reference = resnet20_v1_in_keras()
    rows = sorted((cls, shape[1:], params) for _, cls, shape, params in layer_table(reference))
    total, trainable = count_params(reference)
    keras.backend.clear_session()
    model = built("resnet20_cifar10.yaml")
    assert (model.total, model.trainable) == (total, trainable) == (274_442, 273_066)
    assert sorted(model.layers) == rows  # the same layers, shapes and parameters (in another order)
    assert [cls for cls, *_ in model.layers].count("Conv2D") == 19 + 2  # 19 convolutions and 2 projections
    assert model.output == (None, 10)


def test_cnn004_matches_seed_004_code():
    rows = built("cnn004.yaml").layers
    assert [cls for cls, *_ in rows] == ["Conv2D", "BatchNormalization", "MaxPooling2D", "Flatten", "Dense", "Dense"]
    assert rows[0][1] == (28, 28, 32)  # padding same
    assert rows[3][1] == (14 * 14 * 32,)
    conv = load_config(CONFIG_DIR / "cnn004.yaml").model.layers[0]["conv2d"]
    assert conv["kernel_initializer"] == {"name": "glorot_normal", "seed": 14}


# --- sweeps ---------------------------------------------------------------------------------------

EXPECTED_TRIALS = {
    "sweep_lr.yaml": 10,
    "sweep_l2.yaml": 3,
    "sweep_l1.yaml": 3,
    "sweep_dropout.yaml": 4,
    "sweep_units.yaml": 4,
    "sweep_depth.yaml": 3,
    "sweep_optimizer.yaml": 3,
    "sweep_batch.yaml": 5,
    "notmnist_dropout.yaml": 4,
    "mlp004_units.yaml": 4,
    "mlp004_epochs.yaml": 2,
    "cnn004_l2.yaml": 3,
    "cnn004_dropout.yaml": 3,
}


SEARCHES = {"search_dropout.yaml": 20}  # configurations a search proposes (sweep.search.trials)


def test_every_sweep_has_an_expected_trial_count():
    sweeps = {n: load_config(CONFIG_DIR / n).sweep for n in CONFIGS}
    assert {n for n, s in sweeps.items() if s is not None and not s.space} == set(EXPECTED_TRIALS)
    assert {n for n, s in sweeps.items() if s is not None and s.space} == set(SEARCHES)


@pytest.mark.parametrize("name", sorted(SEARCHES))
def test_a_search_config_has_its_budget_and_its_models_build(name, tmp_path):
    import keras
    from expkit.sweeps.search import Search
    from expkit.sweeps.trials import configuration_trials

    cfg = load_config(CONFIG_DIR / name)
    search = Search(cfg, tmp_path)
    assert search.budget == SEARCHES[name]
    for corner in ("low", "high"):  # the space's ends build
        values = {k: (d.choices[0] if d.kind == "choice" else getattr(d, corner)) for k, d in search.space.items()}
        describe(configuration_trials(cfg, values)[0].config)
    keras.backend.clear_session()


@pytest.mark.parametrize("name", sorted(EXPECTED_TRIALS))
def test_sweep_expands_to_expected_trials(name):
    import keras

    cfg = load_config(CONFIG_DIR / name)
    trials = expand_sweep(cfg)
    assert len(trials) == EXPECTED_TRIALS[name]
    assert len({t.id for t in trials}) == len(trials)  # no two trials alike
    for trial in trials:  # a trial that changes the model must still build
        if trial.config.model != cfg.model:
            describe(trial.config)
    keras.backend.clear_session()


def _trial_values(name):
    return [t.values for t in expand_sweep(load_config(CONFIG_DIR / name))]


def _dense_args(trial):
    return [spec["dense"] for spec in trial.config.model.layers if "dense" in spec]


def test_sweep_lr_uses_the_seed_000_rates():
    rates = [v["train.learning_rate"] for v in _trial_values("sweep_lr.yaml")]
    assert rates == [10.0, 1.0, 0.5, 0.1, 0.01, 0.001, 1e-4, 1e-5, 1e-6, 1e-7]


@pytest.mark.parametrize("name, key, rates", [
    ("sweep_l2.yaml", "l2", [0.001, 0.003, 0.006]),
    ("sweep_l1.yaml", "l1", [0.0001, 0.0003, 0.0006]),
    ("cnn004_l2.yaml", "l2", [0.01, 0.1, 0.5]),
])
def test_penalty_sweeps_put_one_rate_on_every_dense_kernel(name, key, rates):
    trials = expand_sweep(load_config(CONFIG_DIR / name))
    assert [{d[key] for d in _dense_args(t)} for t in trials] == [{r} for r in rates]


@pytest.mark.parametrize("name", ["sweep_dropout.yaml", "notmnist_dropout.yaml"])
def test_dropout_sweeps_pair_the_two_layers_rates(name):
    trials = expand_sweep(load_config(CONFIG_DIR / name))
    pairs = [tuple(spec["dropout"] for spec in t.config.model.layers if "dropout" in spec) for t in trials]
    assert pairs == [(0.2, 0.2), (0.4, 0.4), (0.6, 0.6), (0.4, 0.2)]
    assert [[d["units"] for d in _dense_args(t)] for t in trials] == [[400, 200, 10]] * 4


def test_cnn004_dropout_sweep_follows_dense_784():
    trials = expand_sweep(load_config(CONFIG_DIR / "cnn004_dropout.yaml"))
    for trial, rate in zip(trials, [0.9, 0.75, 0.5]):
        layers = trial.config.model.layers
        assert layers[4]["dense"]["units"] == 784 and layers[5] == {"dropout": rate}


def test_depth_and_unit_sweeps_have_the_stated_sizes():
    depth = [[d["units"] for d in _dense_args(t)] for t in expand_sweep(load_config(CONFIG_DIR / "sweep_depth.yaml"))]
    assert depth == [[300, 10], [400, 200, 10], [600, 400, 200, 10]]
    for name in ("sweep_units.yaml", "mlp004_units.yaml"):
        units = [_dense_args(t)[0]["units"] for t in expand_sweep(load_config(CONFIG_DIR / name))]
        assert units == [100, 500, 1000, 2000]


@pytest.mark.parametrize("name", [n for n in CONFIGS if n.startswith("sweep_")])
def test_makefile_sweeps_are_fashion_mnist_shaped(name):
    # The Makefile runs every sweep_*.yaml with --set data.dataset=fashion_mnist_sample; the probe then
    # gives the real (28x28, 10 classes), and the build checks the output against the class count.
    cfg = load_config(CONFIG_DIR / name)
    assert cfg.data.dataset == "fashion_mnist"
    assert cfg.model.input_shape is None
    overrides = ("data.dataset=fashion_mnist_sample",)
    assert expand_sweep(load_config(CONFIG_DIR / name, list(overrides)))
    assert built(name, overrides).output == (None, 10)


def test_the_factory_config_builds_cnn1_as_plain_keras_does():
    """configs/cnn1_factory.yaml (model.factory: my_models:cnn) against CNN1 written here in plain Keras."""
    import keras

    inputs = keras.Input(shape=(28, 28, 1))
    x = keras.layers.Conv2D(64, 3, activation="relu")(keras.layers.Conv2D(32, 3, activation="relu")(inputs))
    x = keras.layers.Dense(64, activation="relu")(keras.layers.Flatten()(x))
    plain = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(x))
    assert built("cnn1_factory.yaml").total == plain.count_params() == built("cnn1.yaml").total == 2_378_826
    assert built("cnn1_factory.yaml").output == (None, 10)
