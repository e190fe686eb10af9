"""The columns of a table of runs: which metrics it shows, and how a config becomes columns.

A config is flattened to dotted keys (`train.learning_rate`); `model.layers` becomes one
architecture string (`reshape(28,28,1) conv2d(32,k3,relu) flatten dense(10,softmax)`) and every
other non-scalar value compact, stable text, so two configs compare cell by cell.
"""

from __future__ import annotations

import math
from typing import Any

from ..errors import ConfigError

# Metric columns, in table order: name -> (decimals, direction). Direction +1: higher is better,
# -1: lower is better, 0: neither. decimals None: an integer when whole, else one decimal.
METRICS: dict[str, tuple[int | None, int]] = {
    "params": (0, 0),
    "best_accuracy": (4, +1),
    "best_val_accuracy": (4, +1),
    "best_loss": (4, -1),
    "best_val_loss": (4, -1),
    "test_loss": (4, -1),
    "test_accuracy": (4, +1),
    "fit_seconds": (1, -1),
    "epochs": (None, 0),
}
# A model's size is the same for every seed: no spread to report.
STD_METRICS = [m for m in METRICS if m != "params"]
RUN_COLUMNS = ["run", "path", "status", "seed"]
# A sweep trial kept from an earlier version of the sweep's grid: its rows say `earlier` here.
# The column exists only in tables that hold such a row, so other tables are unchanged.
GRID = "grid"
EARLIER = "earlier"
# A trial trained in a vectorised group: its fit_seconds is the time of the one program it shared with
# the other trials ("10 trials"), not its own. The column exists only in tables that hold such a row.
FIT_SHARED = "fit_shared"
# Config keys that never tell two experiments apart (a seed repeat, a label, free text, the sweep
# definition that produced a trial).
NOT_COMPARED = ("name", "seed", "description", "sweep")
# Keys that say how a run was recorded, never what it computed (config.RECORDING_KEYS, which a test
# keeps equal to this; here as text so that tables load no pydantic), and its printing.
NOT_COMPARED_KEYS = ("track", "train.save_model", "train.checkpoint", "train.test_each_epoch", "train.verbose")
# Cross-validation (sweep.folds): which fold a run validated on is a repeat, as its seed is, so the folds
# of one config share its row; how many folds (`data.fold.of`) is compared. The runs' `fold` column and
# the table's `folds` column (the folds a row averages) exist only in tables that hold such a run.
REPEAT_KEYS = ("data.fold.index",)
FOLD, FOLDS = "fold", "folds"


def is_compared(key: str) -> bool:
    """Whether a config key (dotted, without the `cfg:` prefix) can tell two experiments apart."""
    return key.split(".", 1)[0] not in NOT_COMPARED and not any(
        key == k or key.startswith(k + ".") for k in NOT_COMPARED_KEYS) and key not in REPEAT_KEYS
CONFIG_PREFIX = "cfg:"


def flatten_config(config: dict, prefix: str = "") -> dict[str, Any]:
    """Dotted keys -> scalar values; `model.layers` becomes one architecture string, other lists compact text."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if dotted == "model.layers" and isinstance(value, list):
            out[dotted] = architecture(value)
        elif isinstance(value, dict) and value:
            out.update(flatten_config(value, dotted + "."))
        elif isinstance(value, (dict, list)):
            out[dotted] = compact(value)
        else:
            out[dotted] = value
    return out


# Layer arguments shown by a short prefix instead of name=value.
_SHORT_ARGS = {"kernel_size": "k", "strides": "s"}


def architecture(layers: list) -> str:
    """`[{reshape: [28, 28, 1]}, {conv2d: {filters: 32, kernel_size: 3}}, {flatten: {}}]` ->
    `reshape(28,28,1) conv2d(32,k3) flatten`: the main argument first, then kernel size (k),
    strides (s), activation, and the other arguments as name=value in name order."""
    parts = []
    for spec in layers:
        if not isinstance(spec, dict) or len(spec) != 1:
            parts.append(compact(spec))
            continue
        (name, args), = spec.items()
        if args is None or args == {}:
            parts.append(str(name))
            continue
        if not isinstance(args, dict):
            parts.append(f"{name}({_bare(args)})")
            continue
        args = dict(args)
        shown = []
        main = _main_arg(name)
        if main in args:
            shown.append(_bare(args.pop(main)))
        for arg, short in _SHORT_ARGS.items():
            if arg in args:
                value = args.pop(arg)
                shown.append(short + ("x".join(map(compact, value)) if isinstance(value, list) else compact(value)))
        if isinstance(args.get("activation"), str):
            shown.append(args.pop("activation"))
        shown += [f"{k}={compact(args[k])}" for k in sorted(args, key=str)]
        parts.append(f"{name}({','.join(shown)})")
    return " ".join(parts)


def _main_arg(name: str) -> str | None:
    from ..layers import resolve_type

    try:
        _, kind = resolve_type(str(name))
    except ConfigError:
        return None
    return kind.main_arg if kind is not None else None


def _bare(value) -> str:
    """A main argument: a list without its brackets."""
    return ",".join(map(compact, value)) if isinstance(value, list) else compact(value)


def compact(value) -> str:
    """Short, stable text for a config value: 0.01, 1e-05, true, null, [28,28,1], {name:adam}."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    if isinstance(value, list | tuple):
        return "[" + ",".join(map(compact, value)) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{compact(v)}" for k, v in value.items()) + "}"
    return str(value)


def short_keys(keys: list[str]) -> dict[str, str]:
    """The last part of each dotted key, or the whole key where two would read the same."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}


def is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def cell_text(value) -> str:
    """A text cell: empty for a missing value, else compact text."""
    return "" if is_missing(value) else compact(value)


def as_float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan
