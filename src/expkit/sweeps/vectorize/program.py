"""One compiled JAX program for a group of trials: Keras' own train and test steps, vmapped over the
trials and scanned over an epoch's batches.

Each trial keeps its own state (weights, optimizer slots with its learning rate, metric totals, the
dropout layers' random state), stacked along a leading trial axis. The numbers that differ between
trials but are plain Python attributes of Keras objects (a dropout rate, an L2 factor, Adam's beta_1)
become per-trial inputs: while the program is traced, each such attribute holds a `Knob`, which
computes with that trial's value and answers Keras' Python branches (`if self.rate > 0`) when every
trial takes the same branch. What cannot be expressed that way raises NotVectorizable while tracing,
before any run folder is written, and the group's trials run one at a time.
"""

from __future__ import annotations

import contextlib
import operator
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# Objects held by layers and optimizers whose numbers act during training (initialisers and seed
# generators act only when weights are built: each trial's are built with its own).
_HELPERS = ("Regularizer", "Constraint", "LearningRateSchedule")


class NotVectorizable(Exception):
    """This group cannot train as one program (the message says why); its trials run one at a time."""


class Knob:
    """A number that differs between the group's trials, standing in for a Keras attribute while the
    program is traced: arithmetic uses this trial's value, comparisons must agree for every trial."""

    def __init__(self, value, values: list, name: str):
        self.value, self.values, self.name = value, values, name

    def _agree(self, op, other):
        if isinstance(other, Knob):
            raise NotVectorizable(f"{self.name}: Keras compares it with another per-trial number")
        answers = {bool(op(v, other)) for v in self.values}
        if len(answers) > 1:
            raise NotVectorizable(f"{self.name}: Keras branches on it, and the trials' values "
                                  f"{self.values} take different branches")
        return answers.pop()

    def __bool__(self):
        return self._agree(lambda v, _: bool(v), None)

    def __eq__(self, other):
        return self._agree(operator.eq, other)

    def __ne__(self, other):
        return self._agree(operator.ne, other)

    def __lt__(self, other):
        return self._agree(operator.lt, other)

    def __le__(self, other):
        return self._agree(operator.le, other)

    def __gt__(self, other):
        return self._agree(operator.gt, other)

    def __ge__(self, other):
        return self._agree(operator.ge, other)

    __hash__ = object.__hash__

    def __jax_array__(self):
        return self.value

    def __float__(self):
        raise NotVectorizable(f"{self.name}: Keras needs it as one Python number")

    __int__ = __index__ = __float__

    def __neg__(self):
        return -self.value

    def __abs__(self):
        return abs(self.value)

    def __repr__(self) -> str:
        return f"Knob({self.name}={self.values})"


def _binary(op):
    def forward(self, other):
        return op(self.value, other.value if isinstance(other, Knob) else other)

    def reverse(self, other):
        return op(other, self.value)

    return forward, reverse


for _name, _op in [("add", operator.add), ("sub", operator.sub), ("mul", operator.mul),
                   ("truediv", operator.truediv), ("floordiv", operator.floordiv), ("pow", operator.pow),
                   ("mod", operator.mod)]:
    _fwd, _rev = _binary(_op)
    setattr(Knob, f"__{_name}__", _fwd)
    setattr(Knob, f"__r{_name}__", _rev)


@dataclass
class KnobSite:
    owner: object          # the template trial's layer, optimizer or helper object
    attr: str
    values: list           # one per trial
    name: str              # for messages: layer.attr


def _number(v) -> bool:
    return isinstance(v, (int, float, np.number)) and not isinstance(v, (bool, np.bool_))


def _walk(obj, same: list, name: str, sites: list, depth: int = 0) -> None:
    for attr, value in vars(obj).items():
        others = [vars(o).get(attr) for o in same]
        if _number(value):
            if any(not _number(v) for v in others):
                raise NotVectorizable(f"{name}.{attr}: a number in one trial, not in another")
            values = [v.item() if isinstance(v, np.generic) else v for v in others]
            if any(v != values[0] for v in values):
                sites.append(KnobSite(obj, attr, values, f"{name}.{attr}"))
        elif isinstance(value, tuple) and not attr.startswith("_") and all(_number(v) for v in value):
            if any(v != value for v in others):
                raise NotVectorizable(f"{name}.{attr}: {value} differs between trials and is not one number")
        elif depth < 2 and any(c.__name__ in _HELPERS for c in type(value).__mro__):
            if any(type(v) is not type(value) for v in others):
                raise NotVectorizable(f"{name}.{attr}: a different kind of {type(value).__name__} between trials")
            _walk(value, others, f"{name}.{attr}", sites, depth + 1)


