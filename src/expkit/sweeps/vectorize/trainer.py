"""Training one chunk of a vectorised group: the trials' states stacked, epochs driven on the host.

Each trial is built exactly as `runner.run_experiment` builds it (Keras' seed set to the trial's, then
`runner.prepare`), so its initial weights and dropout streams are its own; it visits its training set
in `train.epoch_order` (what the one-at-a-time path does on JAX) and is driven by its own copy of the
callbacks `train` uses: schedules, early stopping with its best weights, the Recorder that writes
metrics.csv rows and stops a trial whose loss turns NaN. Keras callbacks see each trial through a
`TrialView`, a stand-in model holding that trial's slice of the group's state.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

from ...stopping import check as check_stop
from ...train import TrainResult, make_callbacks, epoch_order, eval_batch_size, make_optimizer, test_confusion
from .program import Program, find_knobs

# Dropping pruned lanes recompiles the program for the rest: done when the training it saves (the
# lanes' share of an epoch, times the epochs left) outweighs this many times the compilation it costs;
# otherwise the pruned lanes stay in the program, masked, as early-stopped ones do. $EXPKIT_RECOMPILE_PAYS
# sets it (0: always recompile) in the JAX processes, which inherit the environment.
RECOMPILE_PAYS = float(os.environ.get("EXPKIT_RECOMPILE_PAYS", "1.0"))


@dataclass
class Member:
    """One trial of the chunk, with what the host keeps of it while the group trains."""

    trial: object                  # execute's Trial
    cfg: object                    # the config it trains with (backend jax)
    pool: int                      # index of its dataset in the chunk's data pools
    on_epoch: object = None        # writes metrics.csv and beats the claim after every epoch
    result: TrainResult = field(default_factory=TrainResult)
    schedule: object = None        # the trial's in-optimizer learning-rate schedule, if any
    callbacks: list = field(default_factory=list)
    view: object = None
    active: bool = True            # still training (not stopped early, diverged or taken over)
    lost: str | None = None        # why this process stopped writing the trial (its claim was taken over)
    index: int = 0                 # its place in the group's stacked state
    resume: object = None          # the checkpoint (expkit.checkpoint.Checkpoint) its state was restored from
    on_checkpoint: object = None   # writes its checkpoint after an epoch: on_checkpoint(epoch, trainer)
    start: int = 0                 # the first epoch it trains (a resumed trial's epochs finished before)
    prune: object = None           # sweep.prune: prune(history) after an epoch, True stops it as `pruned`


class TrialView:
    """What Keras callbacks see of one trial: its optimizer's learning rate, its weights, its metrics'
    names and `stop_training`. Reads and writes go to the trial's slice of the group's state."""

    def __init__(self, group: "GroupTrainer", index: int, model):
        self.group, self.index = group, index
        self.stop_training = False
        self.metrics = model.metrics      # for EarlyStopping's mode: auto (metric names and directions)
        self.optimizer = _TrialOptimizer(group, index)

    def get_weights(self) -> list:
        return self.group.weights(self.index)

    def set_weights(self, weights: list) -> None:
        self.group.set_weights(self.index, weights)


class _TrialOptimizer:
    def __init__(self, group: "GroupTrainer", index: int):
        self.group, self.index = group, index

    @property
    def learning_rate(self):
        return self.group.learning_rate(self.index)

    @learning_rate.setter
    def learning_rate(self, value):
        self.group.set_learning_rate(self.index, value)


def build_member_model(cfg, dataset, steps_per_epoch: int):
    """The trial's compiled model, built as the one-at-a-time path builds it (same seed, same order)."""
    import keras

    from ...backend import current
    from ...runner import prepare

    keras.backend.clear_session(free_memory=False)  # fresh layer names, as each one-at-a-time trial has
    keras.utils.set_random_seed(cfg.seed)  # backend.seed_everything, less its TensorFlow import (see worker)
    current().set_determinism(cfg.train.deterministic)
    _, model = prepare(cfg, dataset=dataset)
    from ...usercode import keras_object

    model.compile(optimizer=make_optimizer(cfg, steps_per_epoch), loss=keras_object(cfg.train.loss),
                  metrics=[keras_object(m) for m in cfg.train.metrics], jit_compile=True)
    # Keras' own fit builds the optimizer and the compiled metrics this way before its first step.
    model._symbolic_build(data_batch=(dataset.x_train[:1], dataset.y_train[:1]))
    return model


def state_of(model) -> tuple:
    """A model's training state as Keras' JAX train_step takes it."""
    return ([v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables],
            [v.value for v in model.optimizer.variables], [v.value for v in model.metrics_variables])


def stack(states: list) -> tuple:
    return tuple([jnp.asarray(np.stack([np.asarray(s[part][i]) for s in states])) for i in range(len(states[0][part]))]
                 for part in range(4))


def footprint_bytes(model, batch_size: int, eval_batch: int) -> float:
    """A trial's share of a group's memory: weights, gradients, optimizer slots, the best-weights copy
    and metric totals, plus the activations of a training batch (kept for the backward pass) and of
    an evaluation batch."""
    state = sum(np.prod(v.shape) * 4 for part in state_of(model) for v in part)
    weights = sum(np.prod(v.shape) * 4 for v in model.trainable_variables)
    outputs = 0.0
    for layer in model.layers:
        try:
            outputs += float(np.prod(layer.output.shape[1:])) * 4
        except (AttributeError, TypeError, ValueError):
            pass
    inputs = float(np.prod(model.inputs[0].shape[1:])) * 4
    return float(state + 3 * weights + (3 * outputs + inputs) * batch_size + (outputs + inputs) * eval_batch)


def convolutions_on_cpu(model) -> bool:
    """XLA's CPU backend runs a convolution inside a compiled loop some 30 times slower than alone
    (docs/performance.md): such a model takes one compiled step per batch."""
    return jax.default_backend() == "cpu" and any("Conv" in type(layer).__name__
                                                  for layer in model._flatten_layers(include_self=False))


def _pools(datasets: list, name: str):
    """One array of the chunk's datasets on the device, the dataset first (one copy when there is one)."""
    arrays = [getattr(d, name) for d in datasets]
    return jnp.asarray(arrays[0][None] if len(arrays) == 1 else np.stack(arrays))


def _split(n: int, batch: int) -> list[tuple[int, int, int]]:
    """(start, batches, batch size) of the full batches and of the shorter last one, as Keras batches n."""
    full, rest = divmod(n, batch)
    return [part for part in ((0, full, batch), (full * batch, 1, rest)) if part[1] and part[2]]


