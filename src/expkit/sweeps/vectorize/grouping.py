"""Which trials of a sweep train together as one vectorised program. Pure: no Keras, no JAX.

Trials share a program when everything that shapes it is equal and only numbers the program can take
as inputs differ. Equal: the data section, batch size, epochs, loss, metrics, the optimizer's name,
every layer's type and every non-numeric setting, and the built models' layer classes, output shapes
and weight shapes (`ModelShape`, measured by the caller). Free to differ: the seed (initial weights,
dropout draws, data order and split), the fold (`data.fold.index`: another validation set, data and not
a shape), the learning rate, numbers in the optimizer mapping, the
schedule and early stopping, and numbers inside layers (dropout rates, L1/L2 factors, slopes). A
number inside the program that is 0 in one trial and not in another makes another program: Keras
skips the regulariser term, the dropout or the momentum buffer when it is 0.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from ...config import split_key
from ...errors import ConfigError, format_path

PROGRAM, HOST = "program", "host"  # a number the compiled program reads; one the host reads between epochs

# `auto` vectorises a group when training its trials one at a time would take at least this long:
# below it, starting JAX and compiling the group's program (the fixed cost of about five small trials
# one at a time, measured on the 2-core CPU) saves nothing.
MIN_SEQUENTIAL_SECONDS = 15.0
# The one-at-a-time cost model behind that estimate, from docs/performance.md on the 2-core CPU:
# a small model's step costs Keras' per-step overhead (the dense baseline: 0.64 ms at batch 32),
# a large one its multiply-accumulates (CNN2 trains at about 1.4e11 per second, forward and backward).
STEP_SECONDS = 6e-4
MACS_PER_SECOND = 1e11
TRIAL_SECONDS = 2.0  # build, compile, test evaluation, model and run folder, per trial


@dataclass(frozen=True)
class ModelShape:
    """What the caller measures on a trial's built model."""

    layers: tuple             # (class name, output shape, weight shapes) per layer
    macs_per_sample: float    # forward multiply-accumulates of one example


@dataclass
class Group:
    trials: list              # Trial, in sweep order
    keys: list[str]           # the swept keys whose values differ inside the group


@dataclass
class Plan:
    groups: list[Group]       # each trains as one program (memory may split it into chunks)
    alone: list               # trials that run one at a time
    notes: list[str]          # why trials are kept apart, one line each


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def leaf_kind(path: tuple) -> str | None:
    """PROGRAM or HOST for a config leaf whose number may differ inside a group; None: must be equal."""
    if path in (("seed",), ("data", "fold", "index")) or (path[:2] == ("train", "early_stopping") and len(path) > 2):
        return HOST
    if (path == ("train", "learning_rate") or (path[:2] == ("train", "schedule") and len(path) > 2)
            or (path[:2] == ("train", "optimizer") and len(path) > 2 and path[2] != "name")
            or (path[:2] == ("model", "layers") and len(path) > 3)):
        return PROGRAM
    return None


def _masked(node, replace, path: tuple = ()):
    """`node` with each leaf passed through replace(path, value)."""
    if isinstance(node, dict):
        return {k: _masked(v, replace, (*path, k)) for k, v in node.items()}
    if isinstance(node, list):
        return [_masked(v, replace, (*path, i)) for i, v in enumerate(node)]
    return replace(path, node)


def program_key(config: dict) -> str:
    """The resolved config with every free number masked (0 kept apart): equal keys may share a program."""
    def replace(path, value):
        kind = leaf_kind(path) if is_number(value) else None
        if kind is None:
            return value
        return "<zero>" if kind == PROGRAM and value == 0 else "<number>"

    return json.dumps(_masked(config, replace), sort_keys=True, default=str)


def shape_key(config: dict) -> str:
    """The resolved config with the free numbers masked that never change a model's shapes (all but the
    layers'): trials with equal keys build models of one shape."""
    def replace(path, value):
        return "<number>" if is_number(value) and leaf_kind(path) and path[0] != "model" else value

    return json.dumps(_masked(config, replace), sort_keys=True, default=str)


