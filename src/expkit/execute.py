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
        from .data import load_dataset

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
        note = ""
        if path.exists():
            note = f"earlier attempt ({status}) kept in {set_aside(path)}; "
        path.mkdir(parents=True)
        folder = RunFolder(path, claim)
        print(f"{_head(trial)}: {note}training", file=log)
        try:
            cfg = trial.config
            dataset = (datasets or DatasetCache()).get(cfg)
            run_experiment(cfg, device=device, folder=folder, dataset=dataset,
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


def preflight(trials: list[Trial]) -> None:
    """Every trial's config through the pre-training checks, with no data loaded: a mistake in the
    ninth trial, or a missing dataset file, stops the sweep before the first trial trains."""
    import keras

    from .runner import prepare

    checked: set[str] = set()
    for i, trial in enumerate(trials, 1):
        cfg = trial.config.to_dict()
        cfg.pop("seed")
        key = json.dumps(cfg, sort_keys=True, default=str)
        if key in checked:  # seeds do not change what the checks see
            continue
        checked.add(key)
        try:
            prepare(trial.config, load_data=False)
        except ConfigError as exc:
            raise ConfigError(f"trial {i} ({trial.label()}, seed {trial.seed}): {exc}") from None
        finally:
            keras.backend.clear_session()


def run_sweep(cfg: ExperimentConfig, *, runs_dir="runs", device: str = "auto", fail_fast: bool = False,
              stale_after: float = DEFAULT_STALE_AFTER, log=None) -> tuple[Path, dict]:
    """Run every trial not yet finished; returns (sweep folder, counts by status).

    Trials held by other live processes are waited for; trials that another process attempted
    while this one ran are left as that process recorded them (each process tries a trial once).
    """
    from .runner import ensure_writable

    log = log or sys.stderr
    trials = expand_sweep(cfg)
    sweep_dir = ensure_writable(Path(runs_dir) / cfg.name)
    preflight([t for t in trials if read_status(sweep_dir / t.id, stale_after) not in FINISHED])
    sweep_dir.mkdir(parents=True, exist_ok=True)
    refresh(cfg, trials, sweep_dir)
    began = time.time()
    datasets = DatasetCache()
    attempted: set[str] = set()
    waiting_said: set[str] = set()
    while True:
        waiting = []
        for i, trial in enumerate(trials, 1):
            if trial.id in attempted:
                continue
            head = _head(trial, i, len(trials))
            status = read_status(sweep_dir / trial.id, stale_after)
            if status in FINISHED or (status not in (PENDING, RUNNING) and _attempted_since(sweep_dir / trial.id, began)):
                by = " by another process" if trial.id in waiting_said else ", skipped"
                print(f"{head}: {status}{by}", file=log)
                attempted.add(trial.id)
                continue
            if status == RUNNING:  # its holder is alive
                if trial.id not in waiting_said:
                    print(f"{head}: running in another process; waiting for it", file=log)
                    waiting_said.add(trial.id)
                waiting.append(trial)
                continue
            try:
                outcome = run_trial(trial, sweep_dir, device=device, datasets=datasets, stale_after=stale_after,
                                    log=_Prefixed(log, f"[{i}/{len(trials)}] "))
            except (KeyboardInterrupt, ConfigError, RunWriteError):
                try:
                    refresh(cfg, trials, sweep_dir)
                except RunWriteError:
                    pass  # the first error is the one to report
                raise
            if not outcome.trained and outcome.status == RUNNING:
                if trial.id not in waiting_said:
                    print(f"{head}: {outcome.message}; waiting for it", file=log)
                    waiting_said.add(trial.id)
                waiting.append(trial)
                continue
            attempted.add(trial.id)
            print(f"{head}: {outcome.message}", file=log)
            if outcome.trained:
                refresh(cfg, trials, sweep_dir)
            if outcome.status == FAILED and fail_fast:
                print("--fail-fast: stopping after the first failed trial", file=log)
                return sweep_dir, refresh(cfg, trials, sweep_dir, plots=True)
        if not waiting:
            break
        time.sleep(POLL_SECONDS)
    counts = refresh(cfg, trials, sweep_dir, plots=True)
    return sweep_dir, counts


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
