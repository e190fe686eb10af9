"""Seeds, device, compile, fit, evaluate. No YAML parsing and no reporting here."""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

from .config import ExperimentConfig
from .errors import ConfigError
from .registry import did_you_mean
from .stopping import check as check_stop

KNOWN_OPTIMIZERS = ["sgd", "adam", "adamw", "rmsprop", "adagrad", "adadelta", "adamax", "nadam", "ftrl", "lion", "lamb", "adafactor"]

# Work per compiled call that amortises Keras' per-step overhead (multiply-accumulates, forward and
# backward). 4e10 is about half a second of training on this 2-core CPU: the dense baseline gets the
# cap, the seed's CNNs 16 to 32. Measured with benchmarks/bench_speed.py: see docs/performance.md.
# The same count serves every backend: TensorFlow loops inside one tf.function, JAX inside one XLA
# program (backend.fuse_jax_train_steps); Keras' PyTorch trainer takes one step per call, so `auto` is 1 there.
TARGET_MACS_PER_EXECUTION = 4e10
MAX_STEPS_PER_EXECUTION = 64
# Evaluation runs forward only; below this batch size Keras' per-batch overhead dominates it.
MIN_EVAL_BATCH_SIZE = 256


def make_optimizer(cfg: ExperimentConfig, steps_per_epoch: int):
    import keras

    spec = cfg.train.optimizer
    name, kwargs = (spec, {}) if isinstance(spec, str) else (spec["name"], {k: v for k, v in spec.items() if k != "name"})
    path = ("train", "optimizer") if isinstance(spec, str) else ("train", "optimizer", "name")
    if "learning_rate" in kwargs:
        raise ConfigError("set the rate with train.learning_rate, not inside the optimizer", path=("train", "optimizer", "learning_rate"))
    kwargs["learning_rate"] = learning_rate_value(cfg, steps_per_epoch)
    try:
        return keras.optimizers.get({"class_name": name, "config": kwargs})
    except (ValueError, TypeError) as exc:
        if name.lower() not in KNOWN_OPTIMIZERS and not hasattr(keras.optimizers, name):
            raise ConfigError(f"unknown optimizer '{name}'{did_you_mean(name.lower(), KNOWN_OPTIMIZERS)}", path=path) from None
        raise ConfigError(f"Keras rejected the optimizer: {str(exc).splitlines()[0]}", path=("train", "optimizer")) from None


def learning_rate_value(cfg: ExperimentConfig, steps_per_epoch: int):
    """A float, or a per-step Keras schedule for the schedules that live in the optimizer."""
    import keras

    lr, sched = cfg.train.learning_rate, cfg.train.schedule
    if sched is None or sched.type in ("step", "plateau"):
        return lr
    decay_steps = max(1, int(round(sched.decay_epochs * steps_per_epoch)))
    if sched.type == "exponential":
        return keras.optimizers.schedules.ExponentialDecay(lr, decay_steps, sched.decay_rate, staircase=sched.staircase)
    total = max(1, cfg.train.epochs * steps_per_epoch)
    return keras.optimizers.schedules.CosineDecay(lr, total, alpha=sched.min_lr / lr)


def check_loss(name: str) -> None:
    import keras

    from .usercode import is_reference, keras_object

    if is_reference(name):  # the user's own: a missing module or attribute is named here
        keras_object(name, ("train", "loss"))
        return
    try:
        keras.losses.get(name)
    except (ValueError, TypeError):
        known = [n for n in dir(keras.losses) if n.islower() and not n.startswith("_")]
        raise ConfigError(f"unknown loss '{name}'{did_you_mean(name, known)}", path=("train", "loss")) from None


def model_macs_per_sample(model) -> float:
    """Multiply-accumulates of one forward pass: dense kernels once, conv kernels once per output position."""
    import numpy as np

    macs = 0.0
    for layer in model.layers:
        kernel = getattr(layer, "kernel", None)
        if kernel is None:
            continue
        size = float(np.prod(kernel.shape))
        out = layer.output.shape
        positions = float(np.prod(out[1:-1])) if len(out) > 2 else 1.0
        macs += size * positions
    return macs


