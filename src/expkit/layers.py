"""Layer specs -> Keras layers.

A spec is a single-key mapping `{type: arguments}`; arguments use Keras' own names and are passed
through. A scalar or list stands for the layer's main argument (`dropout: 0.2`, `reshape: [28, 28, 1]`).
Any Keras layer class can be named directly (`SpatialDropout2D: {rate: 0.1}`). Importing this module
does not import TensorFlow: the structural checks run during config validation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import ConfigError
from .registry import Registry
from .usercode import is_reference, keras_object


@dataclass(frozen=True)
class LayerKind:
    keras_class: str           # class in keras.layers, or "application"
    main_arg: str | None       # the argument a scalar/list shorthand fills
    merge: bool = False        # takes a list of several inputs (a graph's `inputs: [a, b]`)


LAYERS: Registry[LayerKind] = Registry("layer type")

for _name, _cls, _main in [
    ("dense", "Dense", "units"),
    ("conv1d", "Conv1D", "filters"),
    ("conv2d", "Conv2D", "filters"),
    ("conv3d", "Conv3D", "filters"),
    ("conv2d_transpose", "Conv2DTranspose", "filters"),
    ("separable_conv2d", "SeparableConv2D", "filters"),
    ("depthwise_conv2d", "DepthwiseConv2D", "kernel_size"),
    ("max_pooling1d", "MaxPooling1D", "pool_size"),
    ("max_pooling2d", "MaxPooling2D", "pool_size"),
    ("average_pooling1d", "AveragePooling1D", "pool_size"),
    ("average_pooling2d", "AveragePooling2D", "pool_size"),
    ("global_max_pooling1d", "GlobalMaxPooling1D", None),
    ("global_max_pooling2d", "GlobalMaxPooling2D", None),
    ("global_average_pooling1d", "GlobalAveragePooling1D", None),
    ("global_average_pooling2d", "GlobalAveragePooling2D", None),
    ("flatten", "Flatten", None),
    ("reshape", "Reshape", "target_shape"),
    ("dropout", "Dropout", "rate"),
    ("spatial_dropout2d", "SpatialDropout2D", "rate"),
    ("gaussian_noise", "GaussianNoise", "stddev"),
    ("batch_normalization", "BatchNormalization", None),
    ("layer_normalization", "LayerNormalization", None),
    ("activation", "Activation", "activation"),
    ("leaky_relu", "LeakyReLU", "negative_slope"),
    ("relu", "ReLU", None),
    ("prelu", "PReLU", None),
    ("elu", "ELU", "alpha"),
    ("softmax", "Softmax", None),
    ("zero_padding2d", "ZeroPadding2D", "padding"),
    ("cropping2d", "Cropping2D", "cropping"),
    ("upsampling2d", "UpSampling2D", "size"),
    ("rescaling", "Rescaling", "scale"),
    # augmentation: Keras applies these in training only (identity in evaluate and predict)
    ("random_flip", "RandomFlip", "mode"),
    ("random_rotation", "RandomRotation", "factor"),
    ("random_translation", "RandomTranslation", None),
    ("random_zoom", "RandomZoom", "height_factor"),
    ("random_contrast", "RandomContrast", "factor"),
    ("application", "application", "name"),
]:
    LAYERS.add(_name, LayerKind(_cls, _main))

# Keras' merge layers: called on a list of tensors, so only a graph (`inputs: [a, b]`) can use them.
MERGE_CLASSES = {"Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate", "Dot"}
for _name, _cls, _main in [
    ("add", "Add", None),
    ("subtract", "Subtract", None),
    ("multiply", "Multiply", None),
    ("average", "Average", None),
    ("maximum", "Maximum", None),
    ("minimum", "Minimum", None),
    ("concatenate", "Concatenate", "axis"),
    ("dot", "Dot", "axes"),
]:
    LAYERS.add(_name, LayerKind(_cls, _main, merge=True))

# Short names people type, mapped to the registry's names.
ALIASES = {
    "batchnorm": "batch_normalization",
    "max_pool2d": "max_pooling2d",
    "maxpool2d": "max_pooling2d",
    "avg_pool2d": "average_pooling2d",
    "average_pool2d": "average_pooling2d",
    "global_avg_pool2d": "global_average_pooling2d",
    "global_max_pool2d": "global_max_pooling2d",
}

# Our own sugar on layers that take a kernel regulariser: `l1: 0.0003`, `l2: 0.001`.
REGULARIZER_SUGAR = ("l1", "l2")


def resolve_type(name: str) -> tuple[str, LayerKind | None]:
    """Canonical name and kind; kind is None for a Keras class named directly (checked at build)."""
    name = ALIASES.get(name, name)
    if ":" in name:  # "module:Class", a layer of the user's (expkit.usercode), resolved at build
        return name, None
    if name in LAYERS:
        return name, LAYERS.get(name)
    if name[:1].isupper():
        return name, None
    LAYERS.get(name, path=None)  # raises with did-you-mean
    raise AssertionError("unreachable")


def is_merge(name: str) -> bool:
    """Whether a layer type (a registry name, an alias or a Keras class) merges several inputs."""
    canonical, kind = resolve_type(name)
    return kind.merge if kind is not None else canonical in MERGE_CLASSES


def check_layer_spec(spec: Any, index: int, path: tuple | None = None) -> None:
    """Structural check of one layer spec; raises ConfigError naming model.layers[index] (or `path`)."""
    path = tuple(path) if path is not None else ("model", "layers", index)
    if not isinstance(spec, dict) or len(spec) != 1:
        found = f"a mapping with {len(spec)} keys" if isinstance(spec, dict) else repr(spec)
        raise ConfigError(f"each layer is a single-key mapping like {{dense: {{units: 64}}}}; found {found}", path=path)
    (name, args), = spec.items()
    if not isinstance(name, str):
        raise ConfigError(f"layer type must be a name, found {name!r}", path=path)
    try:
        _, kind = resolve_type(name)
    except ConfigError as exc:
        raise ConfigError(exc.message, path=path) from None
    if isinstance(args, dict):
        for key in args:
            if not isinstance(key, str):
                raise ConfigError(f"argument names must be strings, found {key!r}", path=(*path, name))
    elif args is not None and (kind is None or kind.main_arg is None):
        raise ConfigError(f"'{name}' takes a mapping of arguments, found {args!r}", path=(*path, name))


def layer_arguments(name: str, args: Any) -> tuple[str, LayerKind | None, dict]:
    """(canonical name, kind, keyword arguments) for a spec's value."""
    canonical, kind = resolve_type(name)
    if args is None:
        return canonical, kind, {}
    if isinstance(args, dict):
        return canonical, kind, dict(args)
    return canonical, kind, {kind.main_arg: args}


