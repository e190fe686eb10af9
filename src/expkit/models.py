"""Layer specs -> a keras.Sequential model (a graph: a functional keras.Model), with every Keras complaint
attributed to model.layers[i]."""

from __future__ import annotations

import re

from .config import ExperimentConfig
from .errors import ConfigError, first_line
from .graph import MODEL_INPUT, is_chain, plan_nodes
from .layers import build_layer, is_merge, layer_arguments
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

    A stack (no layer names another as input) is a keras.Sequential, as it always was; a graph (skip
    connections, merges, blocks that branch) is a functional keras.Model. `num_classes` None (data
    not at hand) skips the output-size check.
    """
    import keras

    if cfg.model.input_shape is not None:
        input_shape = tuple(cfg.model.input_shape)
    if cfg.model.factory is not None:  # the user's own code builds it (expkit.usercode)
        return call_factory(cfg.model.factory, cfg.model.args, tuple(input_shape), num_classes)
    nodes = plan_nodes(cfg.model.layers, cfg.model.blocks)
    model_input = keras.Input(shape=tuple(input_shape))
    built, outputs = _build_nodes(cfg, nodes, model_input)
    x, last = outputs[-1], nodes[-1]
    if cfg.train.loss in CLASS_LOSSES and num_classes is not None and len(x.shape) != 2:
        raise ConfigError(
            f"the output shape is {tuple(x.shape)}; a classifier needs (None, {num_classes}): "
            "add flatten or global pooling before the dense layers", path=last.path)
    if cfg.train.loss in CLASS_LOSSES and num_classes is not None and x.shape[-1] != num_classes:
        raise ConfigError(_class_count_mismatch(cfg, x.shape[-1], num_classes), path=last.path)
    if is_chain(nodes):
        model = keras.Sequential([keras.Input(shape=tuple(input_shape)), *built], name=keras_model_name(cfg.name))
    else:
        try:
            model = keras.Model(model_input, x, name=keras_model_name(cfg.name))
        except Exception as exc:  # e.g. two layers of one name
            raise ConfigError(f"Keras rejected the graph: {first_line(exc)}", path=("model", "layers")) from None
    if cfg.model.weights is not None:
        load_weights(model, cfg.model.weights)
    return model


def _build_nodes(cfg: ExperimentConfig, nodes: list, model_input) -> tuple[list, list]:
    """(layers, output tensors), one per node, each layer called on its nodes' outputs."""
    built, outputs = [], []
    for i, node in enumerate(nodes):
        args = node.args
        if i == len(nodes) - 1 and cfg.train.precision != "float32" and isinstance(args, dict) and "dtype" not in args:
            args = {**args, "dtype": "float32"}  # softmax and loss in float32 under mixed precision
        inputs = [model_input if k == MODEL_INPUT else outputs[k] for k in node.inputs]
        inner = f"{node.within}: " if node.within else ""  # a block's layer: the use is the path
        try:
            layer = build_layer(node.type, args, tuple(inputs[0].shape[1:]))
            x = layer(inputs if is_merge(node.type) else inputs[0])
        except ConfigError as exc:
            raise exc if exc.path else ConfigError(inner + exc.message, path=node.path) from None
        except Exception as exc:  # Keras reports bad arguments and shapes with many exception types
            raise ConfigError(f"{inner}Keras rejected this layer: {first_line(exc)}", path=node.path) from None
        shape = tuple(x.shape)
        if any(d is not None and d < 1 for d in shape[1:]):
            raise ConfigError(
                f"{inner}output shape {shape} has a dimension below 1: the input shrank away "
                "(fewer strides, smaller kernels or padding: same)", path=node.path)
        built.append(layer)
        outputs.append(x)
    return built, outputs


def load_weights(model, path: str) -> None:
    """Pretrained weights into the built model (fine-tuning); a missing or mismatched file is a ConfigError."""
    from pathlib import Path

    if not Path(path).is_file():
        raise ConfigError(f"no weights file at {path}", path=("model", "weights"))
    try:
        model.load_weights(path)
    except Exception as exc:  # Keras reports a mismatch with ValueError, a bad file with OSError and others
        raise ConfigError(f"cannot load {path} into this model: {first_line(exc)}", path=("model", "weights")) from None


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
