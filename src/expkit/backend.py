"""Every call specific to one Keras backend lives here, one class per backend.

The rest of expkit speaks Keras only. Which backend Keras runs on is fixed when Keras is imported,
so `activate(name)` sets KERAS_BACKEND (and the variables a backend reads when it starts: devices,
determinism) before anything imports Keras. After that, devices, threads, determinism, compiled steps
and versions go through `current()`, which answers for the backend Keras runs on.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import sys

from .errors import ConfigError

BACKEND_NAMES = ("tensorflow", "jax", "torch")
# pip extras that install each backend's library next to expkit
INSTALL_HINT = {"tensorflow": "pip install tensorflow", "jax": "pip install 'expkit[jax]'",
                "torch": "pip install 'expkit[torch]'"}

# On a small CPU-only machine every op's own thread pool already covers all cores: running independent
# ops side by side oversubscribes them (see docs/performance.md).
SMALL_CPU_CORES = 4


COMPILE_CACHE_BYTES = 2 * 1024**3  # the persistent XLA cache's size on disk (JAX evicts the oldest)


def resolve_inter_op_threads(setting, cpu_count: int | None, has_gpu: bool) -> int:
    """The inter-op thread count for `train.inter_op_threads` (0 keeps the backend's default)."""
    if setting != "auto":
        return setting
    return 1 if not has_gpu and (cpu_count or 0) <= SMALL_CPU_CORES else 0


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


def installed(module: str) -> bool:
    return module in sys.modules or importlib.util.find_spec(module) is not None


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


def import_quietly(module: str | None = None) -> None:
    """Import a backend's library with its C++ start-up chatter (CUDA probing, CPU flags) held back.

    `module` defaults to the library of the backend Keras will run on. Some of those lines are printed
    before TF_CPP_MIN_LOG_LEVEL is read, so file descriptor 2 is pointed at a temporary file during the
    import; if the import fails, what it printed is replayed.
    """
    import tempfile

    if module is None:
        module = BACKENDS.get(loaded_backend() or os.environ.get("KERAS_BACKEND", ""), TensorFlow).module
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


# --- one class per backend ---------------------------------------------------------------------------


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


class Torch(Backend):
    """The PyTorch backend: one step per call (Keras' torch trainer has no steps_per_execution)."""

    name = "torch"
    module = "torch"

    @classmethod
    def before_start(cls, device: str, deterministic: bool) -> None:
        if device == "cpu":
            os.environ["KERAS_TORCH_DEVICE"] = "cpu"  # Keras reads it once, when it is imported
        if deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS' deterministic workspace

    def gpus(self) -> list:
        import torch

        if not torch.cuda.is_available():
            return []
        return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]

    def select_device(self, device: str) -> str:
        from keras.src.backend.torch import core

        gpus = self.gpus()
        if device == "gpu" and not gpus:
            raise ConfigError("--device gpu: PyTorch sees no GPU on this machine (torch.cuda.is_available() is "
                              "False; is the CUDA build of torch installed?); use --device cpu or auto")
        in_use = str(core.get_device()) if hasattr(core, "get_device") else str(core.DEFAULT_DEVICE)
        wanted_cpu = device == "cpu" or not gpus
        if wanted_cpu != in_use.startswith("cpu"):
            raise ConfigError(f"--device {device}: Keras was imported in this process with torch device "
                              f"'{in_use}', and it chooses once; start a new process (the expkit command sets "
                              "KERAS_TORCH_DEVICE first)")
        return f"CPU ({cpu_model_name()})" if wanted_cpu else f"GPU ({gpus[0]})"

    def set_inter_op_threads(self, setting) -> int:
        import torch

        threads = resolve_inter_op_threads(setting, os.cpu_count(), bool(self.gpus()))
        if threads:
            try:
                torch.set_num_interop_threads(threads)
            except RuntimeError:  # parallel work already started in this process: keep what is set
                pass
        return torch.get_num_interop_threads()

    def check_config(self, cfg) -> None:
        super().check_config(cfg)
        self.steps_per_execution(cfg.train.steps_per_execution, 1)

    def steps_per_execution(self, requested, auto_value: int) -> int:
        if requested != "auto" and requested > 1:
            raise ConfigError(f"Keras' PyTorch backend runs one training step per call, found {requested}; use 1 "
                              "or auto", path=("train", "steps_per_execution"))
        return 1

    def set_determinism(self, deterministic: bool) -> None:
        import torch

        if deterministic:
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False


