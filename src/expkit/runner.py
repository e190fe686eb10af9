"""One experiment end to end: data -> model -> checks -> train -> run folder."""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

from .config import ExperimentConfig
from .errors import ConfigError, RunWriteError
from .runfolder import (DIVERGED, DONE, FAILED, FINISHED, INTERRUPTED, PRUNED, RUNNING, ClaimLost, Heartbeat,
                        RunFolder, RunRecord, now_iso)


def prepare(cfg: ExperimentConfig, *, dataset=None, load_data: bool = True):
    """(dataset or None, model) after every pre-training check; user mistakes raise ConfigError.

    The one path for single runs, sweep trials (which pass the dataset they share), `summary` and
    `--dry-run` (no data: the input shape is probed, or taken from model.input_shape)."""
    from .backend import activate, current, set_precision
    from .checks import check_experiment
    from .data import probe_dataset
    from .models import build_model
    from .repro import load_dataset  # the data package's, noting the files read (results.json's data hash)

    activate(cfg.backend)  # a no-op when Keras already runs on it; a clear error when on another
    set_precision(cfg.train.precision)
    if dataset is None and load_data:
        dataset = load_dataset(cfg.data, cfg.seed, cfg.train.loss)
    if dataset is not None:
        shape, classes = dataset.input_shape, dataset.num_classes
    else:
        try:
            shape, classes = probe_dataset(cfg.data)
        except ConfigError:
            # Data that is not on this machine: a config that states its input shape still builds.
            if cfg.model.input_shape is None:
                raise
            shape, classes = tuple(cfg.model.input_shape), None
    model = build_model(cfg, shape, classes)
    check_experiment(cfg, model, dataset, classes, has_gpu=bool(current().gpus()))
    return dataset, model


def ensure_writable(folder: str | Path) -> Path:
    """Prove that `folder` can be created and written, before any work and without leaving anything:
    a temporary file is made and removed in its nearest existing ancestor."""
    import tempfile

    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        what = "is a file" if existing == folder else f"lies under a file ({existing})"
        raise ConfigError(f"{what}; --runs-dir needs a folder (it is created when missing)", file=folder)
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".expkit-write-test-"):
            pass
    except OSError as exc:
        raise ConfigError(f"cannot write here ({existing}: {exc.strerror or exc})", file=folder) from None
    return folder


def run_experiment(cfg: ExperimentConfig, *, runs_dir: str | Path = "runs", device: str = "auto",
                   folder: RunFolder | None = None, trial: dict | None = None, dataset=None,
                   keep_model: list | None = None, resume: bool = False, prune=None) -> RunFolder:
    """Train `cfg` and record it. Returns the run folder; its results.json holds the outcome.

    User mistakes (ConfigError) are raised before the folder is written. A NaN loss ends the run as
    'diverged'; another exception marks it 'failed' and is re-raised; Ctrl-C or SIGTERM marks it
    'interrupted' with the epochs that finished. `keep_model`, a list, receives the trained model.
    `resume`: `folder` holds an unfinished run of `cfg`, which continues there from its checkpoint
    (from its first epoch when it has none), metrics.csv continued. `prune(history)`: called after each
    epoch (a sweep's pruner); True stops the run there as 'pruned'.
    """
    from .backend import activate, current, seed_everything
    from .checkpoint import read_checkpoint, save_model
    from .tracking import Trackers, check_trackers
    from .train import TrainResult, train

    check_trackers(cfg.track)
    activate(cfg.backend, device=device, deterministic=cfg.train.deterministic)
    backend = current()
    device_name = backend.select_device(device)
    inter_op_threads = backend.set_inter_op_threads(cfg.train.inter_op_threads)
    seed_everything(cfg.seed, cfg.train.deterministic)
    dataset, model = prepare(cfg, dataset=dataset)

    run = folder or RunFolder.create(runs_dir, cfg.name)
    trackers = Trackers(cfg.track, run.path, cfg.to_dict(), trial)  # before the record, which lists their versions
    record = new_record(run, cfg, model, dataset, device_name=device_name, trial=trial,
                        inter_op_threads=inter_op_threads)
    checkpoint = read_checkpoint(run.path) if resume else None
    if resume:
        continue_record(run, record, checkpoint.epoch if checkpoint else 0)
    result = TrainResult(history=list(checkpoint.state["history"]) if checkpoint else [])  # kept if stopped again early
    try:
        start_run(run, cfg, model, resume=resume)
        trackers.start(checkpoint.state["history"] if checkpoint else [])

        def on_epoch(history):
            run.write_metrics(history)
            run.beat()
            trackers.log_epoch(history[-1])
            if prune is not None and not result.diverged and prune(history):
                result.pruned = True

        with Heartbeat(run.beat):
            train(cfg, dataset, model, on_epoch=on_epoch, result=result,
                  checkpoint_dir=run.path if cfg.train.checkpoint else None, resume=checkpoint)
        status = DIVERGED if result.diverged else PRUNED if result.pruned else DONE
        if status == DONE and cfg.train.save_model:
            save_model(model, run.path)
    except KeyboardInterrupt as exc:
        finish_run(run, record, result, INTERRUPTED, INTERRUPTED_MESSAGE, trackers)
        exc.marked_folder = ("run", run.path)  # the CLI names it, and how to resume it
        raise
    except ClaimLost:
        raise  # another process owns the folder now: write nothing more
    except OSError as exc:
        _finish_quietly(run, record, result, f"could not write the run folder: {exc}")
        raise RunWriteError(f"{run.path}: could not write the run folder: {exc.strerror or exc}") from None
    except ConfigError as exc:
        finish_run(run, record, result, FAILED, str(exc), trackers)
        raise
    except Exception as exc:
        finish_run(run, record, result, FAILED, f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}", trackers)
        raise
    try:
        finish_run(run, record, result, status, None, trackers)
    except OSError as exc:
        _finish_quietly(run, record, result, f"could not write the run folder: {exc}")
        raise RunWriteError(f"{run.path}: could not write the run folder: {exc.strerror or exc}") from None
    if keep_model is not None:
        keep_model.append(model)
    return run


