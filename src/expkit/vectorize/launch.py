"""The sweep's side of vectorised training: plan the groups, train them in a JAX child process.

`run_groups` runs in the sweep's process (whatever its Keras backend) before the sweep's own loop:
it measures each unfinished trial's model on that backend, groups the trials (grouping.py), and
hands the groups to one child process (worker.py) started with 'spawn' and KERAS_BACKEND=jax. The
trials the child finishes are finished for the loop too; anything else (a group that could not be
one program, a trial the child could not finish) is left to the loop, which trains it one at a time.
"""

from __future__ import annotations

import multiprocessing
import os
import time

from ..errors import ConfigError
from ..runfolder import FINISHED, read_status
from ..trials import refresh
from .grouping import (Group, ModelShape, check_vectorisable, differing_keys, plan_groups, require_one_group,
                       sequential_seconds, shape_key, trial_blocker, worth_vectorizing)

# The share of the memory available now that one vectorised program may plan to use.
MEMORY_SHARE = 0.5
STOP_GRACE_SECONDS = 60.0  # a stopped child's time to record its trials as interrupted


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


def candidate_groups(cfg, pending: list, say) -> tuple[list[Group], dict]:
    """The groups among `pending` (unfinished) trials that may train vectorised, and their ModelShapes.

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
        shapes = measure_shapes(pending)
        require_one_group(cfg, pending, shapes)
        return [Group(pending, differing_keys(cfg, pending))], shapes
    pending = [t for t in pending if trial_blocker(cfg, t) is None]
    if len(pending) < 2:
        return [], {}
    shapes = measure_shapes(pending)
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


def run_groups(cfg, trials: list, sweep_dir, *, device: str, stale_after: float, log) -> list[str]:
    """Train the sweep's vectorisable groups in a JAX child process; returns the trial ids it finished.

    A ConfigError (sweep.vectorize true and a key that prevents it) is raised before anything is written."""
    def say(line: str) -> None:
        print(line, file=log)

    pending = [t for t in trials if read_status(sweep_dir / t.id, stale_after) not in FINISHED]
    groups, shapes = candidate_groups(cfg, pending, say)
    if not groups:
        return []
    child = Child(device)  # starts JAX while this process looks at the data
    try:
        datasets = {}
        if cfg.sweep.vectorize == "auto":
            from ..backend import current

            groups, datasets = worth_it(groups, shapes, device == "cpu" or not current().gpus(), say)
        if not groups:
            child.cancel()
            return []
        for i, g in enumerate(groups, 1):
            say(f"vectorize: group {i}/{len(groups)}: {len(g.trials)} trials differing in "
                f"{', '.join(g.keys) or 'nothing'} train as one JAX program")
        sweep_dir.mkdir(parents=True, exist_ok=True)
        job = {"sweep_dir": str(sweep_dir.absolute()), "stale_after": stale_after,
               "budget_bytes": available_bytes() * MEMORY_SHARE, "max_size": cfg.sweep.vectorize_max,
               "groups": [{"label": f"{i}/{len(groups)}", "trials": g.trials} for i, g in enumerate(groups, 1)]}
        return child.run(job, datasets, say)
    except KeyboardInterrupt:  # the child recorded its trials as interrupted: the manifest says so too
        child.cancel()
        if sweep_dir.is_dir():
            refresh(cfg, trials, sweep_dir)
        raise
    except BaseException:
        child.cancel()
        raise


class Child:
    """The JAX process (worker.worker_main), started with 'spawn' and KERAS_BACKEND=jax."""

    def __init__(self, device: str):
        from ..workers import _environ
        from .worker import worker_main

        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=worker_main, args=(child, os.getpid(), device), name="expkit-vectorize",
                                daemon=True)
        with _environ({"KERAS_BACKEND": "jax"}):
            self.proc.start()
        child.close()

    def cancel(self) -> None:
        if self.proc.is_alive():
            self.proc.terminate()
        self.proc.join(timeout=10)
        self.conn.close()

    def run(self, job: dict, datasets: dict, say) -> list[str]:
        """Hand over the job and relay the child's lines until it reports the trials it finished."""
        try:
            self.conn.send(("job", job, datasets))
            finished = self._listen(say)
        except KeyboardInterrupt:
            self.proc.terminate()  # SIGTERM, once: the child records its trials as interrupted
            try:
                self._listen(say, timeout=STOP_GRACE_SECONDS)
            finally:
                if self.proc.is_alive():
                    self.proc.kill()
            raise
        finally:
            self.proc.join(timeout=10)
            self.conn.close()
        if self.proc.exitcode not in (0, None):
            say(f"vectorize: the JAX process ended with exit status {self.proc.exitcode}; its unfinished trials "
                "run one at a time")
        return finished

    def _listen(self, say, timeout: float | None = None) -> list[str]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while deadline is None or time.monotonic() < deadline:
            try:
                if not self.conn.poll(0.5):
                    if not self.proc.is_alive():
                        return []
                    continue
                msg = self.conn.recv()
            except (EOFError, OSError):
                return []
            if msg[0] == "log":
                say(msg[1])
            elif msg[0] == "finished":
                return list(msg[1])
        return []
