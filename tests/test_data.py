"""expkit.data: sources on small real-format files made in tmp_path, and the shared preprocessing."""

from __future__ import annotations

import gzip
import os
import pickle
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest

from expkit.config import DataConfig
from expkit.data import DATASETS, Dataset, load_dataset, probe_dataset
from expkit.data import builtin
from expkit.data.builtin import FASHION_CLASSES, SAMPLE_FILE
from expkit.data.formats import read_idx
from expkit.errors import ConfigError

SRC = Path(__file__).resolve().parents[1] / "src"
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """No test sees the real data folders or the network: an empty home, no system folder, offline."""
    monkeypatch.setenv("EXPKIT_OFFLINE", "1")
    monkeypatch.delenv("EXPKIT_DATA", raising=False)
    monkeypatch.delenv("KERAS_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(builtin, "SYSTEM_DATA_DIRS", [tmp_path / "system"])


def cfg(**fields) -> DataConfig:
    return DataConfig.model_validate(fields)


def config_error(fn, *args, **kwargs) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        fn(*args, **kwargs)
    return info.value


# --- file writers in the real formats ------------------------------------------------------------


def write_idx(path: Path, array: np.ndarray, *, gz: bool) -> Path:
    codes = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + np.array(array.shape, ">u4").tobytes()
    data = header + array.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def write_idx_set(folder: Path, *, n_train=20, n_test=10, fill=0, gz=True) -> None:
    """Four MNIST-style files; image i has pixel value fill + i at [0, 0] so tests can tell sets apart."""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = np.zeros((n, 28, 28), np.uint8)
        x[:, 0, 0] = (fill + np.arange(n)) % 256
        x[:, 5:20, 5:20] = 200
        write_idx(folder / f"{prefix}-images-idx3-ubyte", x, gz=gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", (np.arange(n) % 10).astype(np.uint8), gz=gz)


def write_cifar_folder(folder: Path, files: list[str], label_key: str, n: int, k: int) -> None:
    folder.mkdir(parents=True)
    for name in files:
        # Channel-first rows as in the real batches: red plane 10, green 20, blue 30.
        data = np.concatenate([np.full((n, 1024), v, np.uint8) for v in (10, 20, 30)], axis=1)
        batch = {b"batch_label": b"x", label_key.encode(): [i % k for i in range(n)], b"data": data}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))


def write_png(path: Path, value: int, size=(6, 5), mode="L") -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode == "L" else (value, 0, 255 - value)).save(path)


# --- IDX reader ----------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_round_trips_plain_and_gzip(tmp_path, gz):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    ints = np.array([1, -2, 70000], ">i4")
    assert np.array_equal(read_idx(write_idx(tmp_path / "a", images, gz=gz)), images)
    got = read_idx(write_idx(tmp_path / "b", ints, gz=gz))
    assert got.tolist() == [1, -2, 70000] and got.dtype.byteorder in ("=", "<", "|")


def test_read_idx_rejects_a_truncated_file(tmp_path):
    path = write_idx(tmp_path / "x", np.zeros((3, 4, 4), np.uint8), gz=False)
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(ValueError, match="IDX header says shape"):
        read_idx(path)


# --- built-in datasets: lookup order, errors, download fallback -----------------------------------


def test_fashion_mnist_lookup_order(tmp_path, monkeypatch):
    write_idx_set(tmp_path / "system" / "fashion-mnist", fill=30)
    write_idx_set(tmp_path / "home" / ".keras" / "datasets" / "fashion-mnist", fill=20, gz=False)
    write_idx_set(tmp_path / "mine" / "fashion-mnist", fill=10)
    plain = cfg(dataset="fashion_mnist", shuffle=False, validation_split=0.0, scale=False, labels="integer")

    def first_pixel():
        return load_dataset(plain, 0, "x").x_train[0, 0, 0, 0]

    monkeypatch.setenv("EXPKIT_DATA", str(tmp_path / "mine"))
    assert first_pixel() == 10
    monkeypatch.delenv("EXPKIT_DATA")
    assert first_pixel() == 20
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "nowhere"))
    assert first_pixel() == 30


def test_fashion_mnist_reads_real_format(tmp_path, monkeypatch):
    write_idx_set(tmp_path / "d" / "fashion-mnist", n_train=20, n_test=10)
    monkeypatch.setenv("EXPKIT_DATA", str(tmp_path / "d"))
    ds = load_dataset(cfg(dataset="fashion_mnist", validation_split=0.25), 0, "sparse_categorical_crossentropy")
    assert ds.x_train.shape == (15, 28, 28, 1) and ds.x_val.shape == (5, 28, 28, 1) and ds.x_test.shape == (10, 28, 28, 1)
    assert ds.classes == FASHION_CLASSES and ds.classes[9] == "Ankle boot"
    assert ds.x_train.dtype == np.float32 and ds.x_train.max() == pytest.approx(200 / 255)


