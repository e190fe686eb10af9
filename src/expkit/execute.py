"""Running a sweep's trials: one trial as its own function, and the loop that drives them.

`run_trial` claims a trial (exactly one process can), sets an earlier unfinished attempt aside,
trains, records and releases. Any number of processes may run `run_sweep` on one sweep folder:
each trial is trained once, and a process that finds trials held by others waits for them.
"""

from __future__ import annotations

import gc
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .config import ExperimentConfig
from .errors import ConfigError, RunWriteError
from .runfolder import (DEFAULT_STALE_AFTER, FAILED, FINISHED, PENDING, RUNNING, Claim, ClaimLost, RunFolder,
                        RunRecord, Holder, read_status)
from .stopping import check as check_stop
from .trials import Trial, expand_sweep, refresh

CLAIMS = ".claims"
POLL_SECONDS = 1.0


@dataclass
class TrialOutcome:
    status: str          # the trial's status after this call
    trained: bool        # this process trained it (False: skipped, or held by another process)
    message: str = ""


def set_aside(path: Path) -> Path:
    """Move an earlier, unfinished attempt to .attempts/<id>-<n>: nothing is deleted."""
    attempts = path.parent / ".attempts"
    attempts.mkdir(exist_ok=True)
    n = 1
    while (attempts / f"{path.name}-{n}").exists():
        n += 1
    target = attempts / f"{path.name}-{n}"
    shutil.move(str(path), str(target))
    return target


class DatasetCache:
    """The last dataset loaded, keyed by what determines it: trials of one sweep share it."""

    def __init__(self):
        self._key = None
        self._dataset = None

    def get(self, cfg: ExperimentConfig):
        from .repro import load_dataset  # the data package's, noting the files read (results.json's data hash)

        key = json.dumps([cfg.data.model_dump(mode="json"), cfg.seed, cfg.train.loss])
        if key != self._key:
            self._key, self._dataset = None, None  # one dataset in memory at a time
            self._dataset = load_dataset(cfg.data, cfg.seed, cfg.train.loss)
            self._key = key
        return self._dataset