BACKENDS = {"tensorflow": TensorFlow, "jax": Jax, "torch": Torch}


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

    from . import __version__

    return {"python": platform.python_version(), **current().versions(), "keras": keras.__version__,
            "expkit": __version__}


# --- a worker process's share of the machine (parallel sweeps: expkit.workers, expkit.ray_executor) ---
# Thread pools and GPU memory are sized when a backend starts, so a worker sets these first.

# Of a trial's GPU share, the part its backend may allocate; the rest is left for the CUDA context
# (a few hundred MB) that every process on the GPU also holds.
GPU_MEMORY_HEADROOM = 0.9


def share_env(threads: int | None = None, gpu_fraction: float | None = None, environ=None) -> dict[str, str]:
    """Environment variables that hold a worker process to `threads` threads per op and, below one
    whole GPU, to `gpu_fraction` of its memory, on TensorFlow, JAX and PyTorch alike. They must be in
    the environment before the backend is imported; TensorFlow's and PyTorch's memory caps are then
    applied by `cap_gpu_memory`."""
    environ = os.environ if environ is None else environ
    env: dict[str, str] = {}
    if threads:
        n = str(int(threads))
        env.update(OMP_NUM_THREADS=n, MKL_NUM_THREADS=n, OPENBLAS_NUM_THREADS=n,  # PyTorch, numpy's BLAS
                   TF_NUM_INTRAOP_THREADS=n)  # TensorFlow: each op's own thread pool
        if int(threads) == 1:  # XLA on a CPU (JAX): one thread per op; XLA has no knob for another count
            flags = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
            env["XLA_FLAGS"] = f"{environ.get('XLA_FLAGS', '')} {flags}".strip()
    if gpu_fraction is not None and 0 < gpu_fraction < 1:
        share = f"{gpu_fraction * GPU_MEMORY_HEADROOM:.3f}"
        env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = share  # JAX: the allocator's limit, read when JAX starts
        env["EXPKIT_GPU_MEMORY_FRACTION"] = share      # cap_gpu_memory: TensorFlow, PyTorch
    return env


def cap_gpu_memory(backend_name: str, fraction: float | None = None) -> str | None:
    """Cap this process's memory on each visible GPU to `fraction` of it (default: what share_env
    set), after the backend is imported and before it touches a device. Returns what was done."""
    if fraction is None:
        fraction = float(os.environ.get("EXPKIT_GPU_MEMORY_FRACTION") or 0) or None
    if fraction is None:
        return None
    if backend_name == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if not gpus:
            return None
        totals = _gpu_memory_mb()
        if len(totals) < len(gpus):
            print("expkit: cannot read the GPUs' memory size (nvidia-smi); this trial's GPU memory is not capped",
                  file=sys.stderr)
            return None
        try:
            for gpu, total in zip(gpus, totals):
                tf.config.set_logical_device_configuration(
                    gpu, [tf.config.LogicalDeviceConfiguration(memory_limit=int(total * fraction))])
        except RuntimeError:  # devices already started in this process (a reused worker): capped before
            return None
        return f"TensorFlow: {int(totals[0] * fraction)} MB per GPU"
    if backend_name == "torch":
        import torch

        for i in range(torch.cuda.device_count()):
            torch.cuda.set_per_process_memory_fraction(fraction, i)
        return f"PyTorch: {fraction:.3f} of each GPU"
    return f"{backend_name}: XLA_PYTHON_CLIENT_MEM_FRACTION={os.environ.get('XLA_PYTHON_CLIENT_MEM_FRACTION')}"


def _gpu_memory_mb() -> list[int]:
    """Total memory (MB) of each GPU this process sees, in CUDA_VISIBLE_DEVICES order (nvidia-smi)."""
    import subprocess

    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index,uuid,memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    rows = [[cell.strip() for cell in line.split(",")] for line in out.splitlines() if line.count(",") == 2]
    by_key = {key: int(float(total)) for index, uuid, total in rows for key in (index, uuid)}
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return [int(float(total)) for _, _, total in rows]
    return [by_key[v.strip()] for v in visible.split(",") if v.strip() in by_key]
