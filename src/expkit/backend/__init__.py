"""Every call specific to one Keras backend lives here, one class per backend.

The rest of expkit speaks Keras only. Which backend Keras runs on is fixed when Keras is imported,
so `activate(name)` sets KERAS_BACKEND (and the variables a backend reads when it starts: devices,
determinism) before anything imports Keras. After that, devices, threads, determinism, compiled steps
and versions go through `current()`, which answers for the backend Keras runs on.

Modules: `base` (the Backend class, shared helpers), `tensorflow`, `jax`, `torch` (one class each, and
what only that backend needs), `resources` (a worker's threads and GPU memory).
"""

from __future__ import annotations

import os
import platform
import sys

from ..errors import ConfigError
from .base import Backend, cpu_model_name, import_keras_for_worker, import_quietly, installed, resolve_inter_op_threads, tf_data_pipeline
from .jax import Jax, compile_cache_env, fuse_jax_train_steps
from .resources import cap_gpu_memory, share_env
from .tensorflow import TensorFlow
from .torch import Torch

BACKEND_NAMES = ("tensorflow", "jax", "torch")
# pip extras that install each backend's library next to expkit
INSTALL_HINT = {"tensorflow": "pip install tensorflow", "jax": "pip install 'expkit[jax]'",
                "torch": "pip install 'expkit[torch]'"}

BACKENDS = {"tensorflow": TensorFlow, "jax": Jax, "torch": Torch}

__all__ = [
    "BACKENDS", "BACKEND_NAMES", "Backend", "Jax", "TensorFlow", "Torch", "activate", "can_run_here",
    "cap_gpu_memory", "compile_cache_env", "cpu_model_name", "current", "default_backend", "fuse_jax_train_steps",
    "import_quietly", "installed", "loaded_backend", "resolve_inter_op_threads", "seed_everything", "set_precision",
    "share_env", "tf_data_pipeline", "versions",
]


# --- choosing the backend: before Keras is imported ---------------------------------------------------


def default_backend() -> str:
    """The backend of a config that names none: $KERAS_BACKEND when set, else tensorflow."""
    name = os.environ.get("KERAS_BACKEND", "").strip() or "tensorflow"
    if name not in BACKEND_NAMES:
        raise ConfigError(f"no backend in the config, and $KERAS_BACKEND is '{name}', which expkit does not run on "
                          f"(it runs on {', '.join(BACKEND_NAMES)}); set `backend:` or change $KERAS_BACKEND",
                          path="backend")
    return name


def loaded_backend() -> str | None:
    """The backend Keras was imported with in this process, or None when Keras is not imported yet."""
    if "keras" not in sys.modules:
        return None
    try:
        from keras.src.backend import config
    except ImportError:  # Keras is being imported right now
        return os.environ.get("KERAS_BACKEND")
    return config.backend()


def can_run_here(name: str) -> bool:
    """Whether a config with `backend: name` can train in this process: Keras is not imported yet, or
    it runs on that backend. A sweep that varies `backend` runs the other trials in fresh processes."""
    loaded = loaded_backend()
    return loaded is None or loaded == name


def activate(name: str, *, device: str = "auto", deterministic: bool = False) -> None:
    """Make `name` the Keras backend of this process; call it before anything imports Keras.

    Sets KERAS_BACKEND and the variables the backend's library reads when it starts (the device, GPU
    determinism), then imports the library quietly. Raises ConfigError when Keras already runs on
    another backend here (a notebook that trained on TensorFlow): a process has one Keras backend.
    """
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend '{name}' (expkit runs on: {', '.join(BACKENDS)})", path="backend")
    loaded = loaded_backend()
    if loaded is not None and loaded != name:
        raise ConfigError(
            f"this process already imported Keras with the '{loaded}' backend, and Keras cannot switch backends "
            f"in a running process; to run on '{name}', start a new process (restart the notebook's kernel) and "
            f"run this config before anything imports Keras, or set KERAS_BACKEND={name} first", path="backend")
    cls = BACKENDS[name]
    if not installed(cls.module):
        raise ConfigError(f"the '{name}' backend needs {cls.module}, which is not installed here "
                          f"({INSTALL_HINT[name]})", path="backend")
    if loaded is None:
        os.environ["KERAS_BACKEND"] = name
        cls.before_start(device, deterministic)
    import_quietly(cls.module)


def current() -> Backend:
    """The backend Keras runs on."""
    import keras

    name = keras.backend.backend()
    if name not in BACKENDS:
        raise ConfigError(f"Keras backend '{name}' is not supported by expkit (supported: {', '.join(BACKENDS)})")
    return BACKENDS[name]()


def seed_everything(seed: int, deterministic: bool) -> None:
    import keras

    if installed("tensorflow"):
        import_quietly("tensorflow")  # Keras seeds TensorFlow too whenever it is installed, on any backend
    keras.utils.set_random_seed(seed)
    current().set_determinism(deterministic)


def set_precision(precision: str) -> None:
    import keras

    keras.mixed_precision.set_global_policy(precision)


def versions() -> dict:
    import keras

    from ..version import __version__

    return {"python": platform.python_version(), **current().versions(), "keras": keras.__version__,
            "expkit": __version__}
