"""What every backend shares: the Backend class each one extends, and the helpers they all use."""

from __future__ import annotations

import importlib.util
import os
import platform
import sys

from ..errors import ConfigError

# On a small CPU-only machine every op's own thread pool already covers all cores: running independent
# ops side by side oversubscribes them (see docs/performance.md).
SMALL_CPU_CORES = 4


def resolve_inter_op_threads(setting, cpu_count: int | None, has_gpu: bool) -> int:
    """The inter-op thread count for `train.inter_op_threads` (0 keeps the backend's default)."""
    if setting != "auto":
        return setting
    return 1 if not has_gpu and (cpu_count or 0) <= SMALL_CPU_CORES else 0


def installed(module: str) -> bool:
    return module in sys.modules or importlib.util.find_spec(module) is not None


def import_quietly(module: str) -> None:
    """Import a backend's library with its C++ start-up chatter (CUDA probing, CPU flags) held back.

    Some of those lines are printed before TF_CPP_MIN_LOG_LEVEL is read, so file descriptor 2 is pointed at
    a temporary file during the import; if the import fails, what it printed is replayed.
    """
    import tempfile

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if module in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            __import__(module)
        except BaseException:
            os.dup2(saved, 2)
            capture.seek(0)
            sys.stderr.write(capture.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


# Libraries Keras imports at start-up whenever they are installed, for what a sweep's worker process never
# uses: its scikit-learn wrappers (keras.wrappers), IPython's display in notebooks, pandas DataFrames as
# fit() inputs (a worker passes NumPy arrays). Held back while a worker imports Keras: 0.6, 0.2 and
# 0.37 s of a JAX worker's 3.2 s Keras import on the 2-core CPU (python -X importtime). Once Keras is
# in, they import as usual (a user's data code may use them; Keras' own uses of them stay off there).
WORKER_HELD_BACK = ("sklearn", "IPython", "pandas")


def import_keras_for_worker() -> None:
    """`import keras` in a worker process, without the libraries of WORKER_HELD_BACK."""
    import importlib.abc

    class HeldBack(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in WORKER_HELD_BACK:
                raise ModuleNotFoundError(f"{name} is held back while a worker imports Keras", name=name)
            return None

    finder = HeldBack()
    sys.meta_path.insert(0, finder)
    try:
        import keras  # noqa: F401
    finally:
        sys.meta_path.remove(finder)


def cpu_model_name() -> str:
    """The processor's model name (/proc/cpuinfo on Linux), for results.json's `device`."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware", "cpu model") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def tf_data_pipeline(x, y, batch_size: int, shuffle: bool, seed: int):
    """`train.input_pipeline: tf_data`: a cached, prefetched tf.data pipeline over in-memory arrays.

    Keras takes tf.data on every backend; it needs TensorFlow installed (checked before training)."""
    import_quietly("tensorflow")
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x, y)).cache()
    if shuffle:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


class Backend:
    """What every backend answers; the defaults suit a backend without the knob in question."""

    name = ""
    module = ""  # the library Keras runs on

    @classmethod
    def before_start(cls, device: str, deterministic: bool) -> None:
        """Set the environment the library reads when it starts (called before it is imported)."""

    def gpus(self) -> list:
        return []

    def check_config(self, cfg) -> None:
        """Settings this backend cannot honour, as a ConfigError naming the key (before any folder)."""
        if cfg.train.input_pipeline == "tf_data" and not installed("tensorflow"):
            raise ConfigError(f"tf_data builds a TensorFlow input pipeline, and TensorFlow is not installed here "
                              f"(backend {self.name}); use arrays or auto, or pip install tensorflow",
                              path=("train", "input_pipeline"))

    def steps_per_execution(self, requested, auto_value: int) -> int:
        """The training steps per compiled call in force: `auto_value` for `auto`."""
        return auto_value if requested == "auto" else requested

    def prepare_compiled(self, model, steps_per_execution: int) -> None:
        """Called after model.compile: a backend may replace how several steps run per call."""

    def set_determinism(self, deterministic: bool) -> None:
        pass

    def input_pipeline(self, x, y, batch_size: int, shuffle: bool, seed: int):
        return tf_data_pipeline(x, y, batch_size, shuffle, seed)

    def version(self) -> str:
        return sys.modules[self.module].__version__ if self.module in sys.modules else __import__(self.module).__version__

    def versions(self) -> dict:
        return {self.name: self.version()}