def continue_record(run: RunFolder, record: RunRecord, epoch: int) -> None:
    """`record` continues the run's stopped attempt: its start time is the first attempt's, and it
    lists every resumption (the epochs finished before it)."""
    from .repro import resumed_entry

    earlier = _earlier_record(run)
    record.started = (earlier.started if earlier else None) or record.started
    record.resumed = [*(earlier.resumed if earlier else []), resumed_entry(epoch)]


def _earlier_record(run: RunFolder) -> RunRecord | None:
    from .runfolder import DamagedRecord, read_record

    try:
        return read_record(run.path)
    except DamagedRecord:
        return None


def new_record(run: RunFolder, cfg: ExperimentConfig, model, dataset, *, device_name: str, trial: dict | None = None,
               data_files=None, **extra) -> RunRecord:
    """The record of a run about to train `model` on `dataset` (not written yet): what every run's
    results.json says of its config, model, data, device and libraries. `data_files`: the files the
    dataset was read from, when it was loaded in another process (their hash is the data's)."""
    from .backend import current, versions
    from .models import count_params
    from .repro import data_fingerprint, describe, library_versions, weights_files

    from .usercode import user_modules

    total, trainable = count_params(model)
    described = describe(dataset, device_name)
    described["user_code"] = user_modules(cfg.to_dict()) or None  # imported by now: model, loss, callbacks built
    described["weights_files"] = weights_files(cfg.to_dict())
    if described["data_sha256"] is None and data_files:
        described["data_sha256"], described["data_files"] = data_fingerprint(data_files)
    return run.new_record(
        cfg.name, seed=cfg.seed, trial=trial, params=total, trainable_params=trainable,
        n_train=len(dataset.x_train), n_val=len(dataset.x_val),
        n_test=0 if dataset.x_test is None else len(dataset.x_test),
        device=device_name, backend=current().name, versions=library_versions(versions()), **extra, **described)


def start_run(run: RunFolder, cfg: ExperimentConfig, model, *, resume: bool = False) -> None:
    """Mark the run as running and write what is known before training: its config and model summary."""
    from .models import summary_text

    run.set_status(RUNNING)
    if resume:  # the stopped attempt's record: it would outvote status.json; the checkpoint has its epochs
        (run.path / "results.json").unlink(missing_ok=True)
    run.write_config(cfg.to_dict())
    run.write_summary(summary_text(model))


INTERRUPTED_MESSAGE = "interrupted (Ctrl-C or SIGTERM)"


def finish_run(run: RunFolder, record: RunRecord, result, status: str, error: str | None, trackers=None) -> None:
    """Write what was finished: metrics, the record, then the final status (in that order); a
    finished run's checkpoint is removed (model.keras is the model); then the trackers finish."""
    history = result.history
    record.fit_seconds = round(result.fit_seconds, 3)
    record.summarise(history)
    record.status, record.error = status, _plain(error)
    record.test = result.test
    record.class_weight = getattr(result, "class_weight", None)
    record.sample_weight = getattr(result, "sample_weight", None)
    confusion = getattr(result, "confusion", None)
    if confusion is not None:
        from .runfolder.confusion import confusion_csv_text, per_class_scores

        record.per_class = per_class_scores(confusion, result.classes)
        run.write_confusion(confusion_csv_text(confusion, result.classes))
    record.stopped_early, record.diverged = bool(result.stopped_early), bool(result.diverged)
    record.steps_per_execution = result.steps_per_execution
    record.eval_batch_size = result.eval_batch_size or None
    record.jit_compile = result.jit_compile
    record.ended = now_iso()
    run.write_metrics(history)
    run.write_record(record)
    run.set_status(status)
    if history:
        try:
            from .report.plots import plot_curves

            plot_curves(run.path / "metrics.csv", run.path / "curves.png", title=curves_title(record))
        except Exception as exc:  # a plot must never cost the run's record
            print(f"expkit: could not draw curves.png: {exc}", file=sys.stderr)
    if confusion is not None:
        try:
            from .report.plots import plot_confusion

            plot_confusion(confusion, result.classes, run.path / "confusion.png", title=curves_title(record))
        except Exception as exc:
            print(f"expkit: could not draw confusion.png: {exc}", file=sys.stderr)
    if status in FINISHED:
        from .checkpoint import remove_checkpoint

        remove_checkpoint(run.path)
    if trackers is not None:
        trackers.finish(record)


def curves_title(record: RunRecord) -> str:
    """curves.png's title: the run's name, and for a sweep's trial what sets it apart (its values and
    seed), so two trials' plots are told apart."""
    trial = record.trial or {}
    values = " ".join(f"{k}={v}" for k, v in (trial.get("values") or {}).items())
    seed = f"seed={trial['seed']}" if trial.get("seed") is not None else ""
    return " ".join(part for part in (record.name, values, seed) if part)


def _plain(text: str | None) -> str | None:
    """Error text without terminal colour codes (Keras colours some of its messages)."""
    import re

    return None if text is None else re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)


def _finish_quietly(run: RunFolder, record: RunRecord, result, error: str) -> None:
    """After a write failure: try to leave records that agree (failed), without raising again."""
    try:
        finish_run(run, record, result, FAILED, error)
    except Exception:
        try:
            run.set_status(FAILED)
        except Exception:
            pass
