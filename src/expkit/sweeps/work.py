"""The body of one trial, below every executor: claim it (exactly one process can), set an earlier
unfinished attempt aside or resume it, train, record, release. Also the one pre-training check loop
(`preflight`: the sweep's checks, the dry run and the vectorised groups' model shapes) and the datasets
a process keeps between the trials it trains.

Every executor (this process, worker processes, Ray tasks) and the vectorised groups call these; this
module imports none of them.
"""

from __future__ import annotations

import gc
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from ..config import ExperimentConfig
from ..errors import ConfigError, RunWriteError, first_line
from ..runfolder import (CLAIMS, DEFAULT_STALE_AFTER, FAILED, FINISHED, INTERRUPTED, PRUNED, RUNNING, Claim,
                         ClaimLost, RunFolder, RunRecord, read_metrics, read_status, set_aside)
from ..stopping import check as check_stop
from .trials import Trial


@dataclass
class TrialOutcome:
    status: str          # the trial's status after this call
    trained: bool        # this process trained it (False: skipped, or held by another process)
    message: str = ""


def data_key(cfg: ExperimentConfig) -> str:
    """What a trial's dataset depends on: trials with equal keys share one."""
    return json.dumps([cfg.data.model_dump(mode="json"), cfg.seed, cfg.train.loss])


def load_with_files(cfg: ExperimentConfig) -> tuple:
    """(dataset, the files it was read from) for a trial: what its record's data hash covers."""
    from ..repro import data_files, load_dataset  # the data package's, noting the files read

    dataset = load_dataset(cfg.data, cfg.seed, cfg.train.loss)
    return dataset, data_files(dataset)


class DatasetCache:
    """The datasets a process has loaded (or was handed), each with the files it was read from, keyed by
    `data_key`: the trials of one sweep share them."""

    def __init__(self, loaded: dict | None = None):
        self._loaded: dict[str, tuple] = dict(loaded or {})

    def get(self, cfg: ExperimentConfig):
        """A trial's dataset; one trial at a time keeps only the dataset in use in memory."""
        key = data_key(cfg)
        if key not in self._loaded:
            self._loaded.clear()
        return self.get_with_files(cfg)[0]

    def get_with_files(self, cfg: ExperimentConfig) -> tuple:
        key = data_key(cfg)
        if key not in self._loaded:
            self._loaded[key] = load_with_files(cfg)
        return self._loaded[key]

    def items(self) -> list[tuple[str, tuple]]:
        """(data_key, (dataset, files)) of every dataset held."""
        return list(self._loaded.items())

    def keep(self, cfgs: list) -> None:
        """Drop the datasets no config in `cfgs` needs (one chunk's data in memory at a time)."""
        keys = {data_key(c) for c in cfgs}
        self._loaded = {k: d for k, d in self._loaded.items() if k in keys}


def claim_trial(trial: Trial, sweep_dir: Path, stale_after: float) -> tuple[Claim | None, str]:
    """The claim sequence: (the claim, its status) when this process may train `trial`; else (None, the
    trial's status): finished already, or RUNNING when another live process holds it."""
    path = sweep_dir / trial.id
    status = read_status(path, stale_after)
    if status in FINISHED:
        return None, status
    claim = Claim.acquire(sweep_dir / CLAIMS, trial.id, stale_after)
    if claim is None:
        return None, RUNNING
    status = read_status(path, stale_after)  # it may have finished between the look and the claim
    if status in FINISHED:
        claim.release()
        return None, status
    return claim, status


def resume_point(path: Path, status: str, backend: str | None):
    """The checkpoint an interrupted attempt at a trial continues from, or None; and why an earlier
    attempt's checkpoint is not used ('' when there was none to use). `backend`: what this attempt
    trains on; a checkpoint another backend wrote is not continued (what runs is what was asked)."""
    if status != INTERRUPTED or not path.is_dir():
        return None, ""
    from ..checkpoint import read_checkpoint

    found = read_checkpoint(path)
    written = (found.state.get("backend") if found else None) or backend
    if found is not None and backend and written != backend:
        return None, f"its checkpoint is from {written}, this attempt trains on {backend}; "
    return found, ""


def open_attempt(path: Path, status: str, *, resumable: bool = True, backend: str | None = None,
                 point: tuple | None = None) -> tuple[str, bool]:
    """Make `path` ready for a new attempt at its trial: an interrupted attempt with a checkpoint is
    resumed (when `resumable`), any other earlier attempt is set aside. `point`: resume_point's answer,
    when the caller already asked. Returns (what was done, as a note for the trial's line, and whether
    it resumes)."""
    note, resume = "", False
    if path.exists():
        found, why = (point or resume_point(path, status, backend)) if resumable else (None, "")
        resume = found is not None
        note = (f"resuming the interrupted attempt after epoch {found.epoch}; " if resume
                else f"{why}earlier attempt ({status}) kept in {set_aside(path)}; ")
    path.mkdir(parents=True, exist_ok=resume)
    return note, resume