def test_fashion_mnist_missing_is_one_error_saying_how_to_get_it(tmp_path, monkeypatch):
    partial = tmp_path / "home" / ".keras" / "datasets" / "fashion-mnist"
    write_idx_set(partial)
    (partial / "t10k-labels-idx1-ubyte.gz").unlink()
    err = config_error(load_dataset, cfg(dataset="fashion_mnist"), 0, "x")
    assert err.path == "data.dataset"
    text = str(err)
    assert "\n" not in text
    for needed in ("apt-get install dataset-fashion-mnist", "$EXPKIT_DATA/fashion-mnist/", ".keras/datasets/fashion-mnist",
                   "Keras download", "EXPKIT_OFFLINE", str(tmp_path / "system" / "fashion-mnist"),
                   "missing t10k-labels-idx1-ubyte"):
        assert needed in text
    assert "$EXPKIT_DATA (not set)" in text


def fake_keras(monkeypatch, load_data):
    module = types.SimpleNamespace(datasets=types.SimpleNamespace(
        fashion_mnist=types.SimpleNamespace(load_data=load_data), mnist=types.SimpleNamespace(load_data=load_data)))
    monkeypatch.setitem(sys.modules, "keras", module)
    monkeypatch.delenv("EXPKIT_OFFLINE")


def test_download_failure_is_reported(monkeypatch):
    def fail():
        raise Exception("URL fetch failure on https://example/: None -- [Errno -2] Name or service not known")

    fake_keras(monkeypatch, fail)
    err = config_error(load_dataset, cfg(dataset="fashion_mnist"), 0, "x")
    assert err.path == "data.dataset" and "Keras download (failed: URL fetch failure" in str(err)


def test_download_is_the_last_resort(monkeypatch):
    x = np.full((30, 28, 28), 7, np.uint8)
    fake_keras(monkeypatch, lambda: ((x, np.arange(30) % 10), (x[:5], np.arange(5))))
    ds = load_dataset(cfg(dataset="mnist", scale=False, validation_split=0.0), 0, "x")
    assert ds.x_train.shape == (30, 28, 28, 1) and ds.x_test.shape == (5, 28, 28, 1) and ds.classes[3] == "3"


def test_mnist_from_keras_npz_and_from_idx(tmp_path, monkeypatch):
    keras_dir = tmp_path / "home" / ".keras" / "datasets"
    write_idx_set(keras_dir / "mnist", n_train=12, n_test=4, gz=False)
    plain = cfg(dataset="mnist", validation_split=0.0)
    assert load_dataset(plain, 0, "x").x_train.shape == (12, 28, 28, 1)
    x = np.zeros((8, 28, 28), np.uint8)
    np.savez(keras_dir / "mnist.npz", x_train=x, y_train=np.arange(8), x_test=x[:2], y_test=np.arange(2))
    assert load_dataset(plain, 0, "x").x_train.shape == (8, 28, 28, 1)  # the npz comes first


def test_cifar10_batches_channels_last(tmp_path, monkeypatch):
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    write_cifar_folder(tmp_path / "d" / "cifar-10-batches-py", files, "labels", n=4, k=10)
    monkeypatch.setenv("EXPKIT_DATA", str(tmp_path / "d"))
    ds = load_dataset(cfg(dataset="cifar10", scale=False, shuffle=False, validation_split=0.0), 0, "categorical_crossentropy")
    assert ds.x_train.shape == (20, 32, 32, 3) and ds.x_test.shape == (4, 32, 32, 3)
    assert ds.x_train[0, 5, 7].tolist() == [10, 20, 30]
    assert ds.y_train.shape == (20, 10) and ds.classes[0] == "airplane"


def test_cifar100_fine_labels_in_keras_cache_layout(tmp_path):
    folder = tmp_path / "home" / ".keras" / "datasets" / "cifar-100-python-target" / "cifar-100-python"
    write_cifar_folder(folder, ["train", "test"], "fine_labels", n=6, k=100)
    ds = load_dataset(cfg(dataset="cifar100", validation_split=0.0, labels="integer"), 0, "x")
    assert ds.x_train.shape == (6, 32, 32, 3) and ds.num_classes == 100 and sorted(ds.y_train.tolist()) == list(range(6))


