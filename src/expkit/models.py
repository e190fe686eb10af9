"""Layer specs -> a keras.Sequential model, with every Keras complaint attributed to model.layers[i]."""

from __future__ import annotations

import re

from .config import ExperimentConfig
from .errors import ConfigError, first_line
from .layers import build_layer, layer_arguments
from .registry import did_you_mean
from .usercode import call_factory, is_reference, keras_object

# Losses whose targets are class indices or one-hot vectors: the output must have one unit per class.
CLASS_LOSSES = {"categorical_crossentropy", "sparse_categorical_crossentropy", "categorical_hinge", "categorical_focal_crossentropy"}


def keras_model_name(name: str) -> str:
    """The run's name as a Keras model name. TensorFlow takes a model's name as a root name scope, which
    must start with a letter or digit; the run keeps its own name ('_baseline', '-v2', '(test)')."""
    safe = re.sub(r"[^A-Za-z0-9_]", "_", name)
    return safe if safe[:1].isalnum() else f"m{safe}"


def build_model(cfg: ExperimentConfig, input_shape: tuple, num_classes: int | None):
    """Build the model; an impossible architecture is a ConfigError naming the layer.

    `num_classes` None (data not at hand) skips the output-size check.
    """
    import keras

    if cfg.model.input_shape is not None:
        input_shape = tuple(cfg.model.input_shape)
    if cfg.model.factory is not None:  # the user's own code builds it (expkit.usercode)
        return call_factory(cfg.model.factory, cfg.model.args, tuple(input_shape), num_classes)
    x = keras.Input(shape=tuple(input_shape))
    built = []
    for i, spec in enumerate(cfg.model.layers):
        (name, args), = spec.items()
        path = ("model", "layers", i, name)
        if i == len(cfg.model.layers) - 1 and cfg.train.precision != "float32" and isinstance(args, dict) and "dtype" not in args:
            args = {**args, "dtype": "float32"}  # softmax and loss in float32 under mixed precision
        try:
            layer = build_layer(name, args, tuple(x.shape[1:]))
            x = layer(x)
        except ConfigError as exc:
            raise exc if exc.path else ConfigError(exc.message, path=path) from None
        except Exception as exc:  # Keras reports bad arguments and shapes with many exception types
            raise ConfigError(f"Keras rejected this layer: {first_line(exc)}", path=path) from None
        shape = tuple(x.shape)
        if any(d is not None and d < 1 for d in shape[1:]):
            raise ConfigError(
                f"output shape {shape} has a dimension below 1: the input shrank away "
                "(fewer strides, smaller kernels or padding: same)", path=path)
        built.append(layer)

    out_units = x.shape[-1]
    last = len(cfg.model.layers) - 1
    (last_name, _), = cfg.model.layers[last].items()
    if cfg.train.loss in CLASS_LOSSES and num_classes is not None and len(x.shape) != 2:
        raise ConfigError(
            f"the output shape is {tuple(x.shape)}; a classifier needs (None, {num_classes}): "
            "add flatten or global pooling before the dense layers", path=("model", "layers", last, last_name))
    if cfg.train.loss in CLASS_LOSSES and num_classes is not None and out_units != num_classes:
        raise ConfigError(_class_count_mismatch(cfg, out_units, num_classes), path=("model", "layers", last, last_name))
    model = keras.Sequential([keras.Input(shape=tuple(input_shape)), *built], name=keras_model_name(cfg.name))
    return model


def _class_count_mismatch(cfg: ExperimentConfig, out_units: int, num_classes: int) -> str:
    text = (f"the output has {out_units} units but the dataset has {num_classes} classes "
            f"(loss {cfg.train.loss} needs one unit per class)")
    if cfg.data.path is not None and "classes" not in cfg.data.options and num_classes > out_units:
        # Without class names the classes are counted from the highest label: a stray label looks like a class.
        text += (f"; if the data has {out_units} classes, its labels must be 0..{out_units - 1} integers, but "
                 f"{cfg.data.path} holds label {num_classes - 1}: fix the file (or list the class names in "
                 f"data.options.classes); else give this layer {num_classes} units")
    return text


def check_metrics(metrics: list[str]) -> None:
    """Every metric name is one Keras knows (checked before a run folder exists, not at compile)."""
    import keras

    for i, name in enumerate(metrics):
        if str(name).lower() in ("accuracy", "acc", "crossentropy", "ce"):  # compile picks the variant
            continue
        if is_reference(name):  # the user's own: resolved (a missing module or attribute is named here)
            keras_object(name, ("train", "metrics", i))
            continue
        try:
            keras.metrics.get(name)
        except (ValueError, TypeError):
            known = [n for n in dir(keras.metrics) if n.islower() and not n.startswith("_")]
            raise ConfigError(f"unknown metric '{name}'{did_you_mean(name, ['accuracy', *known])}",
                              path=("train", "metrics", i)) from None


def check_targets(cfg: ExperimentConfig, model, targets) -> None:
    """The loss accepts the model's output against these label rows (a couple of them suffice).

    Catches a label encoding that does not fit the loss (integer labels with categorical_crossentropy,
    one-hot with sparse_categorical_crossentropy, class labels with binary_crossentropy) before
    anything is written, instead of as a traceback from inside fit.
    """
    import keras
    import numpy as np

    outputs = model(np.zeros((len(targets), *model.inputs[0].shape[1:]), dtype="float32"))
    try:
        keras.losses.get(keras_object(cfg.train.loss, ("train", "loss")))(targets, outputs)
    except Exception as exc:  # Keras reports shape mismatches with several exception types
        encoding = "one-hot" if np.ndim(targets) == 2 else "integer"
        raise ConfigError(
            f"{cfg.train.loss} does not fit {encoding} labels (data.labels: {cfg.data.labels}) and the model's "
            f"output {tuple(outputs.shape[1:])}: {first_line(exc)}", path=("train", "loss")) from None


def output_shape(model) -> tuple:
    """The model's output shape (Sequential models wrapping an application have no `.output`)."""
    return tuple(model.compute_output_shape((None, *model.inputs[0].shape[1:])))


def summary_text(model) -> str:
    """The Keras summary as text, as `model.summary()` prints it."""
    lines: list[str] = []

    def collect(text, line_break=True):
        lines.append(text)

    model.summary(print_fn=collect)
    return "\n".join(lines).rstrip() + "\n"


def count_params(model) -> tuple[int, int]:
    """(total, trainable) parameter counts."""
    import numpy as np

    trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    total = trainable + int(sum(np.prod(w.shape) for w in model.non_trainable_weights))
    return total, trainable


def layer_table(model) -> list[tuple[str, str, tuple, int]]:
    """(name, class, output shape, params) per layer: what the seeds' summaries list."""
    rows = []
    for layer in model.layers:
        shape = getattr(layer, "output", None)
        rows.append((layer.name, type(layer).__name__, tuple(shape.shape) if shape is not None else (), int(layer.count_params())))
    return rows


__all__ = ["build_model", "check_metrics", "check_targets", "output_shape", "summary_text", "count_params", "layer_table", "layer_arguments"]
