"""The well-known datasets (looked up on disk, then downloaded by Keras), the shipped sample and `synthetic`.

Their shapes are constants, so their probes answer even when the files are absent.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from .formats import idx_file, read_cifar_batch, read_idx
from .source import (
    RawData, fixed_probe, int_option, integer_labels, keras_datasets_dir, offline, shape_option,
    register_source, user_data_dirs,
)

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR100_CLASSES = """apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel
can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin elephant
flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster man maple_tree
motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree plain plate poppy
porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper snail snake spider squirrel
streetcar sunflower sweet_pepper table tank telephone television tiger tractor train trout tulip turtle wardrobe whale
willow_tree wolf woman worm""".split()
IDX_STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
SAMPLE_FILE = "samples/fashion_mnist_sample.npz"
# Debian/Ubuntu install datasets here (`apt-get install dataset-fashion-mnist`); tests point it elsewhere.
SYSTEM_DATA_DIRS = [Path("/usr/share/datasets")]


class _Search:
    """Where a built-in dataset was looked for, so the final error can say exactly that."""

    def __init__(self, name: str, how_to_get: str):
        self.name, self.how_to_get, self.notes = name, how_to_get, []
        if not os.environ.get("EXPKIT_DATA"):
            self.notes.append("$EXPKIT_DATA (not set)")

    def note(self, place: Path, why: str) -> None:
        self.notes.append(f"{place} ({why})")

    def download(self, keras_module: str) -> RawData | None:
        """Keras' own loader (it caches under ~/.keras/datasets), unless EXPKIT_OFFLINE is set."""
        if offline():
            self.notes.append("Keras download (skipped: EXPKIT_OFFLINE is set)")
            return None
        try:
            import keras

            (x_train, y_train), (x_test, y_test) = getattr(keras.datasets, keras_module).load_data()
        except Exception as exc:  # Keras raises a bare Exception for a failed fetch
            self.notes.append(f"Keras download (failed: {str(exc).strip()[:300]})")
            return None
        return RawData(x_train, integer_labels(y_train, self.name), [], x_test, integer_labels(y_test, self.name))

    def error(self) -> ConfigError:
        return ConfigError(
            f"the {self.name} files were not found. To get them: {self.how_to_get}. Looked at: {'; '.join(self.notes)}",
            path="data.dataset",
        )


def _read_checked(path: Path, reader, *args):
    try:
        return reader(path, *args)
    except ValueError as exc:
        raise ConfigError(f"{exc}; replace or delete that file", path="data.dataset") from None


def _idx_set(folder: Path, search: _Search) -> RawData | None:
    """The four MNIST-style IDX files in `folder`, or None (noted in `search`) when any is missing."""
    if not folder.is_dir():
        search.note(folder, "no such folder")
        return None
    files = [idx_file(folder, stem) for stem in IDX_STEMS]
    if None in files:
        missing = [stem for stem, f in zip(IDX_STEMS, files) if f is None]
        search.note(folder, f"missing {', '.join(missing)}")
        return None
    x_train, y_train, x_test, y_test = (_read_checked(f, read_idx) for f in files)
    for x, y, f in ((x_train, y_train, files[0]), (x_test, y_test, files[2])):
        if x.ndim != 3 or len(x) != len(y):
            raise ConfigError(f"{f}: expected N images and N labels, found shapes {x.shape} and {y.shape}", path="data.dataset")
    return RawData(x_train, y_train.astype(np.int64), [], x_test, y_test.astype(np.int64))


def _where(subdir: str) -> str:
    return f"$EXPKIT_DATA/{subdir} or {keras_datasets_dir()}/{subdir}"


@register_source("fashion_mnist", probe=fixed_probe((28, 28), 10))
def fashion_mnist(path, seed) -> RawData:
    """Fashion-MNIST, 70,000 28x28 grayscale images of clothing in 10 classes (Zalando, MIT licence)."""
    search = _Search(
        "fashion_mnist",
        "`apt-get install dataset-fashion-mnist` (Debian/Ubuntu); or put the four IDX files "
        f"({', '.join(s + '.gz' for s in IDX_STEMS)}) in {_where('fashion-mnist/')}; "
        "or allow the Keras download (unset EXPKIT_OFFLINE; needs internet)",
    )
    for root in user_data_dirs() + SYSTEM_DATA_DIRS:
        raw = _idx_set(root / "fashion-mnist", search)
        if raw is not None:
            break
    else:
        raw = search.download("fashion_mnist")
    if raw is None:
        raise search.error()
    raw.classes = list(FASHION_CLASSES)
    return raw


