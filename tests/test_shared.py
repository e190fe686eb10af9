"""Datasets handed to a sweep's worker processes in shared memory (sweeps/shared.py), and the libraries a
worker holds back while it imports Keras: real spawned processes."""

import multiprocessing
import subprocess
import sys
from multiprocessing import shared_memory
from pathlib import Path

import numpy as np
import pytest

from expkit.data.dataset import Dataset
from expkit.sweeps import shared as shared_module
from expkit.sweeps.shared import SharedDataset, SharedDatasets, open_handed_over

REPO = Path(__file__).resolve().parents[1]


def tiny_dataset(with_weights=True) -> Dataset:
    rng = np.random.default_rng(3)
    return Dataset(rng.random((7, 5), dtype=np.float32), np.arange(7, dtype=np.int32) % 3,
                   rng.random((2, 5), dtype=np.float32), np.array([1, 2], dtype=np.int32),
                   None, None, ["a", "b", "c"], rng.random(7) if with_weights else None)


def _child_reads(handle, out):
    """In a spawned process: open the handle, report sums and whether the arrays can be written."""
    dataset, files = open_handed_over({"k": handle})["k"]
    try:
        dataset.x_train[0, 0] = 5.0
        writable = True
    except ValueError:
        writable = False
    out.put((float(dataset.x_train.sum()), dataset.y_train.tolist(), float(dataset.w_train.sum()),
             dataset.x_test, dataset.classes, files, writable))


def test_a_spawned_process_reads_the_shared_dataset_read_only_and_close_unlinks_it():
    dataset = tiny_dataset()
    shared = SharedDatasets()
    handle = shared.share((dataset, ["/data/train.gz"]))
    assert isinstance(handle, SharedDataset)
    assert shared.share((dataset, ["/data/train.gz"])) is handle  # copied in once per dataset
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    child = ctx.Process(target=_child_reads, args=(handle, out))
    child.start()
    x_sum, y, w_sum, x_test, classes, files, writable = out.get(timeout=120)
    child.join(60)
    assert child.exitcode == 0
    assert x_sum == pytest.approx(float(dataset.x_train.sum()), rel=1e-6)
    assert y == dataset.y_train.tolist()
    assert w_sum == pytest.approx(float(dataset.w_train.sum()))
    assert x_test is None and classes == ["a", "b", "c"] and files == ["/data/train.gz"]
    assert writable is False  # another process maps the same pages
    shared.close()
    with pytest.raises(FileNotFoundError):
        shared_memory.SharedMemory(name=handle.block)


def test_arrays_keep_their_dtype_shape_and_values_and_other_entries_pass_through():
    dataset = tiny_dataset(with_weights=False)
    shared = SharedDatasets()
    try:
        handle = shared.share((dataset, []))
        opened = open_handed_over({"a": handle, "b": ("as", "sent")})
        got, files = opened["a"]
        assert opened["b"] == ("as", "sent") and files == []
        for name in ("x_train", "y_train", "x_val", "y_val"):
            np.testing.assert_array_equal(getattr(got, name), getattr(dataset, name))
            assert getattr(got, name).dtype == getattr(dataset, name).dtype
        assert got.w_train is None and got.input_shape == (5,) and got.num_classes == 3
    finally:
        shared.close()
    assert open_handed_over(None) is None


def test_without_room_in_shared_memory_the_dataset_travels_as_it_is(monkeypatch):
    """A container's 64 MB /dev/shm: writing past it would kill the sweep with SIGBUS, so the dataset is
    pickled through the pipe instead."""
    dataset = tiny_dataset()
    needed = sum(-(-getattr(dataset, n).nbytes // 64) * 64 for n in ("x_train", "y_train", "x_val", "y_val", "w_train"))
    monkeypatch.setattr(shared_module, "shm_room", lambda: 1.2 * needed)
    shared = SharedDatasets()
    loaded = (dataset, ["f"])
    assert shared.share(loaded) is loaded
    assert open_handed_over({"k": loaded})["k"] is loaded
    monkeypatch.setattr(shared_module, "shm_room", lambda: 1.3 * needed)
    try:
        assert isinstance(shared.share(loaded), SharedDataset)
    finally:
        shared.close()


def test_a_worker_imports_keras_without_sklearn_ipython_or_pandas_and_they_import_afterwards():
    code = ("import sys\n"
            "from expkit.backend import import_keras_for_worker\n"
            "import_keras_for_worker()\n"
            "held = [m for m in ('sklearn', 'IPython', 'pandas') if m in sys.modules]\n"
            "import pandas\n"
            "print('keras' in sys.modules, held, pandas.DataFrame({'a': [1]}).shape)\n")
    env = {"PYTHONPATH": str(REPO / "src"), "KERAS_BACKEND": "tensorflow", "PATH": "/usr/bin:/bin",
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "True [] (1, 1)"