def test_a_corrupt_cifar_batch_names_the_file(tmp_path, monkeypatch):
    folder = tmp_path / "d" / "cifar-100-python"
    write_cifar_folder(folder, ["train", "test"], "fine_labels", n=2, k=100)
    (folder / "test").write_bytes(b"not a pickle")
    monkeypatch.setenv("EXPKIT_DATA", str(tmp_path / "d"))
    err = config_error(load_dataset, cfg(dataset="cifar100"), 0, "x")
    assert err.path == "data.dataset" and str(folder / "test") in str(err)


@pytest.mark.parametrize("name, shape, k", [
    ("fashion_mnist", (28, 28, 1), 10), ("mnist", (28, 28, 1), 10), ("cifar10", (32, 32, 3), 10),
    ("cifar100", (32, 32, 3), 100), ("fashion_mnist_sample", (28, 28, 1), 10), ("synthetic", (8, 8, 1), 3),
])
def test_probe_answers_without_the_files(name, shape, k):
    start = time.perf_counter()
    assert probe_dataset(cfg(dataset=name)) == (shape, k)
    assert probe_dataset(cfg(dataset=name, layout="flat")) == ((int(np.prod(shape)),), k)
    assert time.perf_counter() - start < 1.0


# --- the shipped sample --------------------------------------------------------------------------


def test_shipped_sample_is_small_balanced_and_loads():
    import expkit

    file = Path(expkit.__file__).parent / SAMPLE_FILE
    assert file.stat().st_size < 3_000_000
    with np.load(file) as f:
        assert {k: f[k].dtype for k in f} == dict.fromkeys(("x_train", "y_train", "x_test", "y_test"), np.uint8)
        assert np.bincount(f["y_train"]).tolist() == [400] * 10 and np.bincount(f["y_test"]).tolist() == [100] * 10
    ds = load_dataset(DataConfig(), 0, "categorical_crossentropy")
    assert (len(ds.x_train), len(ds.x_val), len(ds.x_test)) == (3600, 400, 1000)
    assert ds.input_shape == (28, 28, 1) and ds.y_train.shape == (3600, 10) and 0.0 <= ds.x_train.min() < ds.x_train.max() <= 1.0


@pytest.mark.slow
@pytest.mark.skipif(not DEBIAN_FASHION.is_dir(), reason="needs Debian's dataset-fashion-mnist")
def test_full_fashion_mnist_from_debian(monkeypatch):
    monkeypatch.setattr(builtin, "SYSTEM_DATA_DIRS", [DEBIAN_FASHION.parent])
    ds = load_dataset(cfg(dataset="fashion_mnist", labels="integer"), 0, "x")
    assert (len(ds.x_train), len(ds.x_val), len(ds.x_test)) == (54000, 6000, 10000)
    assert np.bincount(np.concatenate([ds.y_train, ds.y_val])).tolist() == [6000] * 10


# --- npz -----------------------------------------------------------------------------------------


def write_npz(path: Path, **arrays) -> str:
    np.savez(path, **arrays)
    return str(path)


def small_arrays(n, k=3, shape=(4, 4), start=0):
    x = (np.arange(n * int(np.prod(shape))).reshape(n, *shape) + start) % 256
    return x.astype(np.uint8), np.arange(n) % k


def test_npz_uses_its_own_validation_set_unless_a_split_is_given(tmp_path):
    (x, y), (xv, yv), (xt, yt) = small_arrays(40), small_arrays(6, start=3), small_arrays(5)
    path = write_npz(tmp_path / "d.npz", x_train=x, y_train=y, x_val=xv, y_val=yv, x_test=xt, y_test=yt)
    ds = load_dataset(cfg(dataset="npz", path=path, scale=False), 0, "x")
    assert (len(ds.x_train), len(ds.x_val), len(ds.x_test)) == (40, 6, 5)
    assert np.array_equal(ds.x_val[..., 0], xv) and ds.classes == ["0", "1", "2"]
    ds = load_dataset(cfg(dataset="npz", path=path, validation_split=0.25), 0, "x")
    assert (len(ds.x_train), len(ds.x_val)) == (30, 10)


def test_npz_notmnist_names_float_data_and_class_option(tmp_path):
    x = np.linspace(-0.5, 0.5, 30 * 28 * 28, dtype=np.float32).reshape(30, 28, 28)
    path = write_npz(tmp_path / "notMNIST.npz", train_dataset=x, train_labels=np.arange(30) % 10,
                     valid_dataset=x[:4], valid_labels=np.arange(4), test_dataset=x[:3], test_labels=np.arange(3))
    letters = list("ABCDEFGHIJ")
    ds = load_dataset(cfg(dataset="npz", path=path, options={"classes": letters}), 0, "x")
    assert ds.classes == letters and (len(ds.x_train), len(ds.x_val), len(ds.x_test)) == (30, 4, 3)
    # Already-scaled float data is not divided by 255 again.
    assert ds.x_train.min() == pytest.approx(-0.5) and ds.x_train.max() == pytest.approx(0.5)
    assert probe_dataset(cfg(dataset="npz", path=path, layout="flat", options={"classes": letters})) == ((784,), 10)


