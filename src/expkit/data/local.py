"""Sources that read the user's own files at `data.path`: an .npz, a folder of images, a FER-style CSV."""

from __future__ import annotations

import math
import os
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..registry import did_you_mean
from .formats import npz_keys, npz_shape, npz_size_problem
from .source import (
    SAMPLE_WEIGHT, RawData, check_finite, choice_option, class_names, existing_path, integer_labels, names_option,
    register_source, sample_weights, shape_option,
)

# --- npz -----------------------------------------------------------------------------------------

# (train, validation, test) key pairs: expkit's own names, and notMNIST's as distributed.
NPZ_STYLES = [
    (("x_train", "y_train"), ("x_val", "y_val"), ("x_test", "y_test")),
    (("train_dataset", "train_labels"), ("valid_dataset", "valid_labels"), ("test_dataset", "test_labels")),
]


def _npz_style(file: Path) -> tuple[list[str], tuple]:
    try:
        keys = npz_keys(file)
    except ValueError as exc:
        raise ConfigError(str(exc), path="data.path") from None
    for style in NPZ_STYLES:
        if all(k in keys for k in style[0]):
            for pair in style[1:]:
                if (pair[0] in keys) != (pair[1] in keys):
                    have, lack = pair if pair[0] in keys else pair[::-1]
                    raise ConfigError(f"{file} has '{have}' but no '{lack}' (keys found: {', '.join(keys)})", path="data.path")
            return keys, style
    wanted = " or ".join(f"{a}, {b}" for (a, b), _, _ in NPZ_STYLES)
    raise ConfigError(
        f"{file} lacks the training arrays: expected {wanted} (keys found: {', '.join(keys) or 'none'})", path="data.path"
    )


def _check_npz_sizes(file, keys) -> None:
    for key in keys:
        try:
            problem = npz_size_problem(file, key)
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            raise ConfigError(f"{file}: cannot read {key} ({exc})", path="data.path") from None
        if problem:
            raise ConfigError(f"{file}: {problem}", path="data.path")


def _npz_weight_key(file: Path, keys: list[str], style, sample_weight) -> str | None:
    """data.options.sample_weight: the name of an array in the file beside the training arrays."""
    if sample_weight is None:
        return None
    name = str(sample_weight)
    if name not in keys:
        raise ConfigError(f"{file} has no array '{name}'{did_you_mean(name, keys)} (keys found: {', '.join(keys)})",
                          path=SAMPLE_WEIGHT)
    if name in {k for pair in style for k in pair}:
        raise ConfigError(f"'{name}' is one of {file}'s data arrays, not weights", path=SAMPLE_WEIGHT)
    return name


def _npz_probe(path, *, classes, sample_weight):
    file = existing_path(path, "npz", kind="file")
    keys, style = _npz_style(file)
    _check_npz_sizes(file, keys)
    _npz_weight_key(file, keys, style, sample_weight)
    shape = npz_shape(file, style[0][0])[1:]
    names = names_option("classes", classes)
    if names is None:
        with np.load(file, allow_pickle=False) as f:
            names = class_names(None, {y: integer_labels(f[y], f"{file}: {y}") for _, y in style if y in keys},
                                where=str(file))
    return shape, len(names)


@register_source("npz", probe=_npz_probe, reads_path=True)
def npz(path, seed, *, classes=None, sample_weight=None) -> RawData:
    """Arrays from an .npz: x_train, y_train[, x_val, y_val][, x_test, y_test], or notMNIST's names.

    sample_weight names an array of the file holding one weight per training example."""
    file = existing_path(path, "npz", kind="file")
    keys, style = _npz_style(file)
    _check_npz_sizes(file, keys)
    weight_key = _npz_weight_key(file, keys, style, sample_weight)
    arrays, weights = [], None
    try:
        with np.load(file, allow_pickle=False) as f:
            for x_key, y_key in style:
                if x_key not in keys:
                    arrays.append((None, None))
                    continue
                x, y = f[x_key], integer_labels(f[y_key], f"{file}: {y_key}")
                if len(x) != len(y) or x.ndim < 2:
                    raise ConfigError(f"{file}: {x_key} has shape {x.shape} but {y_key} has {len(y)} labels", path="data.path")
                check_finite(x, f"{x_key} of {file}")
                arrays.append((x, y))
            if weight_key is not None:
                weights = sample_weights(f[weight_key], len(arrays[0][0]), f"{file}: {weight_key}")
    except (OSError, ValueError) as exc:  # a damaged member, or an object array (pickles are refused)
        raise ConfigError(f"{file}: cannot read ({exc})", path="data.path") from None
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = arrays
    labels = {y_key: y for (_, y_key), (_, y) in zip(style, arrays)}
    names = class_names(names_option("classes", classes), labels, where=str(file))
    return RawData(x_train, y_train, names, x_test, y_test, x_val, y_val, w_train=weights)


