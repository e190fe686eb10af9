"""train.py: the speed defaults are chosen from the model's cost and never change the results."""

import pytest

from expkit.config import validate
from expkit.models import build_model
from expkit.runner import prepare
from expkit.train import (
    MAX_STEPS_PER_EXECUTION, TARGET_MACS_PER_EXECUTION, auto_steps_per_execution, eval_batch_size,
    model_macs_per_sample, train,
)
from expkit.backend import resolve_inter_op_threads


def small_cnn_config(**train):
    return validate({
        "name": "small_cnn",
        "data": {"dataset": "synthetic", "options": {"n_train": 96, "n_test": 30, "shape": [10, 10], "classes": 4}},
        "model": {"layers": [{"conv2d": {"filters": 6, "kernel_size": 3, "activation": "relu"}},
                             {"conv2d": {"filters": 8, "kernel_size": 3, "strides": 2}},
                             {"flatten": {}}, {"dense": {"units": 4, "activation": "softmax"}}]},
        "train": {"epochs": 2, "batch_size": 8, "verbose": 0, **train},
    })


def test_macs_count_conv_kernels_once_per_output_position():
    model = build_model(small_cnn_config(), (10, 10, 1), 4)
    # conv 3x3x1->6 over 8x8 outputs; conv 3x3x6->8, stride 2, over 3x3; dense 72->4
    assert model_macs_per_sample(model) == 9 * 6 * 64 + 54 * 8 * 9 + 72 * 4


@pytest.mark.parametrize("macs, batch, steps, expected", [
    (25_000, 32, 1688, MAX_STEPS_PER_EXECUTION),  # the dense baseline: capped
    (25_000, 32, 10, 10),                         # never more than an epoch
    (27.5e6, 32, 1688, int(TARGET_MACS_PER_EXECUTION // (3 * 27.5e6 * 32))),  # seed 000's CNN2
    (5e9, 32, 1688, 1),                           # a model heavy enough on its own
])
def test_auto_steps_per_execution(macs, batch, steps, expected, monkeypatch):
    import expkit.train as train_mod

    monkeypatch.setattr(train_mod, "model_macs_per_sample", lambda model: macs)
    assert auto_steps_per_execution(None, batch, steps) == expected


@pytest.mark.parametrize("batch, setting, expected", [(32, "auto", 256), (512, "auto", 512), (32, 100, 100)])
def test_eval_batch_size(batch, setting, expected):
    cfg = small_cnn_config(batch_size=batch, validation_batch_size=setting)
    assert eval_batch_size(cfg) == expected


@pytest.mark.parametrize("sizes, expected", [
    ((6000, 10000), 400),   # Fashion-MNIST's validation and test sets: one batch shape for both
    ((6000, 0), 300),       # no test set
    ((400, 1000), 256),     # no common divisor from 256 to 1024: the plain default
    ((100, 40), 256),       # sets smaller than one batch
    ((7919,), 256),         # a prime
])
def test_auto_eval_batch_size_divides_the_evaluated_sets(sizes, expected):
    assert eval_batch_size(small_cnn_config(batch_size=32), sizes) == expected
    assert eval_batch_size(small_cnn_config(batch_size=32, validation_batch_size=100), sizes) == 100


def fit(cfg):
    import keras

    keras.utils.set_random_seed(cfg.seed)
    dataset, model = prepare(cfg)
    result = train(cfg, dataset, model)
    keras.backend.clear_session()
    return result


def test_speed_settings_do_not_change_the_metrics():
    """Several steps per call and a large evaluation batch give the plain per-step run's numbers."""
    plain = fit(small_cnn_config(steps_per_execution=1, validation_batch_size=8))
    fast = fit(small_cnn_config(steps_per_execution=5, validation_batch_size=64))
    assert (plain.steps_per_execution, fast.steps_per_execution) == (1, 5)
    assert (plain.eval_batch_size, fast.eval_batch_size) == (8, 64)
    for a, b in zip(plain.history, fast.history, strict=True):
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    assert plain.test == pytest.approx(fast.test, rel=1e-4)


@pytest.mark.parametrize("setting, cores, gpu, expected", [
    ("auto", 2, False, 1),   # this machine: each op's pool already spans both cores
    ("auto", 4, False, 1),
    ("auto", 16, False, 0),  # 0 keeps TensorFlow's default
    ("auto", 2, True, 0),
    (3, 2, False, 3),
    (0, 2, False, 0),
])
def test_resolve_inter_op_threads(setting, cores, gpu, expected):
    assert resolve_inter_op_threads(setting, cores, gpu) == expected


def test_inter_op_threads_is_validated():
    from expkit.errors import ConfigError

    with pytest.raises(ConfigError, match="train.inter_op_threads"):
        small_cnn_config(inter_op_threads=-1)
