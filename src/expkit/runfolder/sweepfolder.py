"""A sweep folder's own files: the manifest's location and reader, the trial claims' folder, the
earlier attempts set aside, and the lock that serialises the sweep-level files between processes.

The sweep (expkit.sweeps.tables) writes manifest.json; everyone who reads one calls `read_manifest`.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

from ..errors import ConfigError

MANIFEST = "manifest.json"
CLAIMS = ".claims"      # one claim file per trial being trained (claims.Claim)
ATTEMPTS = ".attempts"  # earlier, unfinished attempts at a trial, kept whole


def is_sweep_folder(path: Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def read_manifest(sweep: Path) -> dict:
    """A sweep's manifest.json: a mapping with a `trials` list of mappings. Other keys are optional,
    and keys this version does not know are ignored. A malformed one is a ConfigError naming it."""
    path = Path(sweep) / MANIFEST
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"malformed JSON: line {exc.lineno}: {exc.msg}", file=path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read: {exc}", file=path) from None
    trials = data.get("trials") if isinstance(data, dict) else None
    if not isinstance(trials, list) or not all(isinstance(t, dict) for t in trials):
        raise ConfigError("expected a mapping with a 'trials' list of mappings", file=path)
    return data


def manifest_trials(sweep: Path) -> list[dict]:
    """The manifest's trials that have an id; none when there is no readable manifest (a new sweep)."""
    try:
        trials = read_manifest(sweep)["trials"]
    except ConfigError:
        return []
    return [t for t in trials if isinstance(t.get("id"), str)]


def set_aside(path: Path) -> Path:
    """Move an earlier, unfinished attempt to .attempts/<id>-<n>: nothing is deleted."""
    attempts = path.parent / ATTEMPTS
    attempts.mkdir(exist_ok=True)
    n = 1
    while (attempts / f"{path.name}-{n}").exists():
        n += 1
    target = attempts / f"{path.name}-{n}"
    shutil.move(str(path), str(target))
    return target


@contextlib.contextmanager
def sweep_lock(sweep_dir: Path):
    """Serialise the sweep-level files (manifest, tables, plots) between processes on one sweep."""
    import fcntl

    with open(Path(sweep_dir) / ".lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
