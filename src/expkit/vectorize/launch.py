"""The sweep's side of vectorised training: plan the groups, train them in JAX child processes.

Before the sweep's own loop, `plan_vectorised` measures each unfinished trial's model (in the JAX
processes when start_lanes started them early, which also run the trials' checks there; else in this
process), groups the trials (grouping.py) and, under `auto`, keeps the groups worth a JAX program.
`run_groups` hands each JAX process (lanes.py, worker.py: one, or one per core for large groups, since
XLA runs a small model's steps on one core) its share of every group. The trials they finish are
finished for the loop too; anything else (a group that could not be one program, a trial a child could
not finish) is left to the loop, one trial at a time.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from ..errors import ConfigError
from ..runfolder import FINISHED, read_status
from ..trials import refresh
from .grouping import (Group, ModelShape, check_vectorisable, differing_keys, plan_groups, require_one_group,
                       sequential_seconds, shape_key, trial_blocker, worth_vectorizing)
from .lanes import Lanes

# The share of the memory available now that the vectorised programs may plan to use.
MEMORY_SHARE = 0.5
MIN_LANE_TRIALS = 4  # trials per JAX process that repay starting one more
# `auto` starts the JAX processes early (start_lanes) only for built-in datasets this large or larger.
LARGE_DATASETS = ("fashion_mnist", "mnist", "cifar10", "cifar100")
LARGE = 10_000


def model_shape(model) -> ModelShape:
    """The layer classes, output shapes and weight shapes of a built model, and its forward cost."""
    from ..train import model_macs_per_sample

    layers = []
    for layer in model.layers:
        try:
            out = tuple(layer.output.shape)
        except (AttributeError, ValueError):
            out = ()
        layers.append((type(layer).__name__, out, tuple(tuple(w.shape) for w in layer.weights)))
    try:
        macs = model_macs_per_sample(model)
    except (AttributeError, ValueError):
        macs = 0.0
    return ModelShape(tuple(layers), macs)


def measure_shapes(trials: list) -> dict:
    """trial id -> ModelShape, each distinct model built once on this process's backend, without data."""
    import keras

    from ..runner import prepare

    built: dict[str, ModelShape] = {}
    out = {}
    for t in trials:
        key = shape_key(t.config.to_dict())
        if key not in built:
            _, model = prepare(t.config, load_data=False)
            built[key] = model_shape(model)
            keras.backend.clear_session()
        out[t.id] = built[key]
    return out


def jax_installed() -> bool:
    from ..backend import installed

    return installed("jax")


