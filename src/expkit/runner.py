"""One experiment end to end: data -> model -> train -> run folder."""

from __future__ import annotations

import math
import platform
import sys
import traceback
from pathlib import Path

from . import __version__
from .config import ExperimentConfig
from .errors import ConfigError
from .runfolder import RunFolder, now_iso


def _best(history: list[dict], key: str):
    values = [r[key] for r in history if key in r and r[key] is not None and math.isfinite(r[key])]
    if not values:
        return float("nan")
    return max(values) if "acc" in key else min(values)


def summarise(history: list[dict]) -> tuple[dict, dict]:
    """(best, final) of the four headline metrics; best is max accuracy / min loss over epochs."""
    keys = ("accuracy", "val_accuracy", "loss", "val_loss")
    best = {k: _best(history, k) for k in keys}
    last = history[-1] if history else {}
    final = {k: float(last.get(k, float("nan"))) for k in keys}
    return best, final


def versions() -> dict:
    import keras
    import tensorflow as tf

    return {"python": platform.python_version(), "tensorflow": tf.__version__, "keras": keras.__version__, "expkit": __version__}


def prepare(cfg: ExperimentConfig, *, load_data: bool = True):
    """(dataset or None, model): everything a run needs before training; user mistakes raise ConfigError."""
    from .data import load_dataset, probe_dataset
    from .models import build_model
    from .train import set_precision

    set_precision(cfg.train.precision)
    if load_data:
        dataset = load_dataset(cfg.data, cfg.seed, cfg.train.loss)
        shape, classes = dataset.input_shape, dataset.num_classes
    else:
        dataset = None
        try:
            shape, classes = probe_dataset(cfg.data)
        except ConfigError:
            # Data that is not on this machine: a config that states its input shape still builds.
            if cfg.model.input_shape is None:
                raise
            shape, classes = tuple(cfg.model.input_shape), None
    model = build_model(cfg, shape, classes)
    check_training(cfg, model, dataset, classes)
    return dataset, model


def check_training(cfg: ExperimentConfig, model, dataset, num_classes: int | None) -> None:
    """What `train` would reject only after the run folder exists: optimizer, loss, metrics, labels."""
    import numpy as np

    from .data.dataset import label_encoding
    from .models import check_metrics, check_targets
    from .train import check_loss, make_optimizer

    make_optimizer(cfg, steps_per_epoch=1)
    check_loss(cfg.train.loss)
    check_metrics(cfg.train.metrics)
    if dataset is not None and len(dataset.y_train):
        targets = dataset.y_train[:2]
    elif num_classes is not None:  # no data at hand: labels of the shape the data would have
        one_hot = label_encoding(cfg.data.labels, cfg.train.loss) == "one_hot"
        targets = np.eye(num_classes, dtype="float32")[[0, 0]] if one_hot else np.zeros(2, dtype="int32")
    else:
        return
    check_targets(cfg, model, targets)


def run_experiment(cfg: ExperimentConfig, *, runs_dir: str | Path = "runs", device: str = "auto",
                   folder: RunFolder | None = None, trial: dict | None = None, dataset=None) -> RunFolder:
    """Train `cfg` and record it. Returns the run folder; its results.json holds the outcome.

    User mistakes (ConfigError) are raised before the folder is created. A NaN loss ends the run as
    'diverged'; another exception marks it 'failed' and is re-raised; Ctrl-C marks it 'interrupted'.
    """
    from .models import count_params, summary_text
    from .train import seed_everything, select_device, set_inter_op_threads, train

    device_name = select_device(device)
    inter_op_threads = set_inter_op_threads(cfg.train.inter_op_threads)
    seed_everything(cfg.seed, cfg.train.deterministic)
    if dataset is None:
        dataset, model = prepare(cfg)
    else:
        from .models import build_model
        from .train import set_precision

        set_precision(cfg.train.precision)
        model = build_model(cfg, dataset.input_shape, dataset.num_classes)

    run = folder or RunFolder.create(runs_dir, cfg.name)
    run.set_status("running")
    run.write_config(cfg.to_dict())
    run.write_summary(summary_text(model))
    total, trainable = count_params(model)
    record = {
        "name": cfg.name, "run_id": run.run_id, "status": "running", "error": None, "seed": cfg.seed,
        **({"trial": trial} if trial is not None else {}),
        "params": total, "trainable_params": trainable,
        "n_train": len(dataset.x_train), "n_val": len(dataset.x_val),
        "n_test": 0 if dataset.x_test is None else len(dataset.x_test),
        "device": device_name, "inter_op_threads": inter_op_threads, "versions": versions(), "started": run.started,
    }
    result = None
    try:
        result = train(cfg, dataset, model, on_epoch=run.write_metrics)
        status = "diverged" if result.diverged else "done"
    except KeyboardInterrupt:
        _finish(run, record, result, "interrupted", "interrupted by the user")
        raise
    except ConfigError as exc:
        _finish(run, record, result, "failed", str(exc))
        raise
    except Exception as exc:
        _finish(run, record, result, "failed", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")
        raise
    _finish(run, record, result, status, None)
    return run


def _finish(run: RunFolder, record: dict, result, status: str, error: str | None) -> None:
    history = result.history if result is not None else []
    best, final = summarise(history)
    fit_seconds = result.fit_seconds if result is not None else sum(r.get("epoch_seconds", 0.0) for r in history)
    samples = record["n_train"] * len(history)
    record.update(
        status=status, error=error, best=best, final=final,
        test=result.test if result is not None else None,
        fit_seconds=round(fit_seconds, 3), epochs_run=len(history),
        stopped_early=bool(result and result.stopped_early), diverged=bool(result and result.diverged),
        samples_per_second=round(samples / fit_seconds, 1) if fit_seconds > 0 else None,
        steps_per_execution=result.steps_per_execution if result is not None else None,
        eval_batch_size=result.eval_batch_size if result is not None else None,
        jit_compile=result.jit_compile if result is not None else None,
        ended=now_iso(),
    )
    run.write_metrics(history)
    run.write_results(record)
    run.set_status(status)
    if history:
        try:
            from .plots import plot_curves

            plot_curves(run.path / "metrics.csv", run.path / "curves.png", title=record["name"])
        except Exception as exc:  # a plot must never cost the run's record
            print(f"expkit: could not draw curves.png: {exc}", file=sys.stderr)