def test_npz_missing_keys_and_bad_classes(tmp_path):
    x, y = small_arrays(10)
    path = write_npz(tmp_path / "d.npz", x_train=x, labels=y)
    err = config_error(load_dataset, cfg(dataset="npz", path=path), 0, "x")
    assert err.path == "data.path" and "keys found: x_train, labels" in str(err) and path in str(err)
    path = write_npz(tmp_path / "e.npz", x_train=x, y_train=y, x_test=x)
    assert "has 'x_test' but no 'y_test'" in str(config_error(load_dataset, cfg(dataset="npz", path=path), 0, "x"))
    path = write_npz(tmp_path / "f.npz", x_train=x, y_train=y)
    err = config_error(load_dataset, cfg(dataset="npz", path=path, options={"classes": ["a", "b"]}), 0, "x")
    assert err.path == "data.options.classes" and "label 2" in str(err)


@pytest.mark.parametrize("path, expected", [(None, "set data.path"), ("nope.npz", "file not found")])
def test_npz_path_problems(tmp_path, path, expected):
    err = config_error(load_dataset, cfg(dataset="npz", path=path and str(tmp_path / path)), 0, "x")
    assert err.path == "data.path" and expected in str(err)


def test_not_an_npz(tmp_path):
    (tmp_path / "a.npz").write_text("hello")
    err = config_error(probe_dataset, cfg(dataset="npz", path=str(tmp_path / "a.npz")))
    assert err.path == "data.path" and "not an .npz file" in str(err)


# --- image folder --------------------------------------------------------------------------------


def make_image_folder(root: Path) -> Path:
    for split, per_class in (("train", 3), ("valid", 1), ("test", 2)):
        for c, letter in enumerate("BAC"):  # sorted: A, B, C
            for i in range(per_class):
                write_png(root / split / letter / f"{i}.png", value=50 * c + i)
    (root / "train" / "A" / "broken.png").write_bytes(b"\x89PNG not really")
    return root


def test_image_folder_splits_classes_and_skips_unreadable(tmp_path, capsys):
    root = make_image_folder(tmp_path / "letters")
    ds = load_dataset(cfg(dataset="image_folder", path=str(root), shuffle=False, scale=False, labels="integer"), 0, "x")
    assert ds.classes == ["A", "B", "C"]
    assert (len(ds.x_train), len(ds.x_val), len(ds.x_test)) == (9, 3, 6)
    assert ds.x_train.shape[1:] == (5, 6, 1) and ds.x_train.dtype == np.float32
    assert ds.y_train.tolist() == [0, 1, 2] * 3  # interleaved class by class
    assert ds.x_train[1, 0, 0, 0] == 0  # B is the first folder written, with value 50 * 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "skipped 1 unreadable file" in err and "broken.png" in err


def test_image_folder_without_splits_rgb_and_resize(tmp_path):
    for c in ("cat", "dog"):
        for i in range(4):
            write_png(tmp_path / "pets" / c / f"{i}.png", 100, size=(10, 8), mode="RGB")
    write_png(tmp_path / "pets" / "dog" / "big.png", 100, size=(20, 16), mode="RGB")
    config = cfg(dataset="image_folder", path=str(tmp_path / "pets"), validation_split=0.0,
                 options={"color_mode": "rgb", "image_size": [4, 5]})
    ds = load_dataset(config, 0, "x")
    assert ds.x_train.shape == (9, 4, 5, 3) and ds.x_test is None and ds.classes == ["cat", "dog"]
    assert probe_dataset(config) == ((4, 5, 3), 2)
    err = config_error(load_dataset, cfg(dataset="image_folder", path=str(tmp_path / "pets")), 0, "x")
    assert err.path == "data.path" and "big.png is 20x16" in str(err) and "image_size" in str(err)


def test_image_folder_size_mismatch_in_the_test_split(tmp_path):
    root = make_image_folder(tmp_path / "letters")
    write_png(root / "test" / "A" / "odd.png", 9, size=(7, 7))
    err = config_error(load_dataset, cfg(dataset="image_folder", path=str(root)), 0, "x")
    assert err.path == "data.path" and "odd.png is 7x7" in str(err)