def available_bytes() -> float:
    """MemAvailable (Linux), else the physical memory."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def candidate_groups(cfg, pending: list, say, measure=measure_shapes) -> tuple[list[Group], dict]:
    """The groups among `pending` (unfinished) trials that may train vectorised, and their ModelShapes
    (`measure(trials)`: trial id -> ModelShape).

    `vectorize: true` raises a ConfigError naming the key that keeps the trials out of one program."""
    mode = cfg.sweep.vectorize
    if mode is False or not pending or (mode == "auto" and len(pending) < 2):
        return [], {}
    if not jax_installed():
        if mode is True:
            raise ConfigError("vectorize is true, but jax is not installed here (pip install 'expkit[jax]')",
                              path="sweep.vectorize")
        say("vectorize: jax is not installed here (pip install 'expkit[jax]'), so the trials run one at a time")
        return [], {}
    if mode is True:
        check_vectorisable(cfg, pending)
        shapes = measure(pending)
        require_one_group(cfg, pending, shapes)
        return [Group(pending, differing_keys(cfg, pending))], shapes
    pending = [t for t in pending if trial_blocker(cfg, t) is None]
    if len(pending) < 2:
        return [], {}
    shapes = measure(pending)
    return plan_groups(cfg, pending, shapes).groups, shapes


def worth_it(groups: list[Group], shapes: dict, on_cpu: bool, say) -> tuple[list[Group], dict]:
    """`auto`: the groups whose one-at-a-time training would outlast starting JAX, with the datasets
    loaded to count their examples (handed to the child, which then need not load them again)."""
    from .worker import data_key, load_with_files

    chosen, loaded = [], {}
    for group in groups:
        first = group.trials[0].config
        if on_cpu and any("Conv" in layer[0] for layer in shapes[group.trials[0].id].layers):
            say(f"vectorize: {len(group.trials)} trials differing in {', '.join(group.keys)} convolve, and on a CPU "
                "XLA runs convolutions for several trials at once slower than TensorFlow runs them one at a time; "
                "they run one at a time")
            continue
        key = data_key(first)
        if key not in loaded:
            loaded[key] = load_with_files(first)
        n_train = len(loaded[key][0].x_train)
        if worth_vectorizing(group, shapes, n_train):
            chosen.append(group)
        else:
            alone = sum(sequential_seconds(shapes[t.id], n_train, first.train.batch_size, first.train.epochs)
                        for t in group.trials)
            say(f"vectorize: {len(group.trials)} trials differing in {', '.join(group.keys)} would take about "
                f"{alone:.0f} s one at a time, too little to gain from a JAX program; they run one at a time")
    used = {data_key(g.trials[0].config) for g in chosen}
    return chosen, {k: d for k, d in loaded.items() if k in used}


def dry_run_groups(cfg, trials: list, shapes: dict) -> tuple[dict, list[str]]:
    """For `--dry-run`: each trial's group ("1", "2", ... or "-": one at a time) and a line per group.
    `vectorize: true` raises the ConfigError a run would."""
    from .grouping import MIN_SEQUENTIAL_SECONDS

    mode = cfg.sweep.vectorize
    labels = {t.id: "-" for t in trials}
    if mode is False:
        return labels, ["vectorize: false: every trial trains on its own"]
    if mode is True:
        check_vectorisable(cfg, trials)
        require_one_group(cfg, trials, shapes)
        groups = [Group(trials, differing_keys(cfg, trials))]
        notes: list[str] = []
    else:
        plan = plan_groups(cfg, trials, shapes)
        groups, notes = plan.groups, plan.notes
    lines = []
    for i, group in enumerate(groups, 1):
        for t in group.trials:
            labels[t.id] = str(i)
        lines.append(f"group {i}: {len(group.trials)} trials ({', '.join(group.keys) or 'one'}) can train as one JAX program")
    lines += [f"apart: {note}" for note in notes]
    if groups and not jax_installed():
        lines.append("vectorize: jax is not installed here (pip install 'expkit[jax]'): every trial trains on its own")
    elif groups and mode == "auto":
        lines.append(f"vectorize: auto trains a group as one program when its trials one at a time would take "
                     f"{MIN_SEQUENTIAL_SECONDS:.0f} s or more (judged with the data, when the sweep runs)")
    return labels, lines


def lane_count(groups: list[Group]) -> int:
    """JAX processes to split the groups over. XLA runs a small model's steps on one core, so a second
    process with half of each group's trials uses a second core; each needs MIN_LANE_TRIALS trials to
    repay its start (importing JAX, compiling)."""
    from ..workers import available_cores

    return max(1, min(available_cores(), min(len(g.trials) for g in groups) // MIN_LANE_TRIALS))


def _convolves(cfg) -> bool:
    """Whether the config's model names a convolution (from the config alone, without building it)."""
    return "conv" in json.dumps(cfg.to_dict().get("model", {}), default=str).lower()


def start_lanes(cfg, trials: list, sweep_dir, *, device: str, stale_after: float) -> Lanes | None:
    """Start the JAX processes before the sweep's own checks when the config alone says that a group will
    probably train vectorised, so that they import JAX while this process imports its backend and builds
    the trials' models; run_groups takes them over (and stops them if no group comes of it)."""
    mode = cfg.sweep.vectorize
    if mode is False or not jax_installed():
        return None
    pending = [t for t in trials if read_status(sweep_dir / t.id, stale_after) not in FINISHED]
    pending = [t for t in pending if trial_blocker(cfg, t) is None]
    if len(pending) < 2:
        return None
    if mode == "auto" and (cfg.data.dataset not in LARGE_DATASETS or (cfg.data.limit or LARGE) < LARGE
                           or (_convolves(cfg) and device != "gpu")):
        return None  # `auto` decides with the data and the devices: the processes start then, if at all
    return Lanes(device, lane_count([Group(pending, ())]))