def auto_steps_per_execution(model, batch_size: int, steps_per_epoch: int) -> int:
    """Batches per compiled call: enough to hide per-step overhead, never more than an epoch."""
    step_macs = 3.0 * model_macs_per_sample(model) * batch_size  # forward + backward
    wanted = int(TARGET_MACS_PER_EXECUTION // max(step_macs, 1.0))
    return max(1, min(wanted, MAX_STEPS_PER_EXECUTION, steps_per_epoch))


@dataclass
class TrainResult:
    history: list[dict] = field(default_factory=list)  # one row per epoch, metrics.csv's rows
    fit_seconds: float = 0.0
    test: dict | None = None
    diverged: bool = False
    stopped_early: bool = False
    pruned: bool = False  # the sweep's pruner stopped it after an epoch (on_epoch set it)
    steps_per_execution: int = 1
    eval_batch_size: int = 0
    jit_compile: bool = False
    started: float = 0.0  # perf_counter at the start of fit
    previous_seconds: float = 0.0  # fit seconds of the epochs a resumed run finished before
    confusion: object = None  # the test set's confusion matrix (numpy counts), for a classifier
    classes: list = field(default_factory=list)  # its rows' class names
    class_weight: dict | None = None  # {class name: weight}, train.class_weight resolved
    sample_weight: dict | None = None  # what data.options.sample_weight weighted the training examples with


def test_confusion(model, dataset, batch_size: int, result: TrainResult) -> None:
    """The test set's confusion matrix into `result`, when the model's outputs are per-class scores
    (a classifier): one more forward pass over the test set (its cost: README.md, "What a run writes")."""
    from .runfolder.confusion import class_indexes, confusion_matrix, predicted_classes

    k = dataset.num_classes
    if dataset.x_test is None or not len(dataset.x_test) or k < 2:
        return
    true = class_indexes(dataset.y_test)
    if true.min() < 0 or true.max() >= k:  # labels that are not class indexes (a regression target)
        return
    predicted = predicted_classes(model.predict(dataset.x_test, batch_size=batch_size, verbose=0), k)
    if predicted is not None:
        result.confusion, result.classes = confusion_matrix(true, predicted, k), [str(c) for c in dataset.classes]


def epoch_order(seed: int, epoch: int, n: int):
    """The order in which epoch `epoch` (0-based) visits the n training examples when Keras shuffles
    arrays on JAX: the EpochOrder callback below fixes it. The vectorised sweep trainer uses it too."""
    import numpy as np

    return np.random.RandomState([seed, epoch]).permutation(n)


def make_callbacks(cfg: ExperimentConfig, result: TrainResult, on_epoch: Callable[[list[dict]], None] | None):
    import keras
    import numpy as np

    class EpochOrder(keras.callbacks.Callback):
        """On JAX, Keras draws each epoch's shuffle, np.random.permutation(n), from NumPy's global generator
        at the epoch's first batch; seeding it here makes that draw epoch_order(seed, epoch, n), whatever
        drew before (Keras' own build pass draws once). TensorFlow shuffles inside tf.data, unaffected."""

        def on_epoch_begin(self, epoch, logs=None):
            np.random.seed([cfg.seed, epoch])

    def current_rate(model) -> float:
        return float(np.asarray(keras.ops.convert_to_numpy(model.optimizer.learning_rate)))

    class Recorder(keras.callbacks.Callback):
        """Per-epoch rows with time and the rate the epoch trained with; stops when the loss turns NaN.

        It comes after the schedule callbacks, so at an epoch's start it reads the rate they set."""

        def on_epoch_begin(self, epoch, logs=None):
            self._start = time.perf_counter()
            self._rate = current_rate(self.model)

        def on_train_batch_end(self, batch, logs=None):
            check_stop()  # a stop (SIGTERM, Ctrl-C) whose first raise a finalizer swallowed
            loss = (logs or {}).get("loss")
            if loss is not None and not math.isfinite(float(loss)):
                result.diverged = True
                self.model.stop_training = True

        def on_epoch_end(self, epoch, logs=None):
            logs = dict(logs or {})
            row = {"epoch": epoch + 1}
            for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
                row[key] = float(logs.pop(key, float("nan")))
            row["learning_rate"] = self._rate
            row["epoch_seconds"] = round(time.perf_counter() - self._start, 4)
            for key in sorted(logs):
                if key != "learning_rate":
                    row[key] = float(logs[key])
            if not math.isfinite(row["loss"]):
                result.diverged = True
                self.model.stop_training = True
            result.history.append(row)
            result.fit_seconds = result.previous_seconds + time.perf_counter() - result.started
            if on_epoch is not None:
                on_epoch(result.history)
            if result.pruned:
                self.model.stop_training = True

    callbacks = []
    sched, es = cfg.train.schedule, cfg.train.early_stopping
    if sched is not None and sched.type == "step":
        lr0 = cfg.train.learning_rate
        callbacks.append(keras.callbacks.LearningRateScheduler(
            lambda epoch: lr0 * sched.factor ** (epoch // sched.step_epochs)))
    if sched is not None and sched.type == "plateau":
        callbacks.append(keras.callbacks.ReduceLROnPlateau(
            monitor=sched.monitor, factor=sched.factor, patience=sched.patience, min_lr=sched.min_lr))
    if es is not None:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor=es.monitor, patience=es.patience, min_delta=es.min_delta, mode=es.mode,
            restore_best_weights=es.restore_best_weights))
    # the user's after expkit's, before the Recorder: it reads the rate they set for the epoch
    return [EpochOrder(), *callbacks, *user_callbacks(cfg), Recorder()]


def user_callbacks(cfg: ExperimentConfig) -> list:
    """train.callbacks as Keras callbacks: a name in keras.callbacks or a "module:attribute" of the user's,
    called with the config's arguments. Each is marked, so checkpoints leave its state to it."""
    import keras

    from .usercode import is_reference, resolve

    known = sorted(n for n in dir(keras.callbacks) if isinstance(getattr(keras.callbacks, n), type)
                   and issubclass(getattr(keras.callbacks, n), keras.callbacks.Callback))
    out = []
    for i, spec in enumerate(cfg.train.callbacks):
        (name, args), = spec.items()
        path = ("train", "callbacks", i, name)
        if is_reference(name):
            cls = resolve(name, path)
        elif name in known:
            cls = getattr(keras.callbacks, name)
        else:
            raise ConfigError(f"unknown callback '{name}'{did_you_mean(name, known)} (a name in keras.callbacks, "
                              "or \"module:attribute\" for your own)", path=path)
        try:
            callback = cls(**(args or {}))
        except Exception as exc:  # TypeError for a wrong argument, ValueError from the callback's own checks
            raise ConfigError(f"{name} rejected its arguments: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                              path=path) from None
        if not isinstance(callback, keras.callbacks.Callback):
            raise ConfigError(f"{name} made a {type(callback).__name__}, not a keras.callbacks.Callback", path=path)
        callback._expkit_user = True
        callback._expkit_entry = (i, name)  # its place in train.callbacks: its checkpoint key, its name in warnings
        out.append(callback)
    return out


def class_weights(cfg: ExperimentConfig, dataset) -> dict[int, float] | None:
    """train.class_weight as Keras' {class index: weight}, every class listed (unnamed ones weigh 1).
    balanced: n / (k * count of the class) over the training labels, scikit-learn's definition."""
    import numpy as np

    from .runfolder.confusion import class_indexes

    spec = cfg.train.class_weight
    if spec is None:
        return None
    k = dataset.num_classes
    if spec == "balanced":
        counts = np.bincount(class_indexes(dataset.y_train), minlength=k)
        n = float(counts.sum())
        return {i: (n / (k * float(c)) if c else 1.0) for i, c in enumerate(counts)}
    names = [str(c) for c in dataset.classes]
    weights = {i: 1.0 for i in range(k)}
    for key, weight in spec.items():
        if str(key) in names:
            index = names.index(str(key))
        elif isinstance(key, int) or str(key).isdigit():
            index = int(key)
            if not 0 <= index < k:
                raise ConfigError(f"class index {index} is out of range: the data has {k} classes (0..{k - 1})",
                                  path=("train", "class_weight", key))
        else:
            raise ConfigError(f"no class named '{key}'{did_you_mean(str(key), names)} (classes: {', '.join(names)})",
                              path=("train", "class_weight", key))
        weights[index] = float(weight)
    return weights


def example_weights(cfg: ExperimentConfig, dataset, weights: dict[int, float] | None):
    """The per-example training weights Keras' fit gets: the data's (data.options.sample_weight), times the
    class weight of each example's class when train.class_weight is set too (Keras takes only one of the
    two, so they are multiplied here, as Keras 2 did); None without data weights."""
    import numpy as np

    from .runfolder.confusion import class_indexes

    w = getattr(dataset, "w_train", None)
    if w is None:
        return None
    if resolve_input_pipeline(cfg) == "tf_data":
        raise ConfigError("the tf_data input pipeline does not carry per-example weights; "
                          "use train.input_pipeline: arrays (the default)", path="data.options.sample_weight")
    if weights is None:
        return w
    table = np.asarray([weights[i] for i in range(len(weights))], dtype=np.float32)
    return w * table[class_indexes(dataset.y_train)]


def weight_summary(cfg: ExperimentConfig, w) -> dict:
    """results.json's record of the data's example weights: where they came from and what they hold."""
    import hashlib

    import numpy as np

    w = np.ascontiguousarray(w, dtype=np.float32)
    return {"from": str(cfg.data.options.get("sample_weight")), "examples": int(len(w)),
            "min": round(float(w.min()), 6), "max": round(float(w.max()), 6), "mean": round(float(w.mean()), 6),
            "zero": int((w == 0).sum()), "sha256": hashlib.sha256(w.tobytes()).hexdigest()}


def _test_each_epoch(x_test, y_test, batch_size: int):
    """train.test_each_epoch: test_<metric> in the epoch's logs, so the Recorder writes them to metrics.csv."""
    import keras

    class TestEachEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if logs is None:
                return
            scores = self.model.evaluate(x_test, y_test, batch_size=batch_size, verbose=0, return_dict=True)
            logs.update({f"test_{k}": float(v) for k, v in scores.items()})

    return TestEachEpoch()


def eval_batch_size(cfg: ExperimentConfig, sizes=()) -> int:
    """Validation/test batch size: the metrics are per-example means, so the batch size does not change them.

    `auto` is max(batch size, 256), or, given the evaluated sets' sizes, the smallest size from there up
    to 4 times it that divides them all: every evaluation batch then has one shape, so the test step is
    compiled (JAX) or traced (TensorFlow) once instead of once more for a ragged last batch."""
    v = cfg.train.validation_batch_size
    if v != "auto":
        return v
    low = max(cfg.train.batch_size, MIN_EVAL_BATCH_SIZE)
    common = math.gcd(*(int(n) for n in sizes if n)) if any(sizes) else 0
    return next((b for b in range(low, 4 * low + 1) if common % b == 0), low) if common >= low else low


def resolve_input_pipeline(cfg: ExperimentConfig) -> str:
    # Measured (docs/performance.md): for in-memory arrays the array adapter is as fast as a cached
    # tf.data pipeline here, so `auto` keeps the plain path (on every backend, TensorFlow installed or
    # not); tf_data stays available where TensorFlow is installed.
    return "arrays" if cfg.train.input_pipeline == "auto" else cfg.train.input_pipeline


def train(cfg: ExperimentConfig, dataset, model, *, on_epoch=None, result: TrainResult | None = None,
          checkpoint_dir=None, resume=None) -> TrainResult:
    """Compile and fit `model` on `dataset`, then evaluate on its test split.

    `result` is filled as training goes (history and fit time after every epoch), so a caller that
    is interrupted still holds what was finished. With `checkpoint_dir`, a checkpoint is written
    there after every epoch; `resume` (an expkit.checkpoint.Checkpoint) continues from one."""
    from .backend import current

    n_train = len(dataset.x_train)
    steps_per_epoch = max(1, math.ceil(n_train / cfg.train.batch_size))
    result = result if result is not None else TrainResult()
    backend = current()
    spe = cfg.train.steps_per_execution
    auto_spe = auto_steps_per_execution(model, cfg.train.batch_size, steps_per_epoch) if spe == "auto" else 1
    result.steps_per_execution = backend.steps_per_execution(spe, auto_spe)
    jit = cfg.train.jit_compile
    from .usercode import keras_object

    model.compile(
        optimizer=make_optimizer(cfg, steps_per_epoch),
        loss=keras_object(cfg.train.loss, ("train", "loss")),  # a Keras name, or the user's "module:attribute"
        metrics=[keras_object(m, ("train", "metrics", i)) for i, m in enumerate(cfg.train.metrics)],
        steps_per_execution=result.steps_per_execution,
        jit_compile=jit,
    )
    result.jit_compile = bool(getattr(model, "jit_compile", False))
    backend.prepare_compiled(model, result.steps_per_execution)
    has_val = len(dataset.x_val) > 0
    verbose = cfg.train.verbose if cfg.train.verbose != "auto" else (1 if sys.stdout.isatty() else 2)
    callbacks = make_callbacks(cfg, result, on_epoch)
    n_test = len(dataset.x_test) if dataset.x_test is not None else 0
    eval_batch = result.eval_batch_size = eval_batch_size(cfg, (len(dataset.x_val), n_test))
    if cfg.train.test_each_epoch and dataset.x_test is not None and len(dataset.x_test):
        callbacks.insert(0, _test_each_epoch(dataset.x_test, dataset.y_test, eval_batch))  # before the Recorder
    initial_epoch, epochs = 0, cfg.train.epochs
    if checkpoint_dir is not None or resume is not None:
        from .checkpoint import checkpoint_callback, restore

        callbacks.append(checkpoint_callback(checkpoint_dir, result, callbacks, resume))
        if resume is not None:
            from .checkpoint import stateless_user_callbacks

            for where in stateless_user_callbacks(callbacks):
                print(f"expkit: warning: {where} starts afresh: a checkpoint carries the state of a callback of "
                      "one's own only through its get_state() and set_state(state) methods", file=sys.stderr)
            restore(model, resume)
            result.history = [dict(row) for row in resume.state["history"]]
            result.previous_seconds = float(resume.state.get("fit_seconds") or 0.0)
            initial_epoch = resume.epoch
            epochs = initial_epoch if resume.state.get("stopping") else epochs  # it had stopped early
    fit_kwargs = dict(epochs=epochs, initial_epoch=initial_epoch, verbose=verbose, callbacks=callbacks)
    weights = class_weights(cfg, dataset)
    if weights is not None:
        result.class_weight = {str(dataset.classes[i]): round(w, 6) for i, w in weights.items()}
    per_example = example_weights(cfg, dataset, weights)
    if per_example is not None:
        fit_kwargs["sample_weight"] = per_example
        result.sample_weight = weight_summary(cfg, dataset.w_train)
    elif weights is not None:
        fit_kwargs["class_weight"] = weights
    if resolve_input_pipeline(cfg) == "tf_data":
        pipeline = backend.input_pipeline
        train_data = pipeline(dataset.x_train, dataset.y_train, cfg.train.batch_size, cfg.train.shuffle, cfg.seed)
        if initial_epoch and cfg.train.shuffle:
            print("expkit: note: tf_data reshuffles from a generator that a new process starts afresh: the resumed "
                  "epochs see other example orders than an uninterrupted run would (arrays, the default, resume "
                  "exactly)", file=sys.stderr)
        val_data = pipeline(dataset.x_val, dataset.y_val, eval_batch, False, cfg.seed) if has_val else None
        fit_args = (train_data,)
    else:
        fit_args = (dataset.x_train, dataset.y_train)
        fit_kwargs.update(batch_size=cfg.train.batch_size, shuffle=cfg.train.shuffle, validation_batch_size=eval_batch)
        val_data = (dataset.x_val, dataset.y_val) if has_val else None
    result.started = time.perf_counter()
    model.fit(*fit_args, validation_data=val_data, **fit_kwargs)
    result.fit_seconds = result.previous_seconds + time.perf_counter() - result.started
    if cfg.train.early_stopping is not None and not (result.diverged or result.pruned):
        result.stopped_early = len(result.history) < cfg.train.epochs
    if dataset.x_test is not None and len(dataset.x_test) and not result.diverged:
        scores = model.evaluate(dataset.x_test, dataset.y_test, batch_size=eval_batch, verbose=0, return_dict=True)
        result.test = {k: float(v) for k, v in scores.items()}
        test_confusion(model, dataset, eval_batch, result)
    elif result.diverged:
        result.test = {"loss": float("nan"), **{m: float("nan") for m in cfg.train.metrics}}
    return result