def run_trial(trial: Trial, sweep_dir: Path, *, device: str = "auto", datasets: DatasetCache | None = None,
              stale_after: float = DEFAULT_STALE_AFTER, log=None) -> TrialOutcome:
    """Train one trial unless it is finished or another live process holds it.

    ConfigError (a user mistake found with the data) is recorded in the trial's folder and re-raised;
    other exceptions are recorded and end in a `failed` outcome; KeyboardInterrupt is recorded
    (`interrupted`) and re-raised.
    """
    from ..runner import run_experiment

    log = log or sys.stderr
    check_stop()  # a stop requested while this process was between trials starts nothing new
    path = sweep_dir / trial.id
    claim, status = claim_trial(trial, sweep_dir, stale_after)
    if claim is None:
        return (TrialOutcome(status, False, f"{status}, skipped") if status in FINISHED
                else TrialOutcome(RUNNING, False, "running in another process"))
    try:
        note, resume = open_attempt(path, status, backend=trial.config.backend)
        folder = RunFolder(path, claim)
        print(f"{trial.heading()}: {note}training", file=log)
        try:
            cfg = trial.config
            dataset = (datasets or DatasetCache()).get(cfg)
            pruner = _pruner(trial, sweep_dir)
            run_experiment(cfg, device=device, folder=folder, dataset=dataset, resume=resume,
                           trial=trial.record(),
                           prune=pruner.should_stop if pruner else None)
        except ClaimLost as exc:
            return TrialOutcome(RUNNING, False, str(exc))
        except RunWriteError:
            raise  # the sweep folder cannot be written: every later trial would fail the same way
        except (KeyboardInterrupt, ConfigError) as exc:
            _record_early_failure(folder, trial, exc)
            raise
        except Exception as exc:  # one failing trial does not stop the others
            _record_early_failure(folder, trial, exc)
            return TrialOutcome(FAILED, True, f"failed: {first_line(exc)}")
        finally:
            import keras

            keras.backend.clear_session()
            gc.collect()
        status = read_status(path, stale_after)
        if status == PRUNED:
            return TrialOutcome(status, True, pruner.reason(len(read_metrics(path))))
        return TrialOutcome(status, True, status)
    finally:
        claim.release()


def _pruner(trial: Trial, sweep_dir: Path):
    """The trial's pruning rule (sweep.prune) against the other trials of its sweep folder, or None."""
    if trial.prune is None:
        return None
    from .pruning import SweepPruner

    return SweepPruner(trial.prune, sweep_dir, trial.id, trial.config.train.epochs)


def _record_early_failure(folder: RunFolder, trial: Trial, exc: BaseException) -> None:
    """A trial that failed (or was stopped) before run_experiment wrote its record still gets one."""
    if (folder.path / "results.json").exists():
        return
    status = INTERRUPTED if isinstance(exc, KeyboardInterrupt) else FAILED
    try:
        folder.write_config(trial.config.to_dict())
        record: RunRecord = folder.new_record(trial.config.name, seed=trial.seed, status=status,
                                              error=str(exc) or type(exc).__name__,
                                              trial=trial.record())
        folder.write_record(record)
        folder.set_status(status)
    except (OSError, ClaimLost):
        pass


def preflight(trials: list[Trial], *, numbers: list[int] | None = None, measure=None) -> dict:
    """Every trial's config through the pre-training checks, with no data loaded: a mistake in the
    ninth trial, or a missing dataset file, stops the sweep before the first trial trains. The one
    check loop: the sweep's checks, `--dry-run` and the vectorised groups' model shapes.

    `numbers`: the trials' positions in the sweep, for the message (else 1, 2, ...). `measure(model)`:
    what to measure on each trial's built model (each distinct model is built once); returns trial
    id -> measure's answer (empty without `measure`)."""
    import keras

    from ..runner import prepare

    measured: dict[str, object] = {}
    by_key: dict[str, object] = {}
    for i, trial in zip(numbers or range(1, len(trials) + 1), trials):
        cfg = trial.config.to_dict()
        cfg.pop("seed")
        key = json.dumps(cfg, sort_keys=True, default=str)
        if key not in by_key:  # seeds do not change what the checks see
            try:
                _, model = prepare(trial.config, load_data=False)
                by_key[key] = measure(model) if measure else None
            except ConfigError as exc:
                error = ConfigError(f"trial {i} ({trial.label()}, seed {trial.seed}): {exc}")
                error.number = i  # which one, when several processes check parts of a sweep
                raise error from None
            finally:
                keras.backend.clear_session(free_memory=False)  # a collection per trial took 0.25 s each
        measured[trial.id] = by_key[key]
    gc.collect()
    return measured if measure else {}