@dataclass
class Plan:
    """What trains vectorised: the groups, the datasets loaded to judge them (handed to the JAX processes),
    the processes, and the trials whose checks ran there (on JAX, where they train)."""

    groups: list[Group] = field(default_factory=list)
    datasets: dict = field(default_factory=dict)
    lanes: Lanes | None = None
    checked: set[str] = field(default_factory=set)


def plan_vectorised(cfg, trials: list, sweep_dir, *, device: str, stale_after: float, log,
                    lanes: Lanes | None = None) -> Plan:
    """The sweep's vectorisable groups, before anything trains. `lanes`: processes start_lanes started,
    taken over here (stopped if no group comes of it); they measure and check the candidate trials, so
    that this process imports no Keras backend for them. Without them, this process measures.

    A ConfigError (a trial's checks, or sweep.vectorize true and a key that prevents it) is raised
    before anything is written, with every process stopped."""
    def say(line: str) -> None:
        print(line, file=log)

    try:
        pending = [t for t in trials if read_status(sweep_dir / t.id, stale_after) not in FINISHED]
        numbers = {t.id: i for i, t in enumerate(trials, 1)}
        checked: set[str] = set()

        def measure(part: list) -> dict:
            if lanes is None:
                return measure_shapes(part)  # the sweep's checks have run here already
            shapes = lanes.check(part, [numbers[t.id] for t in part], say)
            if shapes is None:  # a JAX process could not answer: the checks run here, message and all
                from ..execute import preflight

                return preflight(part, numbers=[numbers[t.id] for t in part], shapes=True)
            checked.update(shapes)
            return shapes

        groups, shapes = candidate_groups(cfg, pending, say, measure)
        if not groups:
            if lanes is not None:
                lanes.cancel()
            return Plan()
        lanes = lanes or Lanes(device, lane_count(groups))  # they start JAX while this process looks at the data
        datasets = {}
        if cfg.sweep.vectorize == "auto":
            on_cpu = device == "cpu" or not (lanes.gpus if lanes.gpus is not None else _gpus_here())
            groups, datasets = worth_it(groups, shapes, on_cpu, say)
        if not groups:
            lanes.cancel()
            return Plan()
        grouped = {t.id for g in groups for t in g.trials}
        return Plan(groups, datasets, lanes, checked & grouped)
    except BaseException:
        if lanes is not None:
            lanes.cancel()
        raise


def _gpus_here() -> bool:
    from ..backend import current

    return bool(current().gpus())


def run_groups(cfg, trials: list, sweep_dir, plan: Plan, *, stale_after: float, log) -> list[str]:
    """Train the planned groups in the JAX processes; returns the trial ids they finished."""
    def say(line: str) -> None:
        print(line, file=log)

    groups, lanes = plan.groups, plan.lanes
    if not groups:
        return []
    try:
        n = lanes.keep(lane_count(groups))
        for i, g in enumerate(groups, 1):
            say(f"vectorize: group {i}/{len(groups)}: {len(g.trials)} trials differing in "
                f"{', '.join(g.keys) or 'nothing'} train as one JAX program" + (f" in each of {n} processes" if n > 1 else ""))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        jobs = [{"sweep_dir": str(sweep_dir.absolute()), "stale_after": stale_after,
                 "budget_bytes": available_bytes() * MEMORY_SHARE / n, "max_size": cfg.sweep.vectorize_max,
                 "groups": [{"label": f"{i}/{len(groups)}", "lane": f"{k + 1}/{n}", "trials": g.trials[k::n]}
                            for i, g in enumerate(groups, 1)]}
                for k in range(n)]
        return lanes.run(jobs, plan.datasets, say)
    except KeyboardInterrupt:  # the children recorded their trials as interrupted: the manifest says so too
        lanes.cancel()
        if sweep_dir.is_dir():
            refresh(cfg, trials, sweep_dir)
        raise
    except BaseException:
        lanes.cancel()
        raise
