"""The JAX backend: devices and the compilation cache set before JAX starts, several training steps fused
into one compiled loop."""

from __future__ import annotations

import os
import sys

from ..errors import ConfigError
from .base import Backend, cpu_model_name, installed

COMPILE_CACHE_BYTES = 2 * 1024**3  # the persistent XLA cache's size on disk (JAX evicts the oldest)
JAX_DETERMINISTIC_FLAG = "--xla_gpu_deterministic_ops=true"


class Jax(Backend):
    """The JAX backend: XLA compiles every step; devices are chosen before JAX starts."""

    name = "jax"
    module = "jax"

    @classmethod
    def before_start(cls, device: str, deterministic: bool) -> None:
        if "jax" in sys.modules:  # started already (imported by the caller): select_device pins the device
            return
        if device == "cpu":
            os.environ["JAX_PLATFORMS"] = "cpu"  # never touch the GPU, as TensorFlow's hidden devices do
        # Like TensorFlow's memory growth: several expkit processes (a sweep's workers) can share a GPU.
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
        for key, value in compile_cache_env().items():
            os.environ.setdefault(key, value)
        if deterministic and JAX_DETERMINISTIC_FLAG not in os.environ.get("XLA_FLAGS", ""):
            os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {JAX_DETERMINISTIC_FLAG}".strip()

    def _devices(self, platform_name: str | None = None) -> list:
        import jax

        try:
            return jax.devices(platform_name)
        except RuntimeError:  # no such platform here (no GPU plugin, or JAX_PLATFORMS=cpu)
            return []

    def gpus(self) -> list:
        import jax

        default = jax.config.jax_default_device
        if default is not None and getattr(default, "platform", default) == "cpu":
            return []
        return [d for d in self._devices() if d.platform != "cpu"]

    def select_device(self, device: str) -> str:
        import jax

        gpus = [d for d in self._devices() if d.platform != "cpu"]
        if device == "gpu" and not gpus:
            seen = ", ".join(f"{d.platform}:{d.id}" for d in self._devices()) or "nothing"
            raise ConfigError(f"--device gpu: JAX sees no GPU on this machine (its devices: {seen}; is the CUDA "
                              "build of jaxlib installed? `pip install 'jax[cuda12]'`); use --device cpu or auto")
        if device == "cpu" or not gpus:
            if gpus:  # JAX started on the GPU before expkit could say otherwise: place work on the CPU
                jax.config.update("jax_default_device", self._devices("cpu")[0])
            return f"CPU ({cpu_model_name()})"
        jax.config.update("jax_default_device", None)  # a --device cpu earlier in this process
        return f"GPU ({gpus[0].device_kind})"

    def set_inter_op_threads(self, setting):
        """JAX has no inter-op thread pool to size: `auto` (and 0, the default) keep XLA's own scheduling."""
        if setting not in ("auto", 0):
            raise ConfigError(f"JAX has no inter-op thread setting (XLA schedules ops itself), found {setting}; "
                              "leave it auto", path=("train", "inter_op_threads"))
        return None

    def check_config(self, cfg) -> None:
        super().check_config(cfg)
        self.set_inter_op_threads(cfg.train.inter_op_threads)

    def set_determinism(self, deterministic: bool) -> None:
        # XLA on a CPU computes the same values every run; on a GPU the flag must be set before JAX starts.
        if deterministic and self.gpus() and JAX_DETERMINISTIC_FLAG not in os.environ.get("XLA_FLAGS", ""):
            raise ConfigError("JAX started in this process without deterministic GPU ops, and they cannot be "
                              f"switched on afterwards; set XLA_FLAGS={JAX_DETERMINISTIC_FLAG} before starting "
                              "(the expkit command does), or use --device cpu", path=("train", "deterministic"))

    def prepare_compiled(self, model, steps_per_execution: int) -> None:
        fuse_jax_train_steps(model, steps_per_execution)

    def versions(self) -> dict:
        import jax
        import jaxlib

        return {"jax": jax.__version__, "jaxlib": jaxlib.__version__}


