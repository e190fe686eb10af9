"""Result files are written whole or not at all: write a temporary file beside, then rename."""

from __future__ import annotations

import csv
import json
import os
import tempfile
from pathlib import Path

import yaml

from .errors import ConfigError


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` so a reader sees the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, data) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False, allow_nan=True) + "\n")


def write_yaml_atomic(path: str | Path, data) -> Path:
    return write_text_atomic(path, yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=100))


def write_figure_atomic(fig, path: str | Path, **kwargs) -> Path:
    """Save a matplotlib figure atomically (PNG)."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", **kwargs)
    return write_bytes_atomic(path, buf.getvalue())


def read_json(path: str | Path):
    with open(path) as fh:
        return json.load(fh)


def read_csv(path: str | Path, expected: str = "") -> tuple[list[str], list[dict]]:
    """(columns, rows) of a CSV file; a missing or unreadable file is a ConfigError naming it."""
    path = Path(path)
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            return list(reader.fieldnames or []), rows
    except FileNotFoundError:
        raise ConfigError("file not found" + (f"; expected {expected}" if expected else ""), file=path) from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"cannot read as CSV: {exc}", file=path) from None