def _leaves(node, path: tuple = ()):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _leaves(v, (*path, i))
    else:
        yield path, node


_MISSING = object()


def _differences(a: dict, b: dict) -> list[tuple[tuple, object, object]]:
    """(path, value in a, value in b) for every leaf where the two configs differ."""
    la, lb = dict(_leaves(a)), dict(_leaves(b))
    return [(p, la.get(p, _MISSING), lb.get(p, _MISSING)) for p in list(la) + [p for p in lb if p not in la]
            if la.get(p, _MISSING) != lb.get(p, _MISSING)]


def sweep_key(cfg, path: tuple) -> str:
    """The sweep key (as written, with its block) that sets `path`, else the path itself."""
    for block in ("grid", "zip", "space"):
        for key in getattr(cfg.sweep, block):
            parts = tuple(split_key(key))
            if path[:len(parts)] == parts:
                return f"sweep.{block}.{key}"
    if path == ("seed",) and cfg.sweep.seeds:
        return "sweep.seeds"
    if path[:2] == ("data", "fold") and cfg.sweep.folds:
        return "sweep.folds"
    return format_path(path)


def trial_blocker(cfg, trial) -> tuple[str, str] | None:
    """(key, why) when a trial cannot train vectorised at all, whatever its group."""
    for block in ("grid", "zip"):
        if any(split_key(k)[0] == "backend" for k in getattr(cfg.sweep, block)):
            key = next(k for k in getattr(cfg.sweep, block) if split_key(k)[0] == "backend")
            return f"sweep.{block}.{key}", "the sweep compares backends, and a vectorised group trains on JAX"
    if getattr(trial.config, "track", None):
        return "track", "trackers follow one run at a time, and a vectorised group does not feed them"
    train = trial.config.train
    if getattr(train, "callbacks", None):
        return "train.callbacks", "a vectorised group calls only expkit's own callbacks, not Keras callbacks of yours"
    if getattr(train, "class_weight", None) is not None:
        return "train.class_weight", "class weights are not vectorised (Keras applies them inside fit, which a group does not call)"
    if trial.config.data.options.get("sample_weight") is not None:
        return "data.options.sample_weight", "per-example weights are not vectorised (Keras applies them inside fit, which a group does not call)"
    if train.precision != "float32":
        return "train.precision", f"{train.precision} is not vectorised (float32 only)"
    if train.input_pipeline == "tf_data":
        return "train.input_pipeline", "tf_data shuffles with TensorFlow's generator, which a JAX program cannot follow"
    return None


def plan_groups(cfg, trials: list, shapes: dict) -> Plan:
    """Group `trials` (the unfinished ones) by program; `shapes` maps trial id -> ModelShape."""
    buckets: dict[tuple, list] = {}
    alone, notes = [], []
    for t in trials:
        blocker = trial_blocker(cfg, t)
        if blocker is not None:
            alone.append(t)
            note = f"{blocker[0]}: {blocker[1]}"
            if note not in notes:
                notes.append(note)
            continue
        buckets.setdefault((program_key(t.config.to_dict()), shapes[t.id].layers), []).append(t)
    groups = []
    firsts = []
    for members in buckets.values():
        if len(members) >= 2:
            groups.append(Group(members, differing_keys(cfg, members)))
        else:
            alone.extend(members)
        firsts.append(members[0])
    for a, b in zip(firsts, firsts[1:]):
        key, why = explain_split(cfg, a, b, shapes)
        note = f"{key}: {why}"
        if note not in notes:
            notes.append(note)
    order = {t.id: i for i, t in enumerate(trials)}
    alone.sort(key=lambda t: order[t.id])
    return Plan(groups, alone, notes)


def differing_keys(cfg, members: list) -> list[str]:
    keys: list[str] = []
    first = members[0].config.to_dict()
    for other in members[1:]:
        for path, _, _ in _differences(first, other.config.to_dict()):
            key = sweep_key(cfg, path)
            if key not in keys:
                keys.append(key)
    return keys