def find_knobs(models: list) -> list[KnobSite]:
    """The attributes of layers, optimizer and their regularisers, constraints and schedules whose
    numbers differ between the trials' built models (the first is the template)."""
    sites: list[KnobSite] = []
    layers = [list(m._flatten_layers(include_self=False)) for m in models]
    for i, layer in enumerate(layers[0]):
        same = [ls[i] for ls in layers]
        if any(type(o) is not type(layer) for o in same):
            raise NotVectorizable(f"layer {i}: {type(layer).__name__} in one trial, another class in the next")
        _walk(layer, same, layer.name, sites)
    _walk(models[0].optimizer, [m.optimizer for m in models], "optimizer", sites)
    return sites


def _select(mask, new, old):
    return jnp.where(mask.reshape(mask.shape + (1,) * (new.ndim - 1)), new, old)


COMPILE_LOCKS = 64  # lock files in the compilation cache's folder, a program's by the hash of its text


@contextlib.contextmanager
def _compiling_alone(lowered: list):
    """Hold a lock that every process about to compile the same programs takes, when JAX keeps a
    persistent compilation cache: the processes a group is split over compile identical programs (equal
    shares of its trials), and side by side on the 2-core CPU each took 1.7 s; one at a time, the first
    compiles on every core and writes the cache, the others then load the programs from it."""
    import hashlib
    import os

    folder = jax.config.jax_compilation_cache_dir
    try:
        from filelock import FileLock
    except ImportError:
        folder = None
    if not folder or not lowered:
        yield
        return
    digest = hashlib.sha256("".join(low.as_text() for low in lowered).encode()).digest()
    os.makedirs(folder, exist_ok=True)
    lock = FileLock(os.path.join(folder, f"expkit-compile-{digest[0] % COMPILE_LOCKS}.lock"))
    with lock:
        yield