def test_image_folder_probe_and_option_errors(tmp_path):
    root = make_image_folder(tmp_path / "letters")
    assert probe_dataset(cfg(dataset="image_folder", path=str(root))) == ((5, 6, 1), 3)
    err = config_error(probe_dataset, cfg(dataset="image_folder", path=str(root), options={"color_mode": "rbg"}))
    assert err.path == "data.options.color_mode" and "did you mean 'rgb'" in str(err)
    err = config_error(probe_dataset, cfg(dataset="image_folder", path=str(root), options={"image_sise": [4, 4]}))
    assert err.path == "data.options.image_sise" and "did you mean 'image_size'" in str(err)
    err = config_error(probe_dataset, cfg(dataset="image_folder", path=str(tmp_path / "letters" / "train" / "A" / "0.png")))
    assert err.path == "data.path" and "expected a folder" in str(err)


# --- CSV of pixels (FER2013 layout) --------------------------------------------------------------


def write_fer_csv(path: Path, rows) -> str:
    lines = ["emotion,pixels,Usage"] + [f"{label},{' '.join(map(str, pixels))},{usage}" for label, pixels, usage in rows]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def fer_rows(n_per_usage=4, side=4):
    usages = ["Training"] * (2 * n_per_usage) + ["PublicTest"] * n_per_usage + ["PrivateTest"] * n_per_usage
    return [(i % 7, [(i * 3 + j) % 256 for j in range(side * side)], u) for i, u in enumerate(usages)]


def test_csv_pixels_usage_splits(tmp_path):
    path = write_fer_csv(tmp_path / "fer.csv", fer_rows())
    ds = load_dataset(cfg(dataset="csv_pixels", path=path, shuffle=False, scale=False, labels="integer"), 0, "x")
    assert (len(ds.x_train), len(ds.x_val), len(ds.x_test)) == (8, 4, 4)
    assert ds.x_train.shape[1:] == (4, 4, 1) and ds.x_train[1, 0, :, 0].tolist() == [3, 4, 5, 6]
    assert ds.y_test.tolist() == [5, 6, 0, 1] and ds.classes == [str(i) for i in range(7)]
    assert probe_dataset(cfg(dataset="csv_pixels", path=path)) == ((4, 4, 1), 7)


def test_csv_pixels_bad_row_and_options(tmp_path):
    rows = fer_rows()
    rows[5] = (1, [1, 2, 3], "Training")
    path = write_fer_csv(tmp_path / "fer.csv", rows)
    err = config_error(load_dataset, cfg(dataset="csv_pixels", path=path), 0, "x")
    assert err.path == "data.path" and f"{path}: line 7: expected 16 pixel values, found 3" in str(err)
    good = write_fer_csv(tmp_path / "good.csv", fer_rows())
    err = config_error(load_dataset, cfg(dataset="csv_pixels", path=good, options={"label_column": "emotions"}), 0, "x")
    assert err.path == "data.options.label_column" and "did you mean 'emotion'" in str(err)
    ds = load_dataset(cfg(dataset="csv_pixels", path=good, layout="flat", options={"image_shape": [2, 8]}), 0, "x")
    assert ds.x_train.shape[1:] == (16,)


def test_csv_pixels_without_usage_column_is_all_training(tmp_path):
    path = tmp_path / "plain.csv"
    path.write_text("label,img\n" + "".join(f"{i % 2},{' '.join(['9'] * 9)}\n" for i in range(10)))
    config = cfg(dataset="csv_pixels", path=str(path), validation_split=0.2,
                 options={"label_column": "label", "pixels_column": "img", "classes": ["no", "yes"]})
    ds = load_dataset(config, 0, "x")
    assert (len(ds.x_train), len(ds.x_val), ds.x_test) == (8, 2, None) and ds.classes == ["no", "yes"]
    assert ds.input_shape == (3, 3, 1)


# --- synthetic and the shared preprocessing -------------------------------------------------------


def test_synthetic_is_deterministic_balanced_and_learnable():
    config = cfg(dataset="synthetic", options={"n_train": 300, "classes": 3, "shape": [6, 6, 2]}, validation_split=0.0)
    a, b, c = (load_dataset(config, seed, "x") for seed in (1, 1, 2))
    assert np.array_equal(a.x_train, b.x_train) and np.array_equal(a.y_train, b.y_train)
    assert not np.array_equal(a.x_train, c.x_train)
    assert a.x_train.shape == (300, 6, 6, 2) and np.bincount(a.y_train).tolist() == [100] * 3
    # Nearest class mean already separates the classes: a model has something to learn.
    means = np.stack([a.x_train[a.y_train == k].mean(0) for k in range(3)])
    guess = np.argmin(((a.x_test[:, None] - means[None]) ** 2).sum(axis=(2, 3, 4)), axis=1)
    assert (guess == a.y_test).mean() > 0.8


