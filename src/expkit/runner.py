"""One experiment end to end: data -> model -> checks -> train -> run folder."""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

from .config import ExperimentConfig
from .errors import ConfigError, RunWriteError
from .runfolder import (DIVERGED, DONE, FAILED, INTERRUPTED, RUNNING, ClaimLost, Heartbeat, RunFolder,
                        RunRecord, now_iso)


def prepare(cfg: ExperimentConfig, *, dataset=None, load_data: bool = True):
    """(dataset or None, model) after every pre-training check; user mistakes raise ConfigError.

    The one path for single runs, sweep trials (which pass the dataset they share), `summary` and
    `--dry-run` (no data: the input shape is probed, or taken from model.input_shape)."""
    from .backend import current, set_precision
    from .checks import check_experiment
    from .data import load_dataset, probe_dataset
    from .models import build_model

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
                   keep_model: list | None = None) -> RunFolder:
    """Train `cfg` and record it. Returns the run folder; its results.json holds the outcome.

    User mistakes (ConfigError) are raised before the folder is written. A NaN loss ends the run as
    'diverged'; another exception marks it 'failed' and is re-raised; Ctrl-C or SIGTERM marks it
    'interrupted' with the epochs that finished. `keep_model`, a list, receives the trained model.
    """
    from .backend import current, seed_everything, versions
    from .models import count_params, summary_text
    from .train import TrainResult, train

    backend = current()
    device_name = backend.select_device(device)
    inter_op_threads = backend.set_inter_op_threads(cfg.train.inter_op_threads)
    seed_everything(cfg.seed, cfg.train.deterministic)
    dataset, model = prepare(cfg, dataset=dataset)

    run = folder or RunFolder.create(runs_dir, cfg.name)
    total, trainable = count_params(model)
    record = run.new_record(
        cfg.name, seed=cfg.seed, trial=trial, params=total, trainable_params=trainable,
        n_train=len(dataset.x_train), n_val=len(dataset.x_val),
        n_test=0 if dataset.x_test is None else len(dataset.x_test),
        device=device_name, inter_op_threads=inter_op_threads, versions=versions())
    result = TrainResult()
    try:
        run.set_status(RUNNING)
        run.write_config(cfg.to_dict())
        run.write_summary(summary_text(model))

        def on_epoch(history):
            run.write_metrics(history)
            run.beat()

        with Heartbeat(run.beat):
            train(cfg, dataset, model, on_epoch=on_epoch, result=result)
        status = DIVERGED if result.diverged else DONE
    except KeyboardInterrupt:
        _finish(run, record, result, INTERRUPTED, "interrupted (Ctrl-C or SIGTERM)")
        raise
    except ClaimLost:
        raise  # another process owns the folder now: write nothing more
    except OSError as exc:
        _finish_quietly(run, record, result, f"could not write the run folder: {exc}")
        raise RunWriteError(f"{run.path}: could not write the run folder: {exc.strerror or exc}") from None
    except ConfigError as exc:
        _finish(run, record, result, FAILED, str(exc))
        raise
    except Exception as exc:
        _finish(run, record, result, FAILED, f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")
        raise
    try:
        _finish(run, record, result, status, None)
    except OSError as exc:
        _finish_quietly(run, record, result, f"could not write the run folder: {exc}")
        raise RunWriteError(f"{run.path}: could not write the run folder: {exc.strerror or exc}") from None
    if keep_model is not None:
        keep_model.append(model)
    return run


def _finish(run: RunFolder, record: RunRecord, result, status: str, error: str | None) -> None:
    """Write what was finished: metrics, the record, then the final status (in that order)."""
    history = result.history
    record.fit_seconds = round(result.fit_seconds, 3)
    record.summarise(history)
    record.status, record.error = status, _plain(error)
    record.test = result.test
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
            from .plots import plot_curves

            plot_curves(run.path / "metrics.csv", run.path / "curves.png", title=record.name)
        except Exception as exc:  # a plot must never cost the run's record
            print(f"expkit: could not draw curves.png: {exc}", file=sys.stderr)


def _plain(text: str | None) -> str | None:
    """Error text without terminal colour codes (Keras colours some of its messages)."""
    import re

    return None if text is None else re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)


def _finish_quietly(run: RunFolder, record: RunRecord, result, error: str) -> None:
    """After a write failure: try to leave records that agree (failed), without raising again."""
    try:
        _finish(run, record, result, FAILED, error)
    except Exception:
        try:
            run.set_status(FAILED)
        except Exception:
            pass
