"""Every call specific to one Keras backend lives here, one class per backend.

The rest of expkit speaks Keras only. Devices, threads, determinism, input pipelines and versions
differ per backend, so they go through `current()`, which answers for the backend Keras runs on.
"""

from __future__ import annotations

import os
import platform
import sys

from .errors import ConfigError

# On a small CPU-only machine every op's own thread pool already covers all cores: running independent
# ops side by side oversubscribes them (see docs/performance.md).
SMALL_CPU_CORES = 4


def resolve_inter_op_threads(setting, cpu_count: int | None, has_gpu: bool) -> int:
    """The inter-op thread count for `train.inter_op_threads` (0 keeps the backend's default)."""
    if setting != "auto":
        return setting
    return 1 if not has_gpu and (cpu_count or 0) <= SMALL_CPU_CORES else 0


def import_quietly(module: str = "tensorflow") -> None:
    """Import a backend with its C++ start-up chatter (CUDA probing, CPU flags) held back.

    Some of those lines are printed before TF_CPP_MIN_LOG_LEVEL is read, so file descriptor 2 is
    pointed at a temporary file during the import; if the import fails, what it printed is replayed.
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


class TensorFlow:
    """The TensorFlow backend."""

    name = "tensorflow"

    def gpus(self) -> list:
        import tensorflow as tf

        return tf.config.list_physical_devices("GPU")

    def select_device(self, device: str) -> str:
        """Apply --device (auto|cpu|gpu) before TensorFlow touches a device; returns a description."""
        import tensorflow as tf

        # A sweep builds a new model per trial, and tf.function warns at length about "retracing"
        # each time; that is expected here, not a mistake to report.
        tf.get_logger().setLevel("ERROR")
        gpus = self.gpus()
        if device == "gpu" and not gpus:
            raise ConfigError("--device gpu: TensorFlow sees no GPU on this machine (is the CUDA build of "
                              "TensorFlow installed? `pip install tensorflow[and-cuda]`); use --device cpu or auto")
        if device == "cpu" and gpus:
            try:
                tf.config.set_visible_devices([], "GPU")
            except RuntimeError:  # devices already initialised in this process: pin ops instead
                pass
            return "CPU"
        if device in ("auto", "gpu") and gpus:
            for gpu in gpus:
                try:
                    tf.config.experimental.set_memory_growth(gpu, True)
                except RuntimeError:
                    pass
            details = tf.config.experimental.get_device_details(gpus[0])
            return f"GPU ({details.get('device_name', gpus[0].name)})"
        return "CPU"

    def set_inter_op_threads(self, setting) -> int:
        """Apply `train.inter_op_threads` before the runtime starts; returns the count in force."""
        import tensorflow as tf

        threads = resolve_inter_op_threads(setting, os.cpu_count(), bool(self.gpus()))
        try:
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        except RuntimeError:  # the runtime already started in this process (a sweep's later trial): keep it
            pass
        return tf.config.threading.get_inter_op_parallelism_threads()

    def set_determinism(self, deterministic: bool) -> None:
        import tensorflow as tf

        if deterministic:
            tf.config.experimental.enable_op_determinism()

    def input_pipeline(self, x, y, batch_size: int, shuffle: bool, seed: int):
        """A cached, prefetched tf.data pipeline over in-memory arrays."""
        import tensorflow as tf

        ds = tf.data.Dataset.from_tensor_slices((x, y)).cache()
        if shuffle:
            ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
        return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)

    def version(self) -> str:
        import tensorflow as tf

        return tf.__version__


BACKENDS = {"tensorflow": TensorFlow}


def current():
    """The backend Keras runs on."""
    import keras

    name = keras.backend.backend()
    if name not in BACKENDS:
        raise ConfigError(f"Keras backend '{name}' is not supported by expkit (supported: {', '.join(BACKENDS)})")
    return BACKENDS[name]()


def seed_everything(seed: int, deterministic: bool) -> None:
    import keras

    keras.utils.set_random_seed(seed)
    current().set_determinism(deterministic)


def set_precision(precision: str) -> None:
    import keras

    keras.mixed_precision.set_global_policy(precision)


def versions() -> dict:
    import keras

    from . import __version__

    backend = current()
    return {"python": platform.python_version(), backend.name: backend.version(), "keras": keras.__version__,
            "expkit": __version__}