def run_trial(trial: Trial, sweep_dir: Path, *, device: str = "auto", datasets: DatasetCache | None = None,
              stale_after: float = DEFAULT_STALE_AFTER, log=None) -> TrialOutcome:
    """Train one trial unless it is finished or another live process holds it.

    ConfigError (a user mistake found with the data) is recorded in the trial's folder and re-raised;
    other exceptions are recorded and end in a `failed` outcome; KeyboardInterrupt is recorded
    (`interrupted`) and re-raised.
    """
    from .runner import run_experiment

    log = log or sys.stderr
    check_stop()  # a stop requested while this process was between trials starts nothing new
    path = sweep_dir / trial.id
    status = read_status(path, stale_after)
    if status in FINISHED:
        return TrialOutcome(status, False, f"{status}, skipped")
    claim = Claim.acquire(sweep_dir / CLAIMS, trial.id, stale_after)
    if claim is None:
        return TrialOutcome(RUNNING, False, "running in another process")
    try:
        status = read_status(path, stale_after)  # it may have finished between the look and the claim
        if status in FINISHED:
            return TrialOutcome(status, False, f"{status}, skipped")
        note, resume = "", False
        if path.exists():
            from .checkpoint import resumable_epoch
            from .runfolder import INTERRUPTED

            epoch = resumable_epoch(path) if status == INTERRUPTED else None
            resume = epoch is not None  # an interrupted attempt continues from its checkpoint
            note = (f"resuming the interrupted attempt after epoch {epoch}; " if resume
                    else f"earlier attempt ({status}) kept in {set_aside(path)}; ")
        path.mkdir(parents=True, exist_ok=resume)
        folder = RunFolder(path, claim)
        print(f"{_head(trial)}: {note}training", file=log)
        try:
            cfg = trial.config
            dataset = (datasets or DatasetCache()).get(cfg)
            run_experiment(cfg, device=device, folder=folder, dataset=dataset, resume=resume,
                           trial={"id": trial.id, "values": trial.values, "seed": trial.seed})
        except ClaimLost as exc:
            return TrialOutcome(RUNNING, False, str(exc))
        except RunWriteError:
            raise  # the sweep folder cannot be written: every later trial would fail the same way
        except (KeyboardInterrupt, ConfigError) as exc:
            _record_early_failure(folder, trial, exc)
            raise
        except Exception as exc:  # one failing trial does not stop the others
            _record_early_failure(folder, trial, exc)
            return TrialOutcome(FAILED, True, f"failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
        finally:
            import keras

            keras.backend.clear_session()
            gc.collect()
        status = read_status(path, stale_after)
        return TrialOutcome(status, True, status)
    finally:
        claim.release()


def _record_early_failure(folder: RunFolder, trial: Trial, exc: BaseException) -> None:
    """A trial that failed (or was stopped) before run_experiment wrote its record still gets one."""
    if (folder.path / "results.json").exists():
        return
    from .runfolder import INTERRUPTED

    status = INTERRUPTED if isinstance(exc, KeyboardInterrupt) else FAILED
    try:
        folder.write_config(trial.config.to_dict())
        record: RunRecord = folder.new_record(trial.config.name, seed=trial.seed, status=status,
                                              error=str(exc) or type(exc).__name__,
                                              trial={"id": trial.id, "values": trial.values, "seed": trial.seed})
        folder.write_record(record)
        folder.set_status(status)
    except (OSError, ClaimLost):
        pass


def _head(trial: Trial, i: int | None = None, n: int | None = None) -> str:
    where = f"[{i}/{n}] " if i is not None else ""
    return f"{where}{trial.label()} seed={trial.seed} ({trial.id})"


def preflight(trials: list[Trial], *, numbers: list[int] | None = None, shapes: bool = False) -> dict:
    """Every trial's config through the pre-training checks, with no data loaded: a mistake in the
    ninth trial, or a missing dataset file, stops the sweep before the first trial trains.

    `numbers`: the trials' positions in the sweep, for the message (else 1, 2, ...). With `shapes`,
    returns each trial's vectorize.grouping.ModelShape, measured on the models the checks built."""
    import keras

    from .runner import prepare

    if shapes:
        from .vectorize.launch import model_shape
    measured: dict[str, object] = {}
    by_key: dict[str, object] = {}
    for i, trial in zip(numbers or range(1, len(trials) + 1), trials):
        cfg = trial.config.to_dict()
        cfg.pop("seed")
        key = json.dumps(cfg, sort_keys=True, default=str)
        if key not in by_key:  # seeds do not change what the checks see
            try:
                _, model = prepare(trial.config, load_data=False)
                by_key[key] = model_shape(model) if shapes else None
            except ConfigError as exc:
                error = ConfigError(f"trial {i} ({trial.label()}, seed {trial.seed}): {exc}")
                error.number = i  # which one, when several processes check parts of a sweep
                raise error from None
            finally:
                keras.backend.clear_session(free_memory=False)  # a collection per trial took 0.25 s each
        measured[trial.id] = by_key[key]
    gc.collect()
    return measured if shapes else {}


def trial_backend(trial: Trial) -> str:
    """The Keras backend a trial trains on (its config's `backend`)."""
    return trial.config.backend


class InProcess:
    """Trials one at a time in this process: `--jobs 1` on one backend."""

    in_process = True

    def __init__(self, sweep_dir: Path, *, device: str, stale_after: float, log):
        self.sweep_dir, self.device, self.stale_after, self.log = sweep_dir, device, stale_after, log
        self.datasets = DatasetCache()
        self.in_flight: dict[str, tuple[int, Trial, int]] = {}

    def preflight(self, trials: list[Trial]) -> None:
        from .backend import activate

        if trials:  # Keras is imported only when something trains here
            activate(trial_backend(trials[0]), device=self.device,
                     deterministic=any(t.config.train.deterministic for t in trials))
            preflight(trials)

    def room(self, trial: Trial) -> bool:
        return not self.in_flight

    def submit(self, index: int, trial: Trial, total: int) -> None:
        self.in_flight[trial.id] = (index, trial, total)

    def started(self) -> set[str]:
        return set(self.in_flight)

    def collect(self, timeout: float) -> list[tuple[Trial, TrialOutcome]]:
        out = []
        for key, (index, trial, total) in list(self.in_flight.items()):
            try:
                outcome = run_trial(trial, self.sweep_dir, device=self.device, datasets=self.datasets,
                                    stale_after=self.stale_after, log=_Prefixed(self.log, f"[{index}/{total}] "))
            finally:
                del self.in_flight[key]
            out.append((trial, outcome))
        return out

    def stop(self) -> list[tuple[Trial, TrialOutcome]]:
        return []  # the interrupted trial recorded itself on the way out

    def close(self) -> None:
        pass


def make_executor(kind: str, jobs: int, trials: list[Trial], sweep_dir: Path, *, device: str, stale_after: float,
                  log, live: bool, resources=None, address: str | None = None):
    """The executor for `--executor`/`--jobs`: this process, local worker processes, or Ray.

    Worker processes are used for more than one job at a time, and also for one job when the
    trials name different Keras backends (or one this process cannot switch to): a process runs one
    Keras backend for life."""
    if kind == "ray":
        from .ray_executor import RayExecutor

        return RayExecutor(sweep_dir, device=device, stale_after=stale_after, log=log, resources=resources,
                           address=address)
    if kind != "local":
        raise ConfigError(f"unknown executor '{kind}' (known: local, ray)", path="sweep.executor")
    from .backend import can_run_here

    backends = {trial_backend(t) for t in trials}
    if jobs == 1 and len(backends) == 1 and can_run_here(next(iter(backends))):
        return InProcess(sweep_dir, device=device, stale_after=stale_after, log=log)
    from .workers import WorkerPool

    return WorkerPool(jobs, sweep_dir, device=device, stale_after=stale_after, log=log, quiet_stdout=live)


def run_sweep(cfg: ExperimentConfig, *, runs_dir="runs", device: str = "auto", fail_fast: bool = False,
              stale_after: float = DEFAULT_STALE_AFTER, log=None, jobs: int | None = None,
              executor: str | None = None, address: str | None = None) -> tuple[Path, dict]:
    """Run every trial not yet finished; returns (sweep folder, counts by status).

    `jobs`, `executor` and `address` override sweep.jobs, sweep.executor and sweep.address: `jobs`
    trials at once in worker processes on this machine, or each trial a Ray task. Trials held by
    other live processes are waited for; trials that another process attempted while this one ran
    are left as that process recorded them (each process tries a trial once).
    """
    from .progress import ProgressLog, SweepProgress
    from .runner import ensure_writable
    from .vectorize import plan_vectorised, run_groups, start_lanes

    log = log or sys.stderr
    jobs = cfg.sweep.jobs if jobs is None else jobs
    if not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"--jobs must be a whole number of at least 1, found {jobs!r}")
    kind = executor or cfg.sweep.executor
    trials = expand_sweep(cfg)
    ensure_writable(runs_dir)
    sweep_dir = ensure_writable(Path(runs_dir) / cfg.name)
    isatty = getattr(log, "isatty", None)
    live = bool(isatty and isatty()) and not (kind == "local" and jobs == 1)
    progress = SweepProgress(cfg.name, log, live=live)
    say = ProgressLog(progress)
    runner = make_executor(kind, jobs, trials, sweep_dir.absolute(), device=device, stale_after=stale_after,
                           log=say, live=live, resources=cfg.sweep.resources, address=address or cfg.sweep.address)
    try:
        # sweep.vectorize: JAX processes started now when the config says a group is likely; they then
        # check the trials they will train, and this process checks only the rest (on their backend).
        lanes = start_lanes(cfg, trials, sweep_dir, device=device, stale_after=stale_after)
        pending = [t for t in trials if read_status(sweep_dir / t.id, stale_after) not in FINISHED]
        try:
            if lanes is None:
                runner.preflight(pending)
            plan = plan_vectorised(cfg, trials, sweep_dir, device=device, stale_after=stale_after, log=say,
                                   lanes=lanes)
            if lanes is not None:
                runner.preflight([t for t in pending if t.id not in plan.checked])
        except BaseException:
            if lanes is not None:
                lanes.cancel()
            raise
        vectorised = run_groups(cfg, trials, sweep_dir, plan, stale_after=stale_after, log=say)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        refresh(cfg, trials, sweep_dir)
        _drive(cfg, trials, sweep_dir, runner, progress, fail_fast=fail_fast, stale_after=stale_after,
               announced=set(vectorised))
    finally:
        runner.close()
    counts = refresh(cfg, trials, sweep_dir, plots=True)
    return sweep_dir, counts


