"""From a `data:` config section to train/validation/test arrays ready for Keras.

The steps, in order: the source's raw arrays -> `limit`/`test_limit` (file order) -> seeded shuffle of
the training set -> validation split from its end, or with `fold` the fold's K-th of it (`fold_split`)
-> `scale` -> `layout` -> `labels`. Everything
depends only on (config, seed): the same seed gives the same arrays in the same order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import DataConfig
from ..errors import ConfigError
from .source import DATASETS, RawData, Source, check_finite

# Losses whose targets are one-hot rows (compared without '_' and case, so class names match too).
ONE_HOT_LOSSES = {"categoricalcrossentropy", "categoricalfocalcrossentropy", "categoricalhinge"}
DEFAULT_VALIDATION_SPLIT = 0.1


@dataclass(repr=False)
class Dataset:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray  # 0 rows when there is no validation set
    y_val: np.ndarray
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    classes: list[str]  # class names; index = integer label
    w_train: np.ndarray | None = None  # one weight per training example (data.options.sample_weight), else None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __repr__(self) -> str:
        test = "none" if self.x_test is None else len(self.x_test)
        return (f"Dataset(train={len(self.x_train)}, val={len(self.x_val)}, test={test}, "
                f"input_shape={self.input_shape}, classes={self.num_classes})")


def _source(cfg: DataConfig) -> tuple[Source, dict]:
    src = DATASETS.get(cfg.dataset, path="data.dataset")
    if cfg.path is not None and not src.reads_path:
        # A setting that would be silently ignored is refused, like an unknown key.
        raise ConfigError(f"the '{cfg.dataset}' dataset does not read data.path; remove it", path="data.path")
    return src, src.resolve_options(dict(cfg.options))


def load_dataset(cfg: DataConfig, seed: int, loss: str) -> Dataset:
    """Load and preprocess the configured dataset; `loss` decides the label encoding when labels is auto."""
    src, options = _source(cfg)
    raw = src.load(cfg.path, seed, **options)
    _check_raw(raw, "data.path" if cfg.path is not None else "data.dataset")

    # The weights travel with their examples; those of examples cut into the validation set are dropped
    # (validation losses and metrics are unweighted, so they compare across weightings).
    x_train, y_train = raw.x_train[:cfg.limit], raw.y_train[:cfg.limit]
    w_train = None if raw.w_train is None else raw.w_train[:cfg.limit]
    if cfg.shuffle:
        order = np.random.default_rng(seed).permutation(len(x_train))
        x_train, y_train = x_train[order], y_train[order]
        w_train = None if w_train is None else w_train[order]

    if cfg.fold is not None:  # the folds are cut from the training set; a source's own validation set is unused
        train_at, val_at = fold_split(len(x_train), cfg.fold.of, cfg.fold.index)
        x_train, x_val, y_train, y_val = x_train[train_at], x_train[val_at], y_train[train_at], y_train[val_at]
        w_train = None if w_train is None else w_train[train_at]
    elif cfg.validation_split is None and raw.x_val is not None:
        x_val, y_val = raw.x_val, raw.y_val
    else:
        split = DEFAULT_VALIDATION_SPLIT if cfg.validation_split is None else cfg.validation_split
        n_train = len(x_train) - _validation_count(len(x_train), split)
        x_train, x_val, y_train, y_val = x_train[:n_train], x_train[n_train:], y_train[:n_train], y_train[n_train:]
        w_train = None if w_train is None else w_train[:n_train]
    if w_train is not None and not w_train.any():
        raise ConfigError("every training example left after the validation split weighs 0, so nothing would train",
                          path="data.options.sample_weight")

    x_test, y_test = raw.x_test, raw.y_test
    if x_test is not None:
        x_test, y_test = x_test[:cfg.test_limit], y_test[:cfg.test_limit]

    # Float data already in [0, 1] (or centred, like notMNIST's [-0.5, 0.5]) is not divided again.
    divide = cfg.scale and (raw.x_train.dtype.kind in "biu" or float(np.max(raw.x_train, initial=0)) > 1.0)
    one_hot = label_encoding(cfg.labels, loss) == "one_hot"
    k = len(raw.classes)

    def finish(x, y):
        x = np.divide(x, np.float32(255), dtype=np.float32) if divide else x.astype(np.float32)
        x = x.reshape(len(x), int(np.prod(x.shape[1:]))) if cfg.layout == "flat" else _as_image(x)  # -1 fails on 0 rows
        y = np.eye(k, dtype=np.float32)[y] if one_hot else y.astype(np.int32)
        return x, y

    x_train, y_train = finish(x_train, y_train)
    x_val, y_val = finish(x_val, y_val)
    if x_test is not None:
        x_test, y_test = finish(x_test, y_test)
    return Dataset(x_train, y_train, x_val, y_val, x_test, y_test, list(raw.classes), w_train)


def probe_dataset(cfg: DataConfig) -> tuple[tuple[int, ...], int]:
    """(input shape after `layout`, number of classes) without loading the data; answers for the
    built-in datasets even when their files are absent."""
    src, options = _source(cfg)
    shape, num_classes = src.probe(cfg.path, **options)
    shape = tuple(int(d) for d in shape)
    if cfg.layout == "flat":
        return (int(np.prod(shape)),), num_classes
    return _image_shape(shape), num_classes


def fold_split(n: int, folds: int, index: int) -> tuple[np.ndarray, np.ndarray]:
    """(training positions, validation positions) of fold `index` of `folds`: the n examples (already in
    the seed's shuffled order) cut into `folds` consecutive parts, the first n % folds one example longer,
    as scikit-learn's KFold cuts them; fold i validates on part i. Over the folds the validation sets are
    disjoint and cover the training set once."""
    if folds > n:
        raise ConfigError(f"{folds} folds of {n} training examples leave a fold empty; at most {n} folds "
                          "(sweep.folds sets data.fold.of)", path="data.fold.of")
    parts = np.array_split(np.arange(n), folds)
    return np.concatenate([p for i, p in enumerate(parts) if i != index]), parts[index]


def _validation_count(n: int, split: float) -> int:
    count = int(n * split + 0.5)
    if split > 0 and count == 0 and n >= 2:
        count = 1  # a requested validation set is never silently empty
    if split > 0 and count >= n:
        raise ConfigError(
            f"{split} of {n} training examples leaves none to train on; lower it or raise data.limit",
            path="data.validation_split",
        )
    return count


def label_encoding(labels: str, loss: str) -> str:
    """'one_hot' or 'integer': `data.labels`, with auto decided by the loss."""
    if labels != "auto":
        return labels
    return "one_hot" if str(loss).replace("_", "").lower() in ONE_HOT_LOSSES else "integer"


def _image_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    if len(shape) == 2:
        return (*shape, 1)
    if len(shape) == 3:
        return shape
    raise ConfigError(
        f"layout 'image' needs examples of shape (height, width[, channels]), these have shape {shape}; "
        "use layout: flat", path="data.layout",
    )


def _as_image(x: np.ndarray) -> np.ndarray:
    _image_shape(x.shape[1:])
    return x[..., None] if x.ndim == 3 else x


def _check_raw(raw: RawData, where: str) -> None:
    """A source's arrays agree with each other: one label per example, one example shape, labels 0..C-1,
    at least 2 classes, finite pixels."""
    k = len(raw.classes)
    if k < 2:
        raise ConfigError(f"a classifier needs at least 2 classes, the data has {k} ({', '.join(raw.classes) or 'none'})",
                          path=where)
    shape = raw.x_train.shape[1:]
    for name, x, y in (("train", raw.x_train, raw.y_train), ("validation", raw.x_val, raw.y_val),
                       ("test", raw.x_test, raw.y_test)):
        if x is None:
            continue
        if len(x) != len(y):
            raise ConfigError(f"the {name} set has {len(x)} examples but {len(y)} labels", path=where)
        if x.shape[1:] != shape:
            raise ConfigError(f"{name} examples have shape {x.shape[1:]}, training examples {shape}", path=where)
        if len(y) and (y.min() < 0 or y.max() >= k):
            bad = y.min() if y.min() < 0 else y.max()
            raise ConfigError(f"labels must be 0..{k - 1} integers ({k} classes); found {bad} in the {name} set",
                              path=where)
        check_finite(x, f"the {name} set", where)
    if len(raw.x_train) == 0:
        raise ConfigError("the training set is empty", path=where)
