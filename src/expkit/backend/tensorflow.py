"""The TensorFlow backend."""

from __future__ import annotations

import os

from ..errors import ConfigError
from .base import Backend, cpu_model_name, resolve_inter_op_threads


class TensorFlow(Backend):
    """The TensorFlow backend."""

    name = "tensorflow"
    module = "tensorflow"

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
            return f"CPU ({cpu_model_name()})"
        if device in ("auto", "gpu") and gpus:
            for gpu in gpus:
                try:
                    tf.config.experimental.set_memory_growth(gpu, True)
                except (RuntimeError, ValueError):  # started already, or capped by cap_gpu_memory
                    pass
            details = tf.config.experimental.get_device_details(gpus[0])
            return f"GPU ({details.get('device_name', gpus[0].name)})"
        return f"CPU ({cpu_model_name()})"

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