def _initializer(value, seed_offset: int):
    import keras

    if isinstance(value, dict):
        value = dict(value)
        name = value.pop("name", None) or value.pop("class_name", None)
        if name is None:
            raise ValueError("an initializer mapping needs a 'name', e.g. {name: glorot_normal, seed: 14}")
        return keras.initializers.get({"class_name": name, "config": value})
    return keras.initializers.get(keras_object(value))


def _regularizer(value):
    import keras

    if isinstance(value, dict) and set(value) <= {"l1", "l2"}:
        return keras.regularizers.L1L2(l1=float(value.get("l1", 0.0)), l2=float(value.get("l2", 0.0)))
    if isinstance(value, dict):
        value = dict(value)
        name = value.pop("name", None)
        return keras.regularizers.get({"class_name": name, "config": value})
    return keras.regularizers.get(keras_object(value))


def build_layer(name: str, args: Any, input_shape: tuple):
    """A Keras layer (or a Keras application model used as a layer) for one spec."""
    import keras

    canonical, kind, kwargs = layer_arguments(name, args)
    for key in list(kwargs):
        if key.endswith("_initializer"):
            kwargs[key] = _initializer(kwargs[key], 0)
        elif key.endswith("_regularizer"):
            kwargs[key] = _regularizer(kwargs[key])
    sugar = {k: kwargs.pop(k) for k in REGULARIZER_SUGAR if k in kwargs}
    if sugar:
        if "kernel_regularizer" in kwargs:
            raise ValueError("give either l1/l2 or kernel_regularizer, not both")
        kwargs["kernel_regularizer"] = keras.regularizers.L1L2(
            l1=float(sugar.get("l1", 0.0)), l2=float(sugar.get("l2", 0.0)))
    if kind is not None and kind.keras_class == "application":
        return _application(kwargs, input_shape)
    class_name = kind.keras_class if kind is not None else canonical
    if is_reference(class_name):
        return keras_object(class_name, instantiate=False)(**kwargs)
    cls = getattr(keras.layers, class_name, None)
    if cls is None or not isinstance(cls, type):
        from .registry import did_you_mean

        if callable(getattr(keras.applications, class_name, None)):
            # A whole model (ResNet50, MobileNetV2...) is not in keras.layers: it has its own spec form.
            raise ConfigError(
                f"'{class_name}' is a keras.applications model, not a keras.layers layer: write it as "
                f"{{application: {{name: {class_name}, ...its other arguments}}}} (weights default to null)")
        known = [n for n in dir(keras.layers) if n[:1].isupper()]
        raise ConfigError(f"keras.layers has no layer '{class_name}'{did_you_mean(class_name, known)}")
    return cls(**kwargs)


def _application(kwargs: dict, input_shape: tuple):
    import keras

    kwargs = dict(kwargs)
    app_name = kwargs.pop("name", None)
    if not app_name:
        raise ValueError("application needs a 'name', e.g. {name: ResNet50, weights: null}")
    factory = getattr(keras.applications, app_name, None)
    if factory is None:
        from .registry import did_you_mean

        known = [n for n in dir(keras.applications) if n[:1].isupper()]
        raise ValueError(f"keras.applications has no model '{app_name}'{did_you_mean(app_name, known)}")
    kwargs.setdefault("weights", None)  # pretrained weights need a download; ask for them explicitly
    kwargs.setdefault("input_shape", tuple(input_shape))
    # The application functions take no `trainable`: a frozen backbone is the built model, frozen.
    trainable = kwargs.pop("trainable", True)
    model = factory(**kwargs)
    model.trainable = bool(trainable)
    return model