def test_unknown_option_and_unknown_dataset():
    err = config_error(load_dataset, cfg(dataset="synthetic", options={"n_trian": 5}), 0, "x")
    assert err.path == "data.options.n_trian" and "did you mean 'n_train'" in str(err)
    err = config_error(probe_dataset, cfg(dataset="mnist", options={"foo": 1}))
    assert err.path == "data.options.foo" and "takes no options" in str(err)
    err = config_error(probe_dataset, cfg(dataset="fashion_minst"))
    assert err.path == "data.dataset" and "did you mean 'fashion_mnist'" in str(err)
    err = config_error(load_dataset, cfg(dataset="synthetic", options={"n_train": "many"}), 0, "x")
    assert err.path == "data.options.n_train"
    err = config_error(probe_dataset, cfg(dataset="fashion_mnist", path="/data/fashion"))
    assert err.path == "data.path" and "does not read data.path" in str(err)


def unshuffled_npz(tmp_path, n=50):
    x, y = small_arrays(n, k=5, shape=(3, 3))
    x[:, 0, 0] = np.arange(n)  # the example's file position, readable after preprocessing
    xt, yt = small_arrays(20, k=5, shape=(3, 3))
    return write_npz(tmp_path / "d.npz", x_train=x, y_train=y, x_test=xt, y_test=yt)


def positions(x):
    return x[:, 0, 0, 0].astype(int).tolist()


def test_same_seed_same_data_other_seed_other_order(tmp_path):
    path = unshuffled_npz(tmp_path)
    first, again, other = (load_dataset(cfg(dataset="npz", path=path, scale=False), s, "x") for s in (3, 3, 4))
    for name in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        assert np.array_equal(getattr(first, name), getattr(again, name))
    assert positions(first.x_train) != positions(other.x_train)
    assert sorted(positions(first.x_train) + positions(first.x_val)) == list(range(50))
    # The validation set is the end of the training set after the seeded shuffle.
    order = np.random.default_rng(3).permutation(50).tolist()
    assert positions(first.x_train) == order[:45] and positions(first.x_val) == order[45:]


def test_limit_takes_file_order_before_the_shuffle(tmp_path):
    path = unshuffled_npz(tmp_path)
    ds = load_dataset(cfg(dataset="npz", path=path, scale=False, limit=20, test_limit=7, validation_split=0.0), 5, "x")
    assert sorted(positions(ds.x_train)) == list(range(20)) and len(ds.x_test) == 7
    ds = load_dataset(cfg(dataset="npz", path=path, scale=False, limit=20, shuffle=False, validation_split=0.25), 5, "x")
    assert positions(ds.x_train) == list(range(15)) and positions(ds.x_val) == list(range(15, 20))


def test_no_validation_gives_empty_arrays_of_the_right_shape(tmp_path):
    path = unshuffled_npz(tmp_path)
    ds = load_dataset(cfg(dataset="npz", path=path, validation_split=0.0), 0, "categorical_crossentropy")
    assert ds.x_val.shape == (0, 3, 3, 1) and ds.y_val.shape == (0, 5) and len(ds.x_train) == 50
    err = config_error(load_dataset, cfg(dataset="npz", path=path, limit=1, validation_split=0.5), 0, "x")
    assert err.path == "data.validation_split"


@pytest.mark.parametrize("labels, loss, one_hot", [
    ("auto", "categorical_crossentropy", True), ("auto", "CategoricalCrossentropy", True),
    ("auto", "sparse_categorical_crossentropy", False), ("one_hot", "sparse_categorical_crossentropy", True),
    ("integer", "categorical_crossentropy", False),
])
def test_label_encoding(tmp_path, labels, loss, one_hot):
    ds = load_dataset(cfg(dataset="npz", path=unshuffled_npz(tmp_path), labels=labels, shuffle=False), 0, loss)
    if one_hot:
        assert ds.y_train.dtype == np.float32 and ds.y_train.shape == (45, 5)
        assert ds.y_train.sum(axis=1).tolist() == [1.0] * 45 and ds.y_train.argmax(1).tolist()[:6] == [0, 1, 2, 3, 4, 0]
    else:
        assert ds.y_train.dtype.kind == "i" and ds.y_train.shape == (45,) and ds.y_train.tolist()[:6] == [0, 1, 2, 3, 4, 0]