class Program:
    """The group's compiled functions around a template model (the first trial's, compiled).

    `train` runs steps for every trial (scanned over batches), `evaluate` the test step over an
    evaluation set. Each is compiled once per argument shape, ahead of time in `compile` where the
    shapes are known: XLA compiles without holding the GIL, so two threads halve the wait, and the
    small programs (the last, shorter batch; evaluation) may skip XLA's slower passes. Without `scan`
    (a model that convolves, on a CPU) each batch is one compiled call instead of a step of a loop."""

    def __init__(self, model, sites: list[KnobSite], *, scan: bool = True):
        self.model = model
        self.sites = sites
        self.scan = scan  # False: one compiled step per batch (XLA's CPU convolutions crawl inside a loop)
        self.knob_values = tuple(jnp.asarray(np.array(s.values, dtype=np.float32 if any(
            isinstance(v, float) for v in s.values) else np.int32)) for s in sites)
        self._jitted = {"train": jax.jit(self._train_run if scan else self._train_step, donate_argnums=(0,)),
                        "eval": jax.jit(self._eval_run if scan else self._eval_step)}
        self._compiled: dict = {}

    @contextlib.contextmanager
    def _knobs(self, values):
        saved = [vars(s.owner)[s.attr] for s in self.sites]
        try:
            for s, v in zip(self.sites, values):
                object.__setattr__(s.owner, s.attr, Knob(v, s.values, s.name))
            yield
        finally:
            for s, old in zip(self.sites, saved):
                object.__setattr__(s.owner, s.attr, old)

    def _train_one(self, state, x, y, knobs):
        with self._knobs(knobs):
            return self.model.train_step(state, (x, y))

    def _test_one(self, state, x, y, knobs):
        with self._knobs(knobs):
            return self.model.test_step(state, (x, y))

    def zero_logs(self, state, x, y) -> tuple[dict, dict]:
        """Zero logs shaped like the train and test steps' (a scan's first carry), from one trace of
        each step without compute: a Keras path that cannot take per-trial numbers fails here, before
        the trials' folders are written."""
        try:
            train = jax.eval_shape(jax.vmap(self._train_one), state, x, y, self.knob_values)[0]
            test = jax.eval_shape(jax.vmap(self._test_one), (state[0], state[1], state[3]), x, y, self.knob_values)[0]
        except NotVectorizable:
            raise
        except Exception as exc:  # Keras code that needs one concrete number fails in many ways
            from ...errors import first_line

            raise NotVectorizable(f"Keras could not trace the group's step ({type(exc).__name__}: "
                                  f"{first_line(exc)})") from None
        return tuple(jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), logs) for logs in (train, test))

    def _train_step(self, carry, active, x_pool, y_pool, pool_index, idx, knobs):
        """One batch for every trial: idx (trials, batch) indexes each trial's training set."""
        state, logs, diverged = carry
        x = x_pool[pool_index[:, None], idx]
        y = y_pool[pool_index[:, None], idx]
        new_logs, new_state = jax.vmap(self._train_one)(state, x, y, knobs)
        update = active & ~diverged
        state = jax.tree_util.tree_map(lambda n, o: _select(update, n, o), new_state, state)
        logs = jax.tree_util.tree_map(lambda n, o: _select(update, n, o), new_logs, logs)
        diverged = diverged | (update & ~jnp.isfinite(new_logs["loss"]))
        return state, logs, diverged

    def _train_run(self, carry, active, x_pool, y_pool, pool_index, batches, knobs):
        def body(carry, idx):
            return self._train_step(carry, active, x_pool, y_pool, pool_index, idx, knobs), None

        return lax.scan(body, carry, batches)[0]

    def _eval_step(self, carry, x_pool, y_pool, pool_index, idx, knobs):
        """One evaluation batch for every trial: idx (batch,) indexes each trial's evaluation set."""
        state, _ = carry
        x = x_pool[pool_index[:, None], idx[None, :]]
        y = y_pool[pool_index[:, None], idx[None, :]]
        new_logs, new_state = jax.vmap(self._test_one)(state, x, y, knobs)
        return new_state, new_logs

    def _eval_run(self, carry, x_pool, y_pool, pool_index, batches, knobs):
        def body(carry, idx):
            return self._eval_step(carry, x_pool, y_pool, pool_index, idx, knobs), None

        return lax.scan(body, carry, batches)[0]

    @staticmethod
    def _key(kind: str, args) -> tuple:
        leaves, tree = jax.tree_util.tree_flatten(args)
        return kind, str(tree), tuple((tuple(a.shape), str(a.dtype)) for a in leaves)

    def compile(self, jobs: list[tuple[str, tuple, bool]]) -> None:
        """Compile ahead of time each (kind, example arguments, full optimisation) of `jobs`."""
        from concurrent.futures import ThreadPoolExecutor

        lowered = []
        for kind, args, optimise in jobs:  # tracing sets the knobs on shared objects: one thread
            args = (*args, self.knob_values)
            key = self._key(kind, args)
            if key not in self._compiled:
                lowered.append((key, self._jitted[kind].lower(*args), optimise))
                self._compiled[key] = None

        def build(item):
            key, low, optimise = item
            self._compiled[key] = low.compile(None if optimise else {"xla_backend_optimization_level": 0})

        with _compiling_alone([low for _, low, _ in lowered]):
            with ThreadPoolExecutor(2) as pool:
                list(pool.map(build, lowered))

    def _call(self, kind: str, *args):
        args = (*args, self.knob_values)
        fn = self._compiled.get(self._key(kind, args))
        return (fn or self._jitted[kind])(*args)

    def _run(self, kind: str, carry, *args, batches):
        """The scan over `batches`, or, without one, a compiled step per batch."""
        if self.scan:
            return self._call(kind, carry, *args, batches)
        for idx in batches:
            carry = self._call(kind, carry, *args, idx)
        return carry

    def args(self, kind: str, carry, *args, batches) -> tuple:
        """The arguments `kind` compiles for, for Program.compile."""
        return (carry, *args, batches if self.scan else batches[0])

    def train(self, state, logs, diverged, active, x_pool, y_pool, pool_index, batches):
        """Run `batches` (steps, trials, batch) for every active trial that has not diverged; a trial
        whose running loss turns non-finite stops updating after that step."""
        return self._run("train", (state, logs, diverged), active, x_pool, y_pool, pool_index, batches=batches)

    def evaluate(self, state, logs, x_pool, y_pool, pool_index, batches):
        """(state, logs) after `batches` (steps, batch) of every trial's evaluation set: the logs hold the
        mean loss and metrics over every batch since the metrics in `state` were zero."""
        return self._run("eval", (state, logs), x_pool, y_pool, pool_index, batches=batches)