def explain_split(cfg, a, b, shapes: dict) -> tuple[str, str]:
    """(key, why) for the first difference that keeps trials `a` and `b` out of one program."""
    diffs = _differences(a.config.to_dict(), b.config.to_dict())
    for path, va, vb in diffs:
        kind = leaf_kind(path) if is_number(va) and is_number(vb) else None
        if kind is None:
            return sweep_key(cfg, path), f"{_shown(va)} and {_shown(vb)} make different programs"
    for path, va, vb in diffs:
        if leaf_kind(path) == PROGRAM and (va == 0) != (vb == 0):
            return sweep_key(cfg, path), (f"{va} and {vb}: Keras leaves out what a 0 switches off, so the "
                                          "two make different programs")
    la, lb = shapes[a.id].layers, shapes[b.id].layers
    where = next((i for i, (x, y) in enumerate(zip(la, lb)) if x != y), min(len(la), len(lb)))
    key = sweep_key(cfg, diffs[0][0]) if diffs else "model"
    found = (f"layer {where} ({la[where][0]}): output {la[where][1]} vs {lb[where][1]}, weights "
             f"{list(la[where][2])} vs {list(lb[where][2])}" if where < min(len(la), len(lb)) else "layer counts differ")
    return key, f"changes the model's shapes ({found}); only trials of one shape share a program"


def _shown(value) -> str:
    return "(absent)" if value is _MISSING else json.dumps(value, default=str)


def check_vectorisable(cfg, trials: list) -> None:
    """`vectorize: true`: a ConfigError naming the key when a trial cannot train vectorised at all."""
    for t in trials:
        blocker = trial_blocker(cfg, t)
        if blocker is not None:
            raise ConfigError(f"vectorize is true, but {blocker[1]}", path=blocker[0])


def require_one_group(cfg, trials: list, shapes: dict) -> None:
    """`vectorize: true`: every trial in one program, else a ConfigError naming the key that prevents it."""
    check_vectorisable(cfg, trials)
    first = trials[0]
    key0 = (program_key(first.config.to_dict()), shapes[first.id].layers)
    for t in trials[1:]:
        if (program_key(t.config.to_dict()), shapes[t.id].layers) != key0:
            key, why = explain_split(cfg, first, t, shapes)
            raise ConfigError(f"vectorize is true, but the trials cannot share one program: {why} "
                              "(set sweep.vectorize to auto to vectorise what can be)", path=key)


def sequential_seconds(shape: ModelShape, n_train: int, batch_size: int, epochs: int) -> float:
    """Estimated time to train one trial on its own (the one-at-a-time cost model above)."""
    steps = math.ceil(n_train / batch_size) * epochs
    per_step = max(STEP_SECONDS, 3.0 * shape.macs_per_sample * batch_size / MACS_PER_SECOND)
    return steps * per_step + TRIAL_SECONDS


def worth_vectorizing(group: Group, shapes: dict, n_train: int) -> bool:
    train = group.trials[0].config.train
    total = sum(sequential_seconds(shapes[t.id], n_train, train.batch_size, train.epochs) for t in group.trials)
    return total >= MIN_SEQUENTIAL_SECONDS


def room(per_trial_bytes: float, shared_bytes: float, budget_bytes: float) -> int:
    """How many trials fit `budget_bytes` beside the data they share (at least one)."""
    return max(1, int((budget_bytes - shared_bytes) // max(per_trial_bytes, 1.0)))


def chunk(trials: list, per_trial_bytes: float, shared_bytes: float, budget_bytes: float,
          max_size: int | None = None) -> list[list]:
    """Split a group into as few, equal chunks as fit `budget_bytes` (shared data plus each trial's
    footprint) and `max_size`; every chunk has at least one trial."""
    size = min(room(per_trial_bytes, shared_bytes, budget_bytes), max_size or len(trials), len(trials))
    n = math.ceil(len(trials) / size)
    base, extra = divmod(len(trials), n)
    out, start = [], 0
    for i in range(n):
        end = start + base + (1 if i < extra else 0)
        out.append(trials[start:end])
        start = end
    return out