@register_source("mnist", probe=fixed_probe((28, 28), 10))
def mnist(path, seed) -> RawData:
    """MNIST, 70,000 28x28 grayscale handwritten digits."""
    search = _Search(
        "mnist",
        f"put Keras' mnist.npz in $EXPKIT_DATA/ or {keras_datasets_dir()}/, or the four IDX files "
        f"({', '.join(s + '.gz' for s in IDX_STEMS)}) in {_where('mnist/')}; "
        "or allow the Keras download (unset EXPKIT_OFFLINE; needs internet)",
    )
    raw = None
    for root in user_data_dirs():
        npz = root / "mnist.npz"
        if npz.is_file():
            try:
                with np.load(npz, allow_pickle=False) as f:
                    raw = RawData(f["x_train"], f["y_train"].astype(np.int64), [], f["x_test"], f["y_test"].astype(np.int64))
            except (OSError, ValueError, KeyError) as exc:
                raise ConfigError(f"{npz}: not Keras' mnist.npz ({exc}); replace or delete it", path="data.dataset") from None
            break
        search.note(npz, "not there")
        if (raw := _idx_set(root / "mnist", search)) is not None:
            break
    else:
        for root in SYSTEM_DATA_DIRS:
            if (raw := _idx_set(root / "mnist", search)) is not None:
                break
        else:
            raw = search.download("mnist")
    if raw is None:
        raise search.error()
    raw.classes = [str(i) for i in range(10)]
    return raw


def _cifar(name: str, folder: str, train: list[str], test: str, label_key: str, classes: list[str]) -> RawData:
    search = _Search(
        name,
        f"put the python version's folder {folder}/ (from the CIFAR site's tar.gz) in $EXPKIT_DATA/ or "
        f"{keras_datasets_dir()}/; or allow the Keras download (unset EXPKIT_OFFLINE; needs internet)",
    )
    # Keras 3 extracts its download to <cache>/<folder>-target/<folder>/.
    candidates = [root / folder for root in user_data_dirs()] + [keras_datasets_dir() / f"{folder}-target" / folder]
    for cand in candidates:
        missing = [f for f in (*train, test) if not (cand / f).is_file()]
        if not cand.is_dir() or missing:
            search.note(cand, "no such folder" if not cand.is_dir() else f"missing {', '.join(missing)}")
            continue
        parts = [_read_checked(cand / f, read_cifar_batch, label_key) for f in train]
        x_test, y_test = _read_checked(cand / test, read_cifar_batch, label_key)
        raw = RawData(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), [], x_test, y_test)
        break
    else:
        raw = search.download(name)
    if raw is None:
        raise search.error()
    raw.classes = list(classes)
    return raw


@register_source("cifar10", probe=fixed_probe((32, 32, 3), 10))
def cifar10(path, seed) -> RawData:
    """CIFAR-10, 60,000 32x32 colour images in 10 classes."""
    batches = [f"data_batch_{i}" for i in range(1, 6)]
    return _cifar("cifar10", "cifar-10-batches-py", batches, "test_batch", "labels", CIFAR10_CLASSES)


@register_source("cifar100", probe=fixed_probe((32, 32, 3), 100))
def cifar100(path, seed) -> RawData:
    """CIFAR-100, 60,000 32x32 colour images in 100 fine classes."""
    return _cifar("cifar100", "cifar-100-python", ["train"], "test", "fine_labels", CIFAR100_CLASSES)


@register_source("fashion_mnist_sample", probe=fixed_probe((28, 28), 10))
def fashion_mnist_sample(path, seed) -> RawData:
    """5,000 real Fashion-MNIST images shipped with expkit (400 per class to train, 100 to test): works offline."""
    with resources.as_file(resources.files("expkit").joinpath(SAMPLE_FILE)) as file, np.load(file) as f:
        return RawData(f["x_train"], f["y_train"].astype(np.int64), list(FASHION_CLASSES),
                       f["x_test"], f["y_test"].astype(np.int64))


def _synthetic_probe(path, *, n_train, n_test, shape, classes):
    return shape_option("shape", shape, lengths=(2, 3)), int_option("classes", classes, minimum=2)


@register_source("synthetic", probe=_synthetic_probe)
def synthetic(path, seed, *, n_train=256, n_test=64, shape=(8, 8), classes=3) -> RawData:
    """Random images whose class sets their brightness pattern: learnable in seconds, for tests and smoke runs."""
    shape, k = _synthetic_probe(path, n_train=n_train, n_test=n_test, shape=shape, classes=classes)
    n_train, n_test = int_option("n_train", n_train), int_option("n_test", n_test, minimum=0)
    # The class patterns depend on the shape and class count only, so every seed draws from the same task.
    patterns = np.random.default_rng([k, *shape]).uniform(40, 215, size=(k, *shape))
    rng = np.random.default_rng(seed)

    def draw(n):
        y = rng.permutation(np.arange(n) % k)
        x = patterns[y] + rng.normal(0, 40, size=(n, *shape))
        return np.clip(np.rint(x), 0, 255).astype(np.uint8), y.astype(np.int64)

    x_train, y_train = draw(n_train)
    x_test, y_test = draw(n_test)
    return RawData(x_train, y_train, [str(i) for i in range(k)], x_test, y_test)