def compile_cache_env(environ=None) -> dict[str, str]:
    """The variables that give JAX a persistent compilation cache: a run of a model compiled before (the
    same config again, the next trial of a sequential sweep, a resumed run) loads XLA's programs from disk
    instead of compiling them. `$EXPKIT_COMPILE_CACHE`: a folder, or `off`; by default
    `$XDG_CACHE_HOME/expkit/xla` (~/.cache/expkit/xla), kept under COMPILE_CACHE_BYTES by JAX's own
    least-recently-used eviction (which locks the folder, so concurrent processes share it safely; it
    needs the filelock package, without which the cache stays off). A JAX_COMPILATION_CACHE_DIR set by
    the user is left as it is."""
    environ = os.environ if environ is None else environ
    where = environ.get("EXPKIT_COMPILE_CACHE", "")
    if where.lower() in ("off", "0", "false", "no") or "JAX_COMPILATION_CACHE_DIR" in environ or not installed("filelock"):
        return {}
    if not where:
        where = os.path.join(environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "expkit", "xla")
    return {"JAX_COMPILATION_CACHE_DIR": where,
            "JAX_COMPILATION_CACHE_MAX_SIZE": str(COMPILE_CACHE_BYTES),
            # JAX caches programs that took a second or more to compile; a small model's steps take less
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.2"}


def fuse_jax_train_steps(model, steps: int, *, convolutions_on_cpu: bool = False) -> bool:
    """Run `steps` training steps in one compiled XLA call, as TensorFlow's steps_per_execution does.

    Keras' JAX trainer takes steps_per_execution as a Python loop over single-step calls, so each step
    still pays a dispatch and a host-to-device copy. Here the batches of one call are stacked and a
    compiled loop runs Keras' own `train_step` over them in order: the same steps, state and random
    streams, so the same math (tests/test_train.py compares the metrics with one step per call). The
    trip count is an argument, so the epoch's last, shorter group of batches reuses the same program;
    a last batch of a different size runs on its own. Returns False (Keras' loop stays) where the
    trainer is not the plain jitted one (eager, distributed, or a Keras whose trainer differs), and
    for convolutions on a CPU: XLA's CPU backend runs a convolution inside a compiled loop some 30
    times slower than the same convolution on its own (measured: docs/performance.md), and a step
    that convolves is long enough that Keras' per-step overhead hardly shows anyway.
    """
    import inspect

    if steps <= 1 or getattr(model, "run_eagerly", False) or not getattr(model, "jit_compile", False):
        return False
    if not convolutions_on_cpu and not Jax().gpus() and any("Conv" in type(l).__name__ for l in _all_layers(model)):
        return False
    try:
        from keras.src import distribution
        from keras.src.backend.config import is_nnx_enabled
        from keras.src.backend.jax.trainer import JAXTrainer
    except ImportError:
        return False
    if (not isinstance(model, JAXTrainer) or distribution.distribution() is not None or is_nnx_enabled()
            or list(inspect.signature(model.train_step).parameters) != ["state", "data"]):
        return False
    import jax
    import numpy as np
    from jax import lax

    tree = jax.tree_util

    def many_steps(state, batches, count):
        first = tree.tree_map(lambda b: b[0], batches)
        logs_shape = jax.eval_shape(model.train_step, state, first)[0]
        logs = tree.tree_map(lambda s: jax.numpy.zeros(s.shape, s.dtype), logs_shape)

        def body(i, carry):
            data = tree.tree_map(lambda b: lax.dynamic_index_in_dim(b, i, keepdims=False), batches)
            return model.train_step(carry[1], data)

        return lax.fori_loop(0, count, body, (logs, state))

    def shapes(batch) -> list:
        return [np.shape(leaf) for leaf in tree.tree_leaves(batch)]

    def stack(*leaves):
        if all(isinstance(leaf, np.ndarray) for leaf in leaves):
            return np.stack(leaves)  # on the host: one transfer per call
        return jax.numpy.stack(leaves)  # already on the device (Keras prefetches batches to a GPU)

    def make_train_function(force=False):
        if model.train_function is not None and not force:
            return
        single = jax.jit(model.train_step, donate_argnums=0)
        fused = jax.jit(many_steps, donate_argnums=0)

        def train_function(state, iterator):
            batches = []
            for _ in range(steps):
                try:
                    batches.append(next(iterator))
                except StopIteration:
                    break
            if not batches:
                raise StopIteration  # Keras' epoch loop ends the epoch on it
            odd = batches.pop() if len(batches) > 1 and shapes(batches[-1]) != shapes(batches[0]) else None
            if len(batches) == 1:
                logs, state = single(state, batches[0])
            else:
                count = len(batches)
                batches += [batches[-1]] * (steps - count)  # never run: the loop stops at `count`
                logs, state = fused(state, tree.tree_map(stack, *batches), count)
            if odd is not None:
                logs, state = single(state, odd)
            return logs, state

        model.train_function = train_function

    model.make_train_function = make_train_function
    model.train_function = None
    return True


def _all_layers(model) -> list:
    """Every layer of a model, those of nested models (a keras.applications backbone) included."""
    out = []
    for layer in getattr(model, "layers", []):
        out.append(layer)
        out += _all_layers(layer)
    return out