def test_scale_and_layout(tmp_path):
    path = unshuffled_npz(tmp_path)
    scaled = load_dataset(cfg(dataset="npz", path=path, layout="flat"), 0, "x")
    raw = load_dataset(cfg(dataset="npz", path=path, scale=False), 0, "x")
    assert scaled.x_train.shape == (45, 9) and scaled.input_shape == (9,) and scaled.x_train.dtype == np.float32
    assert raw.x_train.dtype == np.float32 and raw.x_train.max() > 1.0
    assert np.allclose(scaled.x_train * 255, raw.x_train.reshape(45, 9)) and 0 <= scaled.x_train.min() <= scaled.x_train.max() <= 1
    assert isinstance(raw, Dataset) and raw.num_classes == 5 and "train=45" in repr(raw)


def test_image_layout_refuses_vectors(tmp_path):
    path = write_npz(tmp_path / "v.npz", x_train=np.zeros((10, 7)), y_train=np.arange(10) % 2)
    err = config_error(probe_dataset, cfg(dataset="npz", path=path))
    assert err.path == "data.layout" and "layout: flat" in str(err)
    assert probe_dataset(cfg(dataset="npz", path=path, layout="flat")) == ((7,), 2)


def test_every_source_is_registered_with_a_description():
    assert DATASETS.names() == sorted(["fashion_mnist", "mnist", "cifar10", "cifar100", "fashion_mnist_sample", "npz",
                                       "image_folder", "csv_pixels", "synthetic"])
    assert all(DATASETS.get(name).description for name in DATASETS.names())


def test_importing_data_does_not_import_tensorflow():
    code = "import sys, expkit.data; print(sorted(m for m in ('tensorflow', 'keras', 'PIL', 'pandas') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(SRC)})
    assert out.stdout.strip() == "[]"


# --- data faults are named as data faults --------------------------------------------------------


def test_npz_label_beyond_the_class_names(tmp_path):
    x, y = small_arrays(20, k=10)
    y[7] = 10
    path = write_npz(tmp_path / "d.npz", x_train=x, y_train=y, x_test=x[:4], y_test=y[:4])
    err = config_error(load_dataset, cfg(dataset="npz", path=path, options={"classes": list("abcdefghij")}), 0, "x")
    assert err.path == "data.options.classes"
    assert "labels must be 0..9 integers (10 class names are given); found label 10 in y_train of" in err.message
    assert path in err.message


def test_npz_negative_label_names_array_and_file(tmp_path):
    x, y = small_arrays(20)
    yt = y[:4].copy()
    yt[2] = -1
    path = write_npz(tmp_path / "d.npz", x_train=x, y_train=y, x_test=x[:4], y_test=yt)
    err = config_error(load_dataset, cfg(dataset="npz", path=path), 0, "x")
    assert err.path == "data.path" and f"labels must be 0..C-1 integers; found -1 in y_test of {path}" in err.message
    assert "-1 in y_test" in str(config_error(probe_dataset, cfg(dataset="npz", path=path)))


def test_npz_missing_class_is_a_label_fault(tmp_path):
    x, y = small_arrays(20, k=3)
    y[y == 1] = 2  # labels 0 and 2: class 1 has no example
    path = write_npz(tmp_path / "d.npz", x_train=x, y_train=y)
    err = config_error(load_dataset, cfg(dataset="npz", path=path), 0, "x")
    assert err.path == "data.path"
    assert "labels up to 2 (in y_train) but none is 1" in err.message and "data.options.classes" in err.message
    # naming the classes says some are absent on purpose
    ds = load_dataset(cfg(dataset="npz", path=path, options={"classes": ["a", "b", "c"]}), 0, "x")
    assert ds.num_classes == 3


def test_npz_single_class(tmp_path):
    x, _ = small_arrays(10)
    path = write_npz(tmp_path / "d.npz", x_train=x, y_train=np.zeros(10, dtype=int))
    err = config_error(load_dataset, cfg(dataset="npz", path=path), 0, "x")
    assert err.path == "data.path" and "at least 2 classes, but every label in" in err.message and path in err.message
    err = config_error(load_dataset, cfg(dataset="npz", path=path, options={"classes": ["only"]}), 0, "x")
    assert "a classifier needs at least 2 classes, the data has 1 (only)" in err.message


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("key", ["x_train", "x_test"])
def test_npz_non_finite_pixels(tmp_path, bad, key):
    x, y = small_arrays(20)
    arrays = {"x_train": x.astype(np.float32), "y_train": y, "x_test": x[:5].astype(np.float32), "y_test": y[:5]}
    arrays[key][3, 1, 2] = bad
    path = write_npz(tmp_path / "d.npz", **arrays)
    err = config_error(load_dataset, cfg(dataset="npz", path=path), 0, "x")
    assert err.path == "data.path"
    assert f"pixel values must be finite numbers; {key} of {path} holds 1 NaN or infinite value(s), the first in example 3" \
        in err.message


