"""Datasets: a registry of sources, each turning (config, seed) into arrays, and the shared preprocessing.

    from expkit.data import load_dataset, probe_dataset, DATASETS
    ds = load_dataset(cfg.data, seed=cfg.seed, loss=cfg.train.loss)

Sources: fashion_mnist, mnist, cifar10, cifar100 (files on disk, then a Keras download unless
EXPKIT_OFFLINE=1), fashion_mnist_sample (shipped, offline), synthetic (generated), and the local
formats npz, image_folder and csv_pixels (read from `data.path`). TensorFlow is imported only by the
download fallback.
"""

from . import builtin, local  # noqa: F401  (registers the sources)
from .dataset import Dataset, load_dataset, probe_dataset
from .source import DATASETS, RawData, register_source

__all__ = ["DATASETS", "Dataset", "RawData", "load_dataset", "probe_dataset", "register_source"]
