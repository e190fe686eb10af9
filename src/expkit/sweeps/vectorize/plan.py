"""Planning a sweep's vectorised groups, before anything trains: which unfinished trials train as one
JAX program (grouping.py decides, without Keras or JAX), whether `auto` judges each group worth it,
and the units of work (trials.GroupUnit) an executor then runs: one per group, or one per process for
a large group on a CPU (XLA runs a small model's steps on one core, so a second process with half of a
group's trials uses a second core). The trials' model shapes are measured by whoever will train them
(`check`: the executor's JAX processes where it has them), else in this process.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from ...errors import ConfigError
from ...runfolder import FINISHED, read_status
from ..procs import MEMORY_SHARE, available_bytes, available_cores
from ..trials import GroupUnit
from ..work import DatasetCache, data_key, preflight
from .grouping import (Group, ModelShape, check_vectorisable, differing_keys, plan_groups, require_one_group,
                       sequential_seconds, trial_blocker, worth_vectorizing)

MIN_LANE_TRIALS = 4  # trials per JAX process that repay starting one more
# `auto` starts the JAX processes early (early_lanes) only for built-in datasets this large or larger.
LARGE_DATASETS = ("fashion_mnist", "mnist", "cifar10", "cifar100")
LARGE = 10_000


def model_shape(model) -> ModelShape:
    """The layer classes, output shapes and weight shapes of a built model, and its forward cost."""
    from ...train import model_macs_per_sample

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


def measure_shapes(trials: list, numbers: list[int] | None = None) -> dict:
    """trial id -> ModelShape, through the trials' checks on this process's backend, without data."""
    return preflight(trials, numbers=numbers, measure=model_shape)

def check_candidates(trials: list, numbers: list[int]) -> tuple:
    """Candidates for a vectorised group, checked on JAX where they would train: (trial id -> ModelShape
    or None, None or the first failing trial's error as wire data, whether JAX sees a GPU)."""
    from dataclasses import replace

    from ...backend import current
    from ...errors import to_wire
    from .group import jax_config

    gpus = bool(current().gpus())
    try:
        return preflight([replace(t, config=jax_config(t.config)) for t in trials], numbers=numbers,
                         measure=model_shape), None, gpus
    except ConfigError as exc:
        return None, to_wire(exc), gpus


def jax_installed() -> bool:
    from ...backend import installed

    return installed("jax")


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


def worth_it(groups: list[Group], shapes: dict, on_cpu: bool, say,
             datasets: DatasetCache | None = None) -> tuple[list[Group], dict]:
    """`auto`: the groups whose one-at-a-time training would outlast starting JAX, with the datasets
    loaded to count their examples (handed to the child, which then need not load them again).
    `datasets`: those loaded already (while the checks ran elsewhere)."""
    datasets = datasets or DatasetCache()
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
            loaded[key] = datasets.get_with_files(first)
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


def dry_run_groups(cfg, trials: list, shapes: dict, *, on_cpu: bool = True) -> tuple[dict, list[str]]:
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
    if mode == "auto" and on_cpu:  # what the run will do: worth_it keeps convolving groups apart on a CPU
        convolving = [g for g in groups if any("Conv" in layer[0] for layer in shapes[g.trials[0].id].layers)]
        for g in convolving:
            lines.append(f"vectorize: {len(g.trials)} trials differing in {', '.join(g.keys)} convolve, and on a CPU "
                         "auto trains them one at a time (XLA runs several trials' convolutions slower here)")
        groups = [g for g in groups if g not in convolving]
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
    """JAX processes to split the groups over on this machine. XLA runs a small model's steps on one core,
    so a second process with half of each group's trials uses a second core; each needs MIN_LANE_TRIALS
    trials to repay its start (importing JAX, compiling)."""
    return max(1, min(available_cores(), min(len(g.trials) for g in groups) // MIN_LANE_TRIALS))


def _convolves(cfg) -> bool:
    """Whether the config's model names a convolution (from the config alone, without building it)."""
    return "conv" in json.dumps(cfg.to_dict().get("model", {}), default=str).lower()


def early_lanes(cfg, trials: list, sweep_dir, *, device: str, stale_after: float) -> int:
    """How many JAX processes to start before the sweep's own checks (0: none): when the config alone says
    that a group will probably train vectorised, they import JAX while this process looks at the trials,
    then check the trials they will train and train them."""
    mode = cfg.sweep.vectorize
    if mode is False or not jax_installed():
        return 0
    pending = [t for t in trials if read_status(sweep_dir / t.id, stale_after) not in FINISHED]
    pending = [t for t in pending if trial_blocker(cfg, t) is None]
    if len(pending) < 2:
        return 0
    if mode == "auto" and (cfg.data.dataset not in LARGE_DATASETS or (cfg.data.limit or LARGE) < LARGE
                           or (_convolves(cfg) and device != "gpu")):
        return 0  # `auto` decides with the data and the devices: the processes start then, if at all
    return lane_count([Group(pending, ())])


@dataclass
class Plan:
    """What trains vectorised: the groups, the datasets loaded to judge them (handed to the processes that
    train them), and the trials whose checks ran where they will train (on JAX)."""

    groups: list[Group] = field(default_factory=list)
    datasets: dict = field(default_factory=dict)
    checked: set[str] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)   # why trials train one at a time, one line each

    def units(self, cfg, lanes: int, *, budget_bytes: float | None = None, hand_over: bool = True) -> list[GroupUnit]:
        """The groups as units of work: each group split over `lanes` processes (its trials dealt out in
        turn); `hand_over`: each unit carries the datasets loaded here (a process on this machine)."""
        units = []
        budget = available_bytes() * MEMORY_SHARE / lanes if budget_bytes is None else budget_bytes
        for i, g in enumerate(self.groups, 1):
            data = {k: d for k, d in self.datasets.items() if k == data_key(g.trials[0].config)} if hand_over else None
            for k in range(lanes):
                if g.trials[k::lanes]:
                    units.append(GroupUnit(g.trials[k::lanes], g.keys, f"{i}/{len(self.groups)}", f"{k + 1}/{lanes}",
                                           budget, cfg.sweep.vectorize_max, data))
        return units


def plan_vectorised(cfg, trials: list, sweep_dir, *, device: str, stale_after: float, log, checker=None,
                    hand_over: bool = True) -> Plan:
    """The sweep's vectorisable groups, before anything trains. `checker`: the executor that will train
    them, when it has JAX processes that can check the candidate trials where they will train
    (`checker.check(trials, numbers, say, meanwhile)` -> trial id -> ModelShape, or None when it cannot
    answer; `meanwhile()` is called while they check; `checker.gpus`: whether those processes see a
    GPU), so that this process imports no Keras backend for them. Without one (or without an answer),
    this process measures. `hand_over`: the groups' datasets are loaded here for the processes that
    train them (on this machine); `auto` loads them in any case, to count their examples.

    A ConfigError (a trial's checks, or sweep.vectorize true and a key that prevents it) is raised before
    anything is written. Every choice `auto` makes is said in one line."""
    def say(line: str) -> None:
        print(line, file=log)

    pending = [t for t in trials if read_status(sweep_dir / t.id, stale_after) not in FINISHED]
    numbers = {t.id: i for i, t in enumerate(trials, 1)}
    checked: set[str] = set()

    loaded = DatasetCache()
    wanted = cfg.sweep.vectorize == "auto" or hand_over

    def meanwhile(part: list) -> None:
        """Load the candidates' dataset while the checks run in other processes (start-up plus checks take
        seconds there, loading Fashion-MNIST about 1.5 s here). A load that fails is left for the load
        that needs the data to report, after the checks have had their say."""
        if wanted:
            try:
                loaded.get_with_files(part[0].config)
            except Exception:
                pass

    def measure(part: list) -> dict:
        shapes = (checker.check(part, [numbers[t.id] for t in part], say, meanwhile=lambda: meanwhile(part))
                  if checker is not None else None)
        if shapes is None:  # no JAX process could answer: the checks run here, message and all
            return measure_shapes(part, [numbers[t.id] for t in part])
        checked.update(shapes)
        return shapes

    groups, shapes = candidate_groups(cfg, pending, say, measure)
    notes = _apart(cfg, pending, shapes)
    if not groups:
        return Plan(notes=notes)
    datasets = {}
    if cfg.sweep.vectorize == "auto":
        gpus = getattr(checker, "gpus", None)
        on_cpu = device == "cpu" or not (gpus if gpus is not None else _gpus_here())
        groups, datasets = worth_it(groups, shapes, on_cpu, say, loaded)
    elif hand_over:
        datasets = {k: d for k, d in loaded.items() if k in {data_key(g.trials[0].config) for g in groups}}
    grouped = {t.id for g in groups for t in g.trials}
    return Plan(groups, datasets, checked & grouped, notes)


def _apart(cfg, pending: list, shapes: dict) -> list[str]:
    """One line per reason that keeps trials out of every group (a tracker, a backend sweep, ...)."""
    notes = []
    if cfg.sweep.vectorize is False:
        return notes
    for t in pending:
        blocker = trial_blocker(cfg, t)
        if blocker is not None:
            note = f"vectorize: {blocker[0]}: {blocker[1]}; those trials train one at a time"
            if note not in notes:
                notes.append(note)
    return notes


def _gpus_here() -> bool:
    from ...backend import current

    return bool(current().gpus())