def _drive(cfg: ExperimentConfig, trials: list[Trial], sweep_dir: Path, runner, progress, *, fail_fast: bool,
           stale_after: float, announced: set[str] = frozenset()) -> None:
    """Hand the sweep's trials to `runner` in order, as it has room, until each is finished here,
    recorded by another process, or (after a failure with fail_fast) left for the next run.
    `announced`: trials this command finished already (vectorised), counted without a second line."""
    from .progress import Counts

    began = time.time()
    n = len(trials)
    pos = {t.id: i for i, t in enumerate(trials, 1)}
    state = {t.id: "queued" for t in trials}  # queued, running, waiting (held by another process), done, failed
    queue: list[Trial] = list(trials)
    waiting: list[Trial] = []
    waiting_said: set[str] = set()
    finished_here = 0
    say = progress.log

    def head(t: Trial) -> str:
        return _head(t, pos[t.id], n)

    def show(force: bool = False) -> None:
        started = runner.started()
        c = Counts()
        for t in trials:
            s = state[t.id]
            if s == "done":
                c.done += 1
            elif s == "failed":
                c.failed += 1
            elif s == "waiting" or (s == "running" and t.id in started):
                c.running += 1
            else:
                c.queued += 1
        progress.update(c, finished_here=finished_here, force=force)

    def wait_for(t: Trial, why: str) -> None:
        """`t` is held by another live process: look at it again once that one lets go."""
        if t.id not in waiting_said:
            say(f"{head(t)}: {why}; waiting for it")
            waiting_said.add(t.id)
        waiting.append(t)
        state[t.id] = "waiting"

    def settle(t: Trial, outcome: TrialOutcome, tables: bool = True) -> None:
        nonlocal finished_here
        say(f"{head(t)}: {outcome.message}")
        state[t.id] = "done" if outcome.status in FINISHED else "failed"
        if outcome.trained:
            finished_here += 1
            if tables:  # the manifest and results as trials finish
                refresh(cfg, trials, sweep_dir)

    try:
        show(force=True)
        while queue or runner.in_flight or waiting:
            check_stop()
            for t in list(waiting):  # a holder let go: look at the trial again
                if read_status(sweep_dir / t.id, stale_after) != RUNNING:
                    waiting.remove(t)
                    queue.append(t)
                    state[t.id] = "queued"
            queue.sort(key=lambda t: pos[t.id])
            while queue and runner.room(queue[0]):
                t = queue.pop(0)
                status = read_status(sweep_dir / t.id, stale_after)
                theirs = status not in (PENDING, RUNNING) and _attempted_since(sweep_dir / t.id, began)
                if status in FINISHED or theirs:
                    by = " by another process" if t.id in waiting_said else ", skipped"
                    if t.id not in announced or status not in FINISHED:
                        say(f"{head(t)}: {status}{by}")
                    state[t.id] = "done" if status in FINISHED else "failed"
                    continue
                if status == RUNNING:  # its holder is alive
                    wait_for(t, "running in another process")
                    continue
                runner.submit(pos[t.id], t, n)
                state[t.id] = "running"
            show()
            if not runner.in_flight:
                if waiting:
                    time.sleep(POLL_SECONDS)
                continue
            for t, outcome in runner.collect(POLL_SECONDS):
                if not outcome.trained and outcome.status == RUNNING:
                    wait_for(t, outcome.message)
                    continue
                settle(t, outcome)
                if outcome.status == FAILED and fail_fast and (queue or waiting):
                    say("--fail-fast: stopping after the first failed trial"
                        + ("; waiting for the trials already running" if runner.in_flight else ""))
                    for left in queue + waiting:
                        state[left.id] = "queued"
                    queue.clear()
                    waiting.clear()
            show()
    except (KeyboardInterrupt, ConfigError, RunWriteError):
        for t, outcome in runner.stop():  # every running trial records itself as interrupted
            settle(t, outcome, tables=False)
        try:
            refresh(cfg, trials, sweep_dir)
        except RunWriteError:
            pass  # the first error is the one to report
        progress.close()
        raise
    show()
    progress.close()


def _attempted_since(folder: Path, began: float) -> bool:
    """Whether another process recorded an attempt at this trial after `began` (then it is theirs)."""
    try:
        data = json.loads((folder / "status.json").read_text())
        holder = Holder.from_dict(data)
    except (OSError, ValueError, AttributeError):
        return False
    return holder is not None and holder.heartbeat >= began


class _Prefixed:
    """A log stream that puts the trial's position before run_trial's lines."""

    def __init__(self, stream, prefix: str):
        self._stream, self._prefix = stream, prefix

    def write(self, text: str) -> int:
        return self._stream.write(self._prefix + text if text.strip() else text)

    def flush(self) -> None:
        self._stream.flush()
