"""What a dataset source is, the registry that names them, and the checks every source shares.

A source is a function `load(path, seed, **options) -> RawData` registered under a name, with a cheap
`probe(path, **options) -> (example shape, number of classes)`. The options a source accepts are the
keyword-only parameters of its `load`; their defaults are filled in before either function is called,
so `load` and `probe` always see the same complete set.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import ConfigError
from ..registry import Registry, did_you_mean

Probe = Callable[..., tuple[tuple[int, ...], int]]


@dataclass
class RawData:
    """A source's output, before any preprocessing: x as uint8 (or float), y as integer labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    classes: list[str]
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    x_val: np.ndarray | None = None  # the source's own validation set, when it ships one
    y_val: np.ndarray | None = None
    w_train: np.ndarray | None = None  # one weight per training example (data.options.sample_weight), when given


@dataclass(frozen=True)
class Source:
    name: str
    load: Callable[..., RawData]
    probe: Probe
    reads_path: bool = False  # whether `data.path` means anything to it

    @property
    def description(self) -> str:
        return (inspect.getdoc(self.load) or "").split("\n")[0]

    def option_defaults(self) -> dict[str, Any]:
        params = inspect.signature(self.load).parameters.values()
        return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}

    def resolve_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """The source's options with the config's values on top; an unknown key is a ConfigError."""
        known = self.option_defaults()
        for key in options:
            if key not in known:
                hint = did_you_mean(key, known)
                listing = f" (it takes: {', '.join(known)})" if known else " (it takes no options)"
                raise ConfigError(f"unknown option for dataset '{self.name}'{hint}{listing}", path=f"data.options.{key}")
        return {**known, **options}


DATASETS: Registry[Source] = Registry("dataset")


def register_source(name: str, *, probe: Probe, reads_path: bool = False):
    """Register `load(path, seed, *, option=default, ...) -> RawData` as dataset `name`."""

    def decorator(load):
        DATASETS.add(name, Source(name, load, probe, reads_path))
        return load

    return decorator


def fixed_probe(shape: tuple[int, ...], num_classes: int) -> Probe:
    """The probe of a dataset whose shape is a known constant: answers even when its files are absent."""
    return lambda path, **options: (tuple(shape), num_classes)


# --- where data lives ----------------------------------------------------------------------------


def keras_datasets_dir() -> Path:
    """Keras' download cache: $KERAS_HOME/datasets, else ~/.keras/datasets."""
    home = os.environ.get("KERAS_HOME")
    return (Path(home).expanduser() if home else Path.home() / ".keras") / "datasets"


def user_data_dirs() -> list[Path]:
    """$EXPKIT_DATA (when set), then Keras' cache, in lookup order."""
    dirs = [Path(os.environ["EXPKIT_DATA"]).expanduser()] if os.environ.get("EXPKIT_DATA") else []
    return dirs + [keras_datasets_dir()]


def offline() -> bool:
    return os.environ.get("EXPKIT_OFFLINE", "").strip().lower() in ("1", "true", "yes")


def existing_path(path: str | Path | None, dataset: str, *, kind: str) -> Path:
    """`data.path` as an existing file (kind='file') or folder (kind='folder'), else a ConfigError."""
    if path is None:
        raise ConfigError(f"the '{dataset}' dataset reads a {kind}: set data.path", path="data.path")
    p = Path(path).expanduser()
    if not p.exists():
        where = "" if p.is_absolute() else f" (a relative data.path is read from the directory expkit runs in, {Path.cwd()})"
        raise ConfigError(
            f"{kind} not found: {p}{where}; 'Where the data goes' in configs/README.md says how to make the data "
            "files the shipped configs read, and --set data.path=... points elsewhere", path="data.path")
    if kind == "folder" and not p.is_dir():
        raise ConfigError(f"expected a folder, found a file: {p}", path="data.path")
    if kind == "file" and p.is_dir():
        raise ConfigError(f"expected a file, found a folder: {p}", path="data.path")
    return p


# --- option values -------------------------------------------------------------------------------
# Options are free-form YAML, so each source checks its own values with these.


def int_option(name: str, value: Any, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"expected an integer >= {minimum}, found {value!r}", path=f"data.options.{name}")
    return value


def shape_option(name: str, value: Any, *, lengths=(2,)) -> tuple[int, ...] | None:
    if value is None:
        return None
    ok = isinstance(value, (list, tuple)) and len(value) in lengths
    if not ok or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value):
        want = " or ".join(f"{n} positive integers" for n in lengths)
        raise ConfigError(f"expected a list of {want}, found {value!r}", path=f"data.options.{name}")
    return tuple(value)


