"""The sweep's driver: `run_sweep` expands the sweep, has every trial checked before anything trains,
plans the vectorised groups, and hands the units of work (vectorised groups first, then single trials)
to the executors as they have room, until each trial is finished here, recorded by another process,
or left for the next run.

Any number of processes may run `run_sweep` on one sweep folder: each trial is trained once (the
claims, work.claim_trial), and a process that finds trials held by others waits for them.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import json
import sys
import time
from pathlib import Path

from ..config import ExperimentConfig
from ..errors import ConfigError, RunWriteError
from ..runfolder import DEFAULT_STALE_AFTER, FAILED, FINISHED, PENDING, RUNNING, Holder, read_status
from ..stopping import check as check_stop
from .executors import make_executor
from .tables import refresh
from .trials import GroupUnit, expand_sweep, unit_trials

POLL_SECONDS = 1.0


def execution_lines(cfg: ExperimentConfig, trials: list, *, jobs: int | None, executor: str | None,
                    grouped: int) -> list[str]:
    """What the run does with its trials, one line each: where the vectorised groups and the other
    trials train, and why an option does not apply (also printed by --dry-run)."""
    jobs = cfg.sweep.jobs if jobs is None else jobs
    kind = executor or cfg.sweep.executor
    alone = len(trials) - grouped
    lines = []
    if kind == "ray":
        res = cfg.sweep.resources
        lines.append(f"runs: each of the {alone} trials outside groups and each vectorised group as one Ray task "
                     f"({res.cpus:g} CPU" + (f", {res.gpus:g} GPU" if res.gpus else "") + " each)"
                     if grouped else f"runs: each of the {alone} trials as one Ray task")
        return lines
    if grouped:
        lines.append(f"runs: the {grouped} trials of the vectorised groups in JAX processes of this machine (a large "
                     "group split over one process per core)"
                     + (f"; --jobs {jobs} applies to the other trials" if jobs > 1 and alone else ""))
    if alone:
        lines.append(f"runs: {'the other' if grouped else 'the'} {alone} trials "
                     + ("one at a time" if jobs == 1 else f"{jobs} at a time in worker processes"))
    return lines


def run_sweep(cfg: ExperimentConfig, *, runs_dir="runs", device: str = "auto", fail_fast: bool = False,
              stale_after: float = DEFAULT_STALE_AFTER, log=None, jobs: int | None = None,
              executor: str | None = None, address: str | None = None) -> tuple[Path, dict]:
    """Run every trial not yet finished; returns (sweep folder, counts by status).

    `jobs`, `executor` and `address` override sweep.jobs, sweep.executor and sweep.address: `jobs`
    trials at once in worker processes on this machine, or each unit a Ray task. Trials held by
    other live processes are waited for; trials that another process attempted while this one ran
    are left as that process recorded them (each process tries a trial once).
    """
    from ..progress import ProgressLog, SweepProgress
    from ..runner import ensure_writable
    from .pruning import need_optuna
    from .search import Search

    log = log or sys.stderr
    jobs = cfg.sweep.jobs if jobs is None else jobs
    if not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"--jobs must be a whole number of at least 1, found {jobs!r}")
    kind = executor or cfg.sweep.executor
    ensure_writable(runs_dir)
    sweep_dir = ensure_writable(Path(runs_dir) / cfg.name).absolute()
    if cfg.sweep.prune is not None:
        need_optuna("sweep.prune")  # before anything trains, not in the first trial's first epoch
    search = Search(cfg, sweep_dir) if cfg.sweep.space else None
    trials = expand_sweep(cfg) if search is None else []
    isatty = getattr(log, "isatty", None)
    live = bool(isatty and isatty()) and not (kind == "local" and jobs == 1)
    progress = SweepProgress(cfg.name, log, live=live)
    say = ProgressLog(progress)
    made: list = []

    def executor_for(units: list):
        if not made:
            made.append(make_executor(kind, units, sweep_dir, jobs=jobs, device=device, stale_after=stale_after,
                                      log=say, live=live, resources=cfg.sweep.resources,
                                      address=address or cfg.sweep.address))
        return made[0]

    run = dict(sweep_dir=sweep_dir, kind=kind, jobs=jobs, device=device, stale_after=stale_after, say=say,
               live=live, progress=progress, fail_fast=fail_fast)
    try:
        if search is None:
            _run_trials(cfg, trials, trials, executor_for(trials), **run)
        else:
            # random and grid proposals do not learn from results: all at once (a vectorised group may
            # train them together); tpe a batch at a time, one per worker
            batch = search.budget if cfg.sweep.search.sampler != "tpe" else (cfg.sweep.search.batch or jobs)
            attempted: set[str] = set()
            while True:
                trials, todo = search.step(attempted, batch)
                if not todo:
                    break
                _run_trials(cfg, trials, todo, executor_for(todo), **run)
                attempted |= {t.id for t in todo}
    finally:
        for runner in made:
            runner.close()
    counts = refresh(cfg, trials, sweep_dir, plots=True)
    return sweep_dir, counts


def _run_trials(cfg: ExperimentConfig, trials: list, todo: list, runner, *, sweep_dir: Path, kind: str, jobs: int,
                device: str, stale_after: float, say, live: bool, progress, fail_fast: bool) -> None:
    """Check, plan and train `todo`, the trials of this pass (a grid's every trial, a search's batch);
    `trials`: every trial of the sweep so far, for the manifest, the tables and the progress line."""
    from .vectorize.plan import early_lanes, lane_count, plan_vectorised

    def tell(line: str) -> None:
        print(line, file=say)

    lanes = None  # the JAX processes of this machine that train vectorised groups (executor local)
    try:
        pending = [t for t in todo if read_status(sweep_dir / t.id, stale_after) not in FINISHED]
        if cfg.track and len(pending) < len(todo):  # a tracker records a trial as it trains, never afterwards
            finished = len(todo) - len(pending)
            tell(f"track: {finished} of {len(todo)} trials had finished before and are not tracked again; to record "
                 f"them: " + "; ".join(f"expkit export {name} {sweep_dir}" for name in cfg.track))
        if kind != "ray":
            # JAX processes started now when the config says a group is likely; they then check the
            # trials they will train, and the trial executor checks only the rest (on their backend).
            early = early_lanes(cfg, todo, sweep_dir, device=device, stale_after=stale_after)
            if early:
                lanes = _lanes(early, sweep_dir, device, stale_after, say, live)
        if lanes is None:
            runner.preflight(pending)
        with _keras_imported_quietly():
            plan = plan_vectorised(cfg, todo, sweep_dir, device=device, stale_after=stale_after, log=say,
                                   checker=runner if kind == "ray" else lanes, hand_over=kind != "ray")
        if lanes is not None:
            runner.preflight([t for t in pending if t.id not in plan.checked])
        for note in plan.notes:
            tell(note)
        if kind == "ray":
            units = plan.units(cfg, 1, budget_bytes=0.0, hand_over=False)
            groups_on = runner
        elif plan.groups:
            n = lane_count(plan.groups)
            lanes = lanes or _lanes(n, sweep_dir, device, stale_after, say, live)
            units, groups_on = plan.units(cfg, n), lanes
        else:
            units, groups_on = [], None
        grouped = {t.id for u in units for t in u.trials}
        note = _kept_from_another_backend(todo, pending, sweep_dir) if cfg.sweep.vectorize is False else None
        if note:
            tell(note)
        for line in execution_lines(cfg, pending, jobs=jobs, executor=kind, grouped=len(grouped)):
            tell(line)
        for i, g in enumerate(plan.groups, 1):
            shares = sum(1 for u in units if u.label == f"{i}/{len(plan.groups)}")
            tell(f"vectorize: group {i}/{len(plan.groups)}: {len(g.trials)} trials differing in "
                f"{', '.join(g.keys) or 'nothing'} train as one JAX program"
                + (f" in each of {shares} processes" if shares > 1 else "") + (" as a Ray task" if kind == "ray" else ""))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        refresh(cfg, trials, sweep_dir)
        # a search's earlier trials count as done on the progress line, without a line each
        here = {t.id for t in todo}
        announced = {t.id for t in trials if t.id not in here and read_status(sweep_dir / t.id) in FINISHED}
        if units:
            try:
                announced |= _drive(cfg, trials, units, sweep_dir, groups_on, progress, fail_fast=fail_fast,
                                    stale_after=stale_after, last=False, announced=announced)
            finally:
                if lanes is not None:
                    lanes.close()
                    lanes = None
        _drive(cfg, trials, todo, sweep_dir, runner, progress, fail_fast=fail_fast, stale_after=stale_after,
               announced=announced)
    finally:
        if lanes is not None:
            lanes.close()


def _kept_from_another_backend(trials: list, pending: list, sweep_dir: Path) -> str | None:
    """One line when finished trials that this run skips were trained on another backend than their
    config names (vectorised groups train on JAX): what runs is what was asked, or it is said."""
    from ..runfolder import DamagedRecord, read_record

    waiting = {t.id for t in pending}
    other: dict[str, int] = {}
    for t in trials:
        if t.id in waiting:
            continue
        try:
            record = read_record(sweep_dir / t.id)
        except DamagedRecord:
            continue
        if record is not None and record.backend and record.backend != t.config.backend:
            other[record.backend] = other.get(record.backend, 0) + 1
    if not other:
        return None
    found = ", ".join(f"{n} on {b}" for b, n in sorted(other.items()))
    return (f"kept: {sum(other.values())} finished trials were trained on another backend than their config's "
            f"({found}, vectorised); their records and the tables say so. To train them again one at a time, run "
            "the sweep under another name (--set name=...)")


def _lanes(count: int, sweep_dir: Path, device: str, stale_after: float, log, live: bool):
    """`count` JAX worker processes of this machine, started now, for the vectorised groups."""
    from .executors.pool import WorkerPool

    pool = WorkerPool(count, sweep_dir, device=device, stale_after=stale_after, log=log, quiet_stdout=live, cores=count)
    pool.start("jax", count)
    return pool


def _drive(cfg: ExperimentConfig, trials: list, units: list, sweep_dir: Path, runner, progress, *, fail_fast: bool,
           stale_after: float, announced: set[str] = frozenset(), last: bool = True) -> set[str]:
    """Hand `units` to `runner` in order, as it has room, until each trial is finished here, recorded by
    another process, or (after a failure with fail_fast) left for the next run. `trials`: the whole
    sweep (the progress line counts them all); `announced`: trials this command finished already (in
    vectorised groups), counted without a second line. `last`: the final pass, which also says what it
    skips and waits for trials held by other processes; an earlier pass (the vectorised groups) leaves
    what it did not train to the last. Returns the ids of the trials this pass trained."""
    from ..progress import Counts

    began = time.time()
    n = len(trials)
    pos = {t.id: i for i, t in enumerate(trials, 1)}
    done_before = {t.id for t in trials if t.id in announced}
    state = {t.id: ("done" if t.id in done_before else "queued") for t in trials}
    queue: list = list(units)
    waiting: list = []
    waiting_said: set[str] = set()
    trained: set[str] = set()
    finished_here = len(done_before)
    say = progress.log

    def index(u) -> int:
        return pos[unit_trials(u)[0].id]

    def head(t) -> str:
        return t.heading(pos[t.id], n)

    def show(force: bool = False) -> None:
        started = runner.started()
        running = {t.id for u in queue_in_flight() if u.id in started for t in unit_trials(u)}
        c = Counts()
        for t in trials:
            s = state[t.id]
            if s == "done":
                c.done += 1
            elif s == "failed":
                c.failed += 1
            elif s == "waiting" or (s == "running" and t.id in running):
                c.running += 1
            else:
                c.queued += 1
        progress.update(c, finished_here=finished_here, force=force)

    in_flight_units: dict[str, object] = {}

    def queue_in_flight():
        return list(in_flight_units.values())

    def wait_for(t, why: str) -> None:
        """`t` is held by another live process: look at it again once that one lets go."""
        if t.id not in waiting_said:
            say(f"{head(t)}: {why}; waiting for it")
            waiting_said.add(t.id)
        waiting.append(t)
        state[t.id] = "waiting"

    def settle(t, outcome) -> None:
        nonlocal finished_here
        if not last and (not outcome.trained or outcome.status == PENDING):  # the last pass sees to it
            if outcome.trained:  # its group's process failed before it started: say why
                say(f"{head(t)}: {outcome.message}; it trains on its own")
            state[t.id] = "queued"
            return
        say(f"{head(t)}: {outcome.message}")
        state[t.id] = "done" if outcome.status in FINISHED else "failed"
        if outcome.trained:
            finished_here += 1
            trained.add(t.id)

    try:
        show(force=True)
        while queue or runner.in_flight or waiting:
            check_stop()
            for t in list(waiting):  # a holder let go: look at the trial again
                if read_status(sweep_dir / t.id, stale_after) != RUNNING:
                    waiting.remove(t)
                    queue.append(t)
                    state[t.id] = "queued"
            queue.sort(key=index)
            while queue and runner.room(queue[0]):
                u = queue.pop(0)
                if not isinstance(u, GroupUnit):
                    t = u
                    if t.id in announced:
                        continue
                    status = read_status(sweep_dir / t.id, stale_after)
                    theirs = status not in (PENDING, RUNNING) and _attempted_since(sweep_dir / t.id, began)
                    if status in FINISHED or theirs:
                        by = " by another process" if t.id in waiting_said else ", skipped"
                        say(f"{head(t)}: {status}{by}")
                        state[t.id] = "done" if status in FINISHED else "failed"
                        continue
                    if status == RUNNING:  # its holder is alive
                        wait_for(t, "running in another process")
                        continue
                runner.submit(index(u), u, n)
                in_flight_units[u.id] = u
                for t in unit_trials(u):
                    state[t.id] = "running"
            show()
            if not runner.in_flight:
                in_flight_units.clear()
                if waiting:
                    time.sleep(POLL_SECONDS)
                continue
            trained_now = False
            for t, outcome in runner.collect(POLL_SECONDS):
                if last and not outcome.trained and outcome.status == RUNNING:
                    wait_for(t, outcome.message)
                    continue
                settle(t, outcome)
                trained_now = trained_now or outcome.trained
                if outcome.status == FAILED and fail_fast and (queue or waiting):
                    say("--fail-fast: stopping after the first failed trial"
                        + ("; waiting for the trials already running" if runner.in_flight else ""))
                    for left in queue + waiting:
                        for lt in unit_trials(left):
                            state[lt.id] = "queued"
                    queue.clear()
                    waiting.clear()
            if trained_now:  # the manifest and tables once for what ended together (a group's trials all at once)
                refresh(cfg, trials, sweep_dir)
            for key in [k for k in in_flight_units if k not in runner.in_flight]:
                del in_flight_units[key]
            show()
    except (KeyboardInterrupt, ConfigError, RunWriteError) as exc:
        if isinstance(exc, KeyboardInterrupt):
            exc.marked_folder = ("sweep", sweep_dir)  # the CLI names it, and how to continue it
        for t, outcome in runner.stop():  # every running trial records itself as interrupted
            settle(t, outcome)
        try:
            refresh(cfg, trials, sweep_dir)
        except RunWriteError:
            pass  # the first error is the one to report
        progress.close()
        raise
    show()
    if last:
        progress.close()
    return trained


def _attempted_since(folder: Path, began: float) -> bool:
    """Whether another process recorded an attempt at this trial after `began` (then it is theirs)."""
    try:
        data = json.loads((folder / "status.json").read_text())
        holder = Holder.from_dict(data)
    except (OSError, ValueError, AttributeError):
        return False
    return holder is not None and holder.heartbeat >= began


@contextlib.contextmanager
def _keras_imported_quietly():
    """Planning vectorised groups may build models here (work.preflight imports Keras), and Keras imports
    TensorFlow, whose start-up lines (`failed call to cuInit ... (303)` on a machine without a GPU) a plain
    run and a worker hold back with import_quietly: the sweep's process does the same, only if it imports
    Keras at all (most sweeps never build a model in this process)."""
    from ..backend import import_quietly, installed

    class QuietFirst(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "keras" and self in sys.meta_path:
                sys.meta_path.remove(self)
                if installed("tensorflow"):
                    import_quietly("tensorflow")
            return None

    finder = QuietFirst()
    if "keras" not in sys.modules:
        sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        if finder in sys.meta_path:
            sys.meta_path.remove(finder)