# --- image folder --------------------------------------------------------------------------------

SPLIT_FOLDERS = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}
COLOR_MODES = {"grayscale": "L", "rgb": "RGB"}


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _splits(root: Path) -> dict[str, Path]:
    """{'train': folder, 'val': ..., 'test': ...}; a folder without train/ holds the classes itself."""
    if not (root / "train").is_dir():
        return {"train": root}
    found = {}
    for split, names in SPLIT_FOLDERS.items():
        for name in names:
            if (root / name).is_dir():
                found[split] = root / name
                break
    return found


def _image_classes(root: Path) -> tuple[dict[str, Path], list[str]]:
    splits = _splits(root)
    classes = [p.name for p in _subfolders(splits["train"])]
    if len(classes) < 2:
        found = f"found 1: {classes[0]}" if classes else "found none"
        raise ConfigError(f"image_folder needs at least 2 class folders (one folder of images per class) in "
                          f"{splits['train']}, {found}", path="data.path")
    return splits, classes


def _read_image(file: Path, mode: str, size: tuple[int, int] | None) -> np.ndarray | None:
    from PIL import Image

    try:
        with Image.open(file) as img:
            img = img.convert(mode)
            if size is not None and img.size != (size[1], size[0]):
                img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            return np.asarray(img, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):  # PIL reports damage in all of these
        return None


def _interleaved_files(folder: Path, classes: list[str]) -> list[tuple[Path, int]]:
    """(file, label) taking one file per class in turn, so `limit` and an unshuffled split stay balanced."""
    per_class = []
    for sub in _subfolders(folder):
        if sub.name not in classes:
            raise ConfigError(f"class folder {sub} does not exist in the training folder", path="data.path")
        files = sorted(p for p in sub.iterdir() if p.is_file() and not p.name.startswith("."))
        per_class.append([(f, classes.index(sub.name)) for f in files])
    longest = max((len(files) for files in per_class), default=0)
    return [files[i] for i in range(longest) for files in per_class if i < len(files)]


def _image_folder_probe(path, *, image_size, color_mode):
    root = existing_path(path, "image_folder", kind="folder")
    splits, classes = _image_classes(root)
    size = shape_option("image_size", image_size)
    mode = COLOR_MODES[choice_option("color_mode", color_mode, tuple(COLOR_MODES))]
    if size is None:
        for file, _ in _interleaved_files(splits["train"], classes):
            if (img := _read_image(file, mode, None)) is not None:
                return img.shape, len(classes)
        raise ConfigError(f"no readable image under {splits['train']}", path="data.path")
    return (*size, 3) if mode == "RGB" else size, len(classes)


@register_source("image_folder", probe=_image_folder_probe, reads_path=True)
def image_folder(path, seed, *, image_size=None, color_mode="grayscale") -> RawData:
    """Images in one folder per class, under train/ [val/ or valid/] [test/] or directly in data.path."""
    root = existing_path(path, "image_folder", kind="folder")
    splits, classes = _image_classes(root)
    resize = size = shape_option("image_size", image_size)  # size: the one every image must have
    mode = COLOR_MODES[choice_option("color_mode", color_mode, tuple(COLOR_MODES))]
    arrays, skipped, first = {}, [], None
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:  # PIL decodes without the GIL
        for split, folder in splits.items():
            pairs = _interleaved_files(folder, classes)
            images = list(pool.map(lambda pair: _read_image(pair[0], mode, resize), pairs))
            kept = []
            for (file, label), img in zip(pairs, images):
                if img is None:
                    skipped.append(file)
                    continue
                if size is None:
                    size = img.shape[:2]
                    first = file
                if img.shape[:2] != tuple(size):
                    raise ConfigError(
                        f"image {file} is {img.shape[1]}x{img.shape[0]} (width x height) but {first} is "
                        f"{size[1]}x{size[0]}; set data.options.image_size: [height, width] to resize them all",
                        path="data.path",
                    )
                kept.append((img, label))
            if split == "train" and not kept:
                raise ConfigError(f"no readable image under {folder}", path="data.path")
            if kept:  # an empty val/ or test/ folder counts as absent
                arrays[split] = (np.stack([i for i, _ in kept]), np.array([lab for _, lab in kept], dtype=np.int64))
    if skipped:
        print(f"warning: image_folder: skipped {len(skipped)} unreadable file(s) under {root} (first: {skipped[0]})",
              file=sys.stderr)
    return RawData(*arrays["train"], classes, *arrays.get("test", (None, None)), *arrays.get("val", (None, None)))


# --- CSV of pixel strings (FER2013) ---------------------------------------------------------------

USAGE_SPLITS = {"training": "train", "train": "train", "publictest": "val", "validation": "val", "val": "val",
                "privatetest": "test", "test": "test"}


def _read_csv(file: Path, **kwargs):
    import pandas as pd

    try:
        return pd.read_csv(file, **kwargs)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise ConfigError(f"{file}: not a readable CSV ({str(exc).strip()})", path="data.path") from None


