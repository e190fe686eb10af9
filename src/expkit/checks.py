"""The one pre-training check path: what would otherwise fail inside `fit`, found before anything is written.

Single runs, sweep trials, `expkit summary` and `--dry-run` all go through `prepare`, which builds the
model and calls `check_experiment`; a mistake is a ConfigError (one line, exit 2) naming the key.
"""

from __future__ import annotations

from .config import ExperimentConfig
from .errors import ConfigError


def check_experiment(cfg: ExperimentConfig, model, dataset=None, num_classes: int | None = None,
                     has_gpu: bool | None = None) -> None:
    """Backend settings, optimizer, loss, metrics, precision, input shape and labels against the loss and the model."""
    import numpy as np

    from .backend import current
    from .data.dataset import label_encoding
    from .models import check_metrics, check_targets
    from .train import check_loss, class_weights, example_weights, make_optimizer, user_callbacks

    current().check_config(cfg)  # settings this backend has no equivalent for (train.inter_op_threads on JAX...)
    make_optimizer(cfg, steps_per_epoch=1)
    check_loss(cfg.train.loss)
    check_metrics(cfg.train.metrics)
    check_precision(cfg.train.precision, has_gpu)
    user_callbacks(cfg)  # each made once: an unknown name, a missing module or a wrong argument fails here
    if dataset is not None:
        check_input_shape(cfg, model, tuple(dataset.input_shape))
        example_weights(cfg, dataset, class_weights(cfg, dataset))
    if dataset is not None and len(dataset.y_train):
        targets = dataset.y_train[:2]
    elif num_classes is not None:  # no data at hand: labels of the shape the data would have
        one_hot = label_encoding(cfg.data.labels, cfg.train.loss) == "one_hot"
        targets = np.eye(num_classes, dtype="float32")[[0, 0]] if one_hot else np.zeros(2, dtype="int32")
    else:
        return
    check_targets(cfg, model, targets)


def check_precision(precision: str, has_gpu: bool | None) -> None:
    """float16 without a GPU runs in emulation, many times slower than float32: refuse it."""
    if precision == "mixed_float16" and has_gpu is False:
        raise ConfigError("mixed_float16 needs a GPU and none is in use here; on a CPU use mixed_bfloat16 "
                          "or float32", path=("train", "precision"))


def check_input_shape(cfg: ExperimentConfig, model, data_shape: tuple) -> None:
    """The data's example shape fits the model's input (a stated model.input_shape may disagree)."""
    model_shape = tuple(model.inputs[0].shape[1:])
    if model_shape == data_shape:
        return
    import math

    if cfg.model.input_shape is not None:
        raise ConfigError(f"the data's examples have shape {list(data_shape)} but the model's input is "
                          f"{list(model_shape)}; remove model.input_shape or make it {list(data_shape)}",
                          path=("model", "input_shape"))
    if math.prod(model_shape) != math.prod(data_shape):  # a reshape layer may legitimately change it
        raise ConfigError(f"the model's input {list(model_shape)} does not fit the data's examples "
                          f"{list(data_shape)}", path=("model", "layers", 0))