class GroupTrainer:
    """Trains the members of one chunk together; fills each member's TrainResult as epochs finish."""

    def __init__(self, members: list[Member], models: list, datasets: list):
        """`datasets`: the chunk's distinct datasets (one per seed, and per fold), of one size, each member's at
        `member.pool`."""
        cfg = members[0].cfg
        self.members = members
        for i, member in enumerate(members):
            member.index = i
        self.pool_index = jnp.asarray([m.pool for m in members], dtype=jnp.int32)
        self.datasets = datasets
        self.template = models[0]
        self.program = Program(self.template, find_knobs(models), scan=not convolutions_on_cpu(self.template))
        self.state = stack([state_of(m) for m in models])
        self.metrics0 = self.state[3]
        self._host, self._host_of = [], None  # _host_state's copy, and the state it copies
        opt = self.template.optimizer
        self.iteration_index = next(i for i, v in enumerate(opt.variables) if v is opt.iterations)
        self.rate_index = next((i for i, v in enumerate(opt.variables) if v.name == "learning_rate"), None)
        for member, model in zip(members, models):
            rate = getattr(model.optimizer, "_learning_rate", None)  # a schedule object when the rate decays per step
            member.schedule = rate if callable(rate) and not hasattr(rate, "assign") else None
        self.x_train, self.y_train = _pools(datasets, "x_train"), _pools(datasets, "y_train")
        self.x_val, self.y_val = _pools(datasets, "x_val"), _pools(datasets, "y_val")
        has_test = datasets[0].x_test is not None and len(datasets[0].x_test) > 0
        self.x_test = _pools(datasets, "x_test") if has_test else None
        self.y_test = _pools(datasets, "y_test") if has_test else None
        self.n_train = len(datasets[0].x_train)
        self.batch = cfg.train.batch_size
        self.eval_batch = eval_batch_size(cfg, (self.x_val.shape[1], 0 if self.x_test is None else self.x_test.shape[1]))
        self.test_each_epoch = cfg.train.test_each_epoch and self.x_test is not None
        first = jnp.zeros((len(members), 1), jnp.int32)
        x0, y0 = self.x_train[self.pool_index[:, None], first], self.y_train[self.pool_index[:, None], first]
        self.train_logs0, self.test_logs0 = self.program.zero_logs(self.state, x0, y0)
        started = time.perf_counter()
        self._compile()
        self.compile_seconds = time.perf_counter() - started
        self.sizes = [len(members)]  # the program's trials, and after each drop (pruning) its new size
        for i, member in enumerate(members):
            member.view = TrialView(self, i, self.template)
            member.callbacks = make_callbacks(member.cfg, member.result,
                                               lambda history, m=member: m.on_epoch and m.on_epoch(history))
            member.result.steps_per_execution = max(1, self.n_train // self.batch)
            member.result.eval_batch_size = self.eval_batch
            member.result.jit_compile = True

    # --- one trial's slice of the state, for its callbacks --------------------------------------------

    def weights(self, i: int) -> list:
        return [np.asarray(a[i]) for a in (*self.state[0], *self.state[1])]

    def set_weights(self, i: int, weights: list) -> None:
        arrays = [a.at[i].set(w) for a, w in zip((*self.state[0], *self.state[1]), weights)]
        n = len(self.state[0])
        self.state = (arrays[:n], arrays[n:], self.state[2], self.state[3])

    def learning_rate(self, i: int) -> float:
        schedule = self.members[i].schedule
        if schedule is not None:
            return float(schedule(int(self.state[2][self.iteration_index][i])))
        return float(self.state[2][self.rate_index][i])

    def set_learning_rate(self, i: int, value) -> None:
        if self.rate_index is None:
            raise TypeError("this optimizer's learning rate is a schedule; it cannot be set")
        opt = list(self.state[2])
        opt[self.rate_index] = opt[self.rate_index].at[i].set(float(value))
        self.state = (self.state[0], self.state[1], opt, self.state[3])

    def model_of(self, i: int):
        """The template model holding trial i's weights and optimizer state (to save it)."""
        model = self.template
        for variables, arrays in zip((model.trainable_variables, model.non_trainable_variables,
                                      model.optimizer.variables), self._host_state()):
            for v, a in zip(variables, arrays):
                v.assign(a[i])
        return model

    def _host_state(self) -> list:
        """The weights and optimizer state of every trial in host memory, copied once per state: every
        trial's epoch checkpoint then slices NumPy arrays instead of dispatching a device slice per
        variable."""
        if self._host_of is not self.state:
            self._host = [[np.asarray(a) for a in part] for part in self.state[:3]]
            self._host_of = self.state
        return self._host

    # --- the epochs -----------------------------------------------------------------------------------

    def _train_batches(self, epoch: int) -> list:
        """The epoch's batches as (steps, trials, batch) index arrays: the full batches, then the
        shorter last one (two programs: a scan's steps share one shape)."""
        orders = np.stack([epoch_order(m.cfg.seed, epoch, self.n_train) if m.cfg.train.shuffle
                           else np.arange(self.n_train) for m in self.members]).astype(np.int32)
        return [orders[:, start:start + count * size].reshape(len(self.members), count, size).transpose(1, 0, 2)
                for start, count, size in _split(self.n_train, self.batch)]

    def _eval_batches(self, n: int) -> list:
        order = np.arange(n, dtype=np.int32)
        return [order[start:start + count * size].reshape(count, size) for start, count, size in _split(n, self.eval_batch)]

    def _eval_state(self) -> tuple:
        return self.state[0], self.state[1], [jnp.array(a) for a in self.metrics0]

    def _compile(self) -> None:
        """Every program the epochs and the test will run, compiled before the first epoch."""
        def spec(tree):
            return jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype), tree)

        flags = jnp.zeros(len(self.members), bool)
        convolving = not self.program.scan  # then every program is worth XLA's full optimisation
        jobs = [("train", spec(self.program.args("train", (self.state, self.train_logs0, flags), flags, self.x_train,
                                                 self.y_train, self.pool_index, batches=b)), i == 0 or convolving)
                for i, b in enumerate(self._train_batches(0))]
        for x, y in ((self.x_val, self.y_val), (self.x_test, self.y_test)):
            if x is not None and x.shape[1]:
                jobs += [("eval", spec(self.program.args("eval", (self._eval_state(), self.test_logs0), x, y,
                                                         self.pool_index, batches=b)), convolving)
                         for b in self._eval_batches(x.shape[1])]
        self.program.compile(jobs)

    def _evaluate(self, x, y) -> dict:
        state, logs = self._eval_state(), self.test_logs0
        for batches in self._eval_batches(x.shape[1]):
            state, logs = self.program.evaluate(state, logs, x, y, self.pool_index, jnp.asarray(batches))
        return jax.device_get(logs)

    def _resume(self, m: Member, epochs: int) -> None:
        """A member restored from its checkpoint: its rows, its callbacks' state, its first epoch."""
        from ...checkpoint import restore_callbacks, watched_callbacks

        restore_callbacks(watched_callbacks(m.callbacks), m.resume, m.view)
        m.result.history = [dict(row) for row in m.resume.state["history"]]
        m.result.previous_seconds = float(m.resume.state.get("fit_seconds") or 0.0)
        m.start = m.resume.epoch
        m.active = m.start < epochs and not m.resume.state.get("stopping")  # it had stopped early

    def fit(self) -> None:
        """Every epoch for every member until each has finished, stopped early or diverged; a member
        resumed from a checkpoint trains from the epoch after it (the others wait for it)."""
        epochs = self.members[0].cfg.train.epochs
        started = time.perf_counter()
        for m in self.members:
            m.result.started = started
            for cb in m.callbacks:
                cb.set_model(m.view)
                cb.on_train_begin()
            if m.resume is not None:
                self._resume(m, epochs)
        diverged = jnp.zeros(len(self.members), bool)
        for epoch in range(min((m.start for m in self.members if m.active), default=epochs), epochs):
            began = time.perf_counter()
            live = [m for m in self.members if m.active and m.start <= epoch]
            if not live:
                break
            for m in live:
                for cb in m.callbacks:
                    cb.on_epoch_begin(epoch)
            active = jnp.asarray([m in live for m in self.members])
            state = (*self.state[:3], [jnp.array(a) for a in self.metrics0])
            logs = jax.tree_util.tree_map(jnp.array, self.train_logs0)  # fresh: the compiled steps consume theirs
            for batches in self._train_batches(epoch):
                check_stop()  # a stop (SIGTERM, Ctrl-C) whose first raise a finalizer swallowed
                state, logs, diverged = self.program.train(state, logs, diverged, active, self.x_train, self.y_train,
                                                           self.pool_index, jnp.asarray(batches))
            self.state = state
            logs = jax.device_get(logs)
            val = self._evaluate(self.x_val, self.y_val) if self.x_val.shape[1] else {}
            test = self._evaluate(self.x_test, self.y_test) if self.test_each_epoch else {}
            for m in live:
                i = m.index
                row = {k: float(v[i]) for k, v in logs.items()}
                row.update({f"val_{k}": float(v[i]) for k, v in val.items()})
                row.update({f"test_{k}": float(v[i]) for k, v in test.items()})  # train.test_each_epoch
                for cb in m.callbacks:
                    cb.on_epoch_end(epoch, row)
                m.active = not m.view.stop_training
                if m.on_checkpoint is not None and not m.result.diverged and m.lost is None:
                    m.on_checkpoint(epoch, self)
            # every lane's epoch is in the sweep folder now: each is judged against all of them
            cut = [m for m in live if m.active and m.prune is not None and not m.result.diverged
                   and m.prune(m.result.history)]
            if cut:
                kept = self.drop(cut, started, epoch_seconds=time.perf_counter() - began, left=epochs - epoch - 1)
                diverged = diverged if kept is None else diverged[kept]
        for m in self.members:
            for cb in m.callbacks:
                cb.on_train_end()
            m.result.fit_seconds = m.result.previous_seconds + time.perf_counter() - started
            es = m.cfg.train.early_stopping
            if es is not None and not m.result.diverged:
                m.result.stopped_early = len(m.result.history) < epochs

    def drop(self, cut: list[Member], started: float, epoch_seconds: float = math.inf, left: int = 1):
        """Stop the members `cut` (pruned) and, when it pays, go on without every pruned lane in a smaller
        program compiled for the others, so the compute falls with each lane dropped: when the seconds of
        training their lanes would take in the `left` epochs (at `epoch_seconds` for the whole program)
        outweigh RECOMPILE_PAYS x a compilation. A dropped member ends as a trial stopped alone ends: its
        callbacks' train end (early stopping's best weights), its test scores with the weights it has
        now. Returns the indices (in the old stacking) of the members kept, or None when the lanes stay,
        masked (they end with the others, as early-stopped ones do)."""
        for m in cut:
            m.result.pruned, m.active, m.view.stop_training = True, False, True
        cut = [m for m in self.members if m.result.pruned]  # with those kept masked at an earlier rung
        saving = epoch_seconds * len(cut) / len(self.members) * left
        if saving <= RECOMPILE_PAYS * self.compile_seconds / len(self.sizes):
            return None
        for m in cut:
            for cb in m.callbacks:
                cb.on_train_end()
            m.result.fit_seconds = m.result.previous_seconds + time.perf_counter() - started
        self._score(cut)
        keep = [m for m in self.members if m not in cut]
        sel = jnp.asarray([m.index for m in keep], dtype=jnp.int32)
        self.members = keep
        if not keep:
            return sel
        take = lambda a: a[sel]  # noqa: E731
        self.state = tuple([take(a) for a in part] for part in self.state)
        self.metrics0 = [take(a) for a in self.metrics0]
        self.pool_index = take(self.pool_index)
        self.train_logs0, self.test_logs0 = (jax.tree_util.tree_map(take, logs) for logs in (self.train_logs0,
                                                                                               self.test_logs0))
        self.program.knob_values = tuple(take(v) for v in self.program.knob_values)
        for i, m in enumerate(keep):
            m.index = m.view.index = m.view.optimizer.index = i
        compiling = time.perf_counter()
        self._compile()
        self.compile_seconds += time.perf_counter() - compiling
        self.sizes.append(len(keep))
        return sel

    def test(self) -> None:
        """Each member's test scores with its final (or restored best) weights, as `train` takes them."""
        self._score(self.members)

    def _score(self, members: list[Member]) -> None:
        """Test scores (and the confusion matrix) of `members`, with the weights they hold now."""
        if self.x_test is None:
            return
        scores = self._evaluate(self.x_test, self.y_test)
        for m in members:
            i = m.index
            if m.result.diverged:
                m.result.test = {"loss": math.nan, **{k: math.nan for k in m.cfg.train.metrics}}
            else:
                m.result.test = {k: float(v[i]) for k, v in scores.items()}
                # one predict program for the template model, each trial's weights in turn
                test_confusion(self.model_of(i), self.datasets[m.pool], self.eval_batch, m.result)