def _column(frame, option: str, name, file: Path, *, required=True):
    if name in frame.columns:
        return frame[name]
    if not required:
        return None
    columns = [str(c) for c in frame.columns]
    raise ConfigError(
        f"{file} has no column '{name}'{did_you_mean(name, columns)} (columns: {', '.join(columns)})",
        path=f"data.options.{option}",
    )


def _pixel_shape(count: int, image_shape, file: Path) -> tuple[int, ...]:
    shape = shape_option("image_shape", image_shape, lengths=(2, 3))
    if shape is not None:
        return shape
    side = math.isqrt(count)
    if side * side != count:
        raise ConfigError(f"{file}: rows hold {count} pixels, not a square number; set data.options.image_shape",
                          path="data.options.image_shape")
    return (side, side)


def _csv_probe(path, *, label_column, pixels_column, usage_column, image_shape, classes, sample_weight):
    file = existing_path(path, "csv_pixels", kind="file")
    names = names_option("classes", classes)
    first = _read_csv(file, nrows=1, dtype=str)
    pixels = _column(first, "pixels_column", pixels_column, file)
    if sample_weight is not None:
        _column(first, "sample_weight", sample_weight, file)
    shape = _pixel_shape(len(str(pixels.iloc[0]).split()) if len(first) else 0, image_shape, file)
    if names is None:  # reads one column only: a few seconds for FER2013's 300 MB
        labels = _column(_read_csv(file, usecols=[label_column]), "label_column", label_column, file)
        column = f"column '{label_column}'"
        names = class_names(None, {column: integer_labels(labels.to_numpy(), f"{file}: {column}")}, where=str(file))
    return shape, len(names)


@register_source("csv_pixels", probe=_csv_probe, reads_path=True)
def csv_pixels(path, seed, *, label_column="emotion", pixels_column="pixels", usage_column="Usage",
               image_shape=None, classes=None, sample_weight=None) -> RawData:
    """FER2013-style CSV: a label column, a column of space-separated pixels, an optional Usage column.

    sample_weight names a column holding each training row's weight."""
    file = existing_path(path, "csv_pixels", kind="file")
    frame = _read_csv(file, dtype={pixels_column: str}, keep_default_na=False)
    labels = integer_labels(_column(frame, "label_column", label_column, file).to_numpy(), f"{file}: column '{label_column}'")
    pixels = _column(frame, "pixels_column", pixels_column, file)
    usage = _column(frame, "usage_column", usage_column, file, required=usage_column != "Usage") if usage_column else None
    if not len(frame):
        raise ConfigError(f"{file} has no data rows", path="data.path")
    shape = _pixel_shape(len(pixels.iloc[0].split()), image_shape, file)
    count = math.prod(shape)
    x = np.empty((len(frame), count), dtype=np.uint8)
    for i, text in enumerate(pixels):
        line = f"{file}: line {i + 2}"  # the header is line 1
        try:
            row = np.fromstring(text, dtype=np.int64, sep=" ")
        except ValueError:
            raise ConfigError(f"{line}: column '{pixels_column}' is not space-separated integers", path="data.path") from None
        if len(row) != count:
            raise ConfigError(f"{line}: expected {count} pixel values, found {len(row)}", path="data.path")
        if row.min() < 0 or row.max() > 255:
            raise ConfigError(f"{line}: pixel values must be 0..255, found {row.min()}..{row.max()}", path="data.path")
        x[i] = row
    x = x.reshape(len(frame), *shape)
    split = np.full(len(frame), "train", dtype=object)
    if usage is not None:
        for i, value in enumerate(usage):
            if str(value).strip().lower() not in USAGE_SPLITS:
                raise ConfigError(f"{file}: line {i + 2}: unknown {usage_column} '{value}' "
                                  "(expected Training, PublicTest or PrivateTest)", path="data.path")
            split[i] = USAGE_SPLITS[str(value).strip().lower()]
    parts = {s: (x[split == s], labels[split == s]) for s in ("train", "val", "test") if np.any(split == s)}
    if "train" not in parts:
        raise ConfigError(f"{file}: no row is marked for training in column '{usage_column}'", path="data.path")
    names = class_names(names_option("classes", classes), {f"column '{label_column}'": labels}, where=str(file))
    weights = None
    if sample_weight is not None:
        column = _column(frame, "sample_weight", sample_weight, file).to_numpy()[split == "train"]
        try:
            column = column.astype(np.float64)
        except ValueError:
            raise ConfigError(f"{file}: column '{sample_weight}' holds values that are not numbers",
                              path=SAMPLE_WEIGHT) from None
        weights = sample_weights(column, len(parts["train"][0]), f"{file}: column '{sample_weight}'")
    return RawData(*parts["train"], names, *parts.get("test", (None, None)), *parts.get("val", (None, None)),
                   w_train=weights)