def test_finite_float_pixels_load(tmp_path):
    x, y = small_arrays(20)
    path = write_npz(tmp_path / "d.npz", x_train=x.astype(np.float32) / 255 - 0.5, y_train=y)
    assert load_dataset(cfg(dataset="npz", path=path), 0, "x").x_train.dtype == np.float32


def test_image_folder_needs_two_classes(tmp_path):
    for i in range(3):
        write_png(tmp_path / "one" / "cats" / f"{i}.png", value=10 * i)
    err = config_error(load_dataset, cfg(dataset="image_folder", path=str(tmp_path / "one")), 0, "x")
    assert err.path == "data.path"
    assert "image_folder needs at least 2 class folders" in err.message and "found 1: cats" in err.message
    err = config_error(probe_dataset, cfg(dataset="image_folder", path=str(tmp_path / "one")))
    assert "found 1: cats" in err.message
    (tmp_path / "empty").mkdir()
    err = config_error(load_dataset, cfg(dataset="image_folder", path=str(tmp_path / "empty")), 0, "x")
    assert "found none" in err.message


def test_csv_label_faults_name_the_column(tmp_path):
    path = tmp_path / "f.csv"
    path.write_text("emotion,pixels\n" + "".join(f"{-1 if i == 3 else i % 2},{' '.join(['9'] * 4)}\n" for i in range(6)))
    err = config_error(load_dataset, cfg(dataset="csv_pixels", path=str(path), options={"usage_column": None}), 0, "x")
    assert err.path == "data.path" and f"found -1 in column 'emotion' of {path}" in err.message


def test_missing_relative_path_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err = config_error(load_dataset, cfg(dataset="npz", path="data/notMNIST.npz"), 0, "x")
    assert err.path == "data.path"
    assert f"file not found: data/notMNIST.npz (a relative data.path is read from the directory expkit runs in, {tmp_path})" \
        in err.message
    assert "configs/README.md" in err.message and "\n" not in str(err)
    err = config_error(load_dataset, cfg(dataset="npz", path=str(tmp_path / "abs.npz")), 0, "x")
    assert "read from the directory" not in err.message and "configs/README.md" in err.message


def test_every_source_is_checked_for_labels_and_pixels():
    """The shared check after any source (built-in IDX float files, registered ones) says the same."""
    from expkit.data.dataset import _check_raw
    from expkit.data.source import RawData

    x = np.zeros((4, 2, 2), dtype=np.float32)
    err = config_error(_check_raw, RawData(x, np.array([0, 1, 2, 3]), ["a", "b", "c"]), "data.dataset")
    assert err.path == "data.dataset" and err.message == "labels must be 0..2 integers (3 classes); found 3 in the train set"
    bad = x.copy()
    bad[2, 0, 1] = np.nan
    err = config_error(_check_raw, RawData(x, np.array([0, 1, 0, 1]), ["a", "b"], bad, np.array([0, 1, 0, 1])), "data.path")
    assert err.message == ("pixel values must be finite numbers; the test set holds 1 NaN or infinite value(s), "
                           "the first in example 2")


def test_npz_header_claiming_more_than_the_file_holds_names_the_array(tmp_path):
    import io
    import zipfile

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": (10**12, 28, 28)})
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("x_train.npy", header.getvalue() + bytes(64))
        buf = io.BytesIO()
        np.save(buf, np.arange(4))
        zf.writestr("y_train.npy", buf.getvalue())
    for call in (lambda c: load_dataset(c, 0, "x"), probe_dataset):
        err = config_error(call, cfg(dataset="npz", path=str(path)))
        assert err.path == "data.path" and str(path) in str(err)
        assert "x_train: its header claims shape (1000000000000, 28, 28) of uint8 (784,000,000,000,000 bytes) " \
               "but it holds 64 bytes" in str(err)


def test_a_test_label_outside_the_training_labels_names_the_split(tmp_path):
    (x, y), (xt, yt) = small_arrays(40, k=10), small_arrays(5, k=10)
    yt[2] = 10
    path = write_npz(tmp_path / "d.npz", x_train=x, y_train=y, x_test=xt, y_test=yt)
    for call in (lambda c: load_dataset(c, 0, "x"), probe_dataset):
        err = config_error(call, cfg(dataset="npz", path=path))
        assert err.path == "data.path"
        assert f"y_test of {path} holds label 10, outside the training labels 0..9 (y_train)" in str(err)