def choice_option(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(
            f"expected one of {', '.join(choices)}, found {value!r}{did_you_mean(value, choices)}", path=f"data.options.{name}"
        )
    return value


def names_option(name: str, value: Any) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, (str, int)) for v in value):
        raise ConfigError(f"expected a list of class names, found {value!r}", path=f"data.options.{name}")
    names = [str(v) for v in value]
    if len(set(names)) != len(names):
        raise ConfigError(f"class names repeat: {names}", path=f"data.options.{name}")
    return names


def class_names(given: list[str] | None, labels: dict[str, np.ndarray | None], *, where: str) -> list[str]:
    """`given` (the `classes` option) checked against `labels` ({array or column name: labels}), else
    '0'..'C-1' for C = the highest label + 1, every one of which must label some example."""
    present = {name: np.asarray(y) for name, y in labels.items() if y is not None and len(y)}
    for name, y in present.items():
        if (low := int(y.min())) < 0:
            raise ConfigError(f"labels must be 0..C-1 integers; found {low} in {name} of {where}", path="data.path")
    top_name, top = max(((n, int(y.max())) for n, y in present.items()), key=lambda p: p[1], default=("", -1))
    if given is not None:
        if top >= len(given):
            raise ConfigError(f"labels must be 0..{len(given) - 1} integers ({len(given)} class names are given); "
                              f"found label {top} in {top_name} of {where}", path="data.options.classes")
        return given
    if not present:
        return []
    train_name = next(iter(labels))  # the training split comes first
    if len(present) > 1 and train_name in present and top > (train_top := int(present[train_name].max())):
        # counted from the highest label, a stray one in another split would look like an extra class
        raise ConfigError(
            f"{top_name} of {where} holds label {top}, outside the training labels 0..{train_top} ({train_name}): "
            f"fix the labels, or list every class name in data.options.classes", path="data.path")
    seen = np.unique(np.concatenate([y.astype(np.int64) for y in present.values()]))
    if top < 1:
        raise ConfigError(f"a classifier needs at least 2 classes, but every label in {where} is {top}", path="data.path")
    if len(seen) < top + 1:  # the classes are counted from the highest label: a gap is a missing class
        gap = int(np.flatnonzero(seen != np.arange(len(seen)))[0])  # seen is sorted and ends at top
        raise ConfigError(
            f"labels must be 0..C-1 integers with an example of each; {where} has labels up to {top} (in {top_name}) "
            f"but none is {gap}: fix the labels, or list every class name in data.options.classes", path="data.path")
    return [str(i) for i in range(top + 1)]


def check_finite(x: np.ndarray | None, what: str, path: str = "data.path") -> None:
    """Float pixels hold no NaN or infinity (they would train into a 'diverged' run, blaming the model)."""
    if x is None or x.dtype.kind != "f" or np.isfinite(np.sum(x, dtype=np.float64)):
        return  # the sum is finite exactly when every value is (short of overflowing float64)
    bad = ~np.isfinite(x)
    if not bad.any():
        return
    first = int(np.unravel_index(np.argmax(bad), x.shape)[0])
    raise ConfigError(f"pixel values must be finite numbers; {what} holds {int(bad.sum())} NaN or infinite value(s), "
                      f"the first in example {first}", path=path)


SAMPLE_WEIGHT = "data.options.sample_weight"


def sample_weights(w, n: int, what: str) -> np.ndarray:
    """Per-example training weights as float32: one finite, non-negative number per training example, not
    all zero (Keras would train on nothing and report a loss of 0)."""
    w = np.asarray(w)
    if w.ndim == 2 and w.shape[1] == 1:
        w = w[:, 0]
    if w.ndim != 1 or len(w) != n:
        raise ConfigError(f"{what}: expected one weight per training example ({n}), found shape {w.shape}",
                          path=SAMPLE_WEIGHT)
    if w.dtype.kind not in "biuf":
        raise ConfigError(f"{what}: weights must be numbers, found {w.dtype}", path=SAMPLE_WEIGHT)
    w = w.astype(np.float32)
    bad = ~np.isfinite(w) | (w < 0)
    if bad.any():
        first = int(np.argmax(bad))
        raise ConfigError(f"{what}: weights must be finite and >= 0; example {first} has {w[first]}",
                          path=SAMPLE_WEIGHT)
    if not w.any():
        raise ConfigError(f"{what}: every weight is 0, so nothing would train", path=SAMPLE_WEIGHT)
    return w


def integer_labels(y: np.ndarray, what: str) -> np.ndarray:
    """Labels as a 1-D int64 array; (N, 1) columns are flattened, anything fractional is refused."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ConfigError(f"{what}: expected one integer label per example, found shape {y.shape}", path="data.path")
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
            raise ConfigError(f"{what}: labels must be whole numbers", path="data.path")
    elif y.dtype.kind not in "iu":
        raise ConfigError(f"{what}: labels must be integers, found dtype {y.dtype}", path="data.path")
    return y.astype(np.int64)
