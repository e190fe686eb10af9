"""What a run needs to be reproduced, recorded in results.json: the code, the machine, the libraries,
the data and the command.

- `git`: the commit and whether tracked files have uncommitted changes, for the repository holding
  the config file (`config_source` names it; nothing for a config given as a dict, or outside git);
- `host` (already recorded), `cpu`, `gpu` (the GPU it trained on), `backend` and `versions`;
- `data_sha256`: one hash over the files the dataset was read from, and `data_files` with each file's;
- `command`: the command line.

The files a dataset was read from are the files its source opened while loading: `load_dataset`
notes, through an audit hook (sys.addaudithook), every regular file opened for reading meanwhile. So
a new source needs no bookkeeping of its own, and the record holds what was read, not what a lookup
rule says should have been.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shlex
import subprocess
import sys
import threading
import weakref
from datetime import datetime, timezone
from pathlib import Path

# Set for the runs of one command, and read by its worker processes too (they inherit the environment).
from .usercode import CONFIG_FILE_ENV  # noqa: E402  (the config file usercode also looks beside)
COMMAND_ENV = "EXPKIT_COMMAND"
MAX_LISTED_FILES = 20
# Opened while loading, but code or metadata rather than data (lazy imports, package metadata).
_NOT_DATA_SUFFIXES = (".py", ".pyc", ".so", ".pyd", ".pth", ".typed")
_NOT_DATA_PARTS = (".dist-info", ".egg-info", "__pycache__")
_NOT_DATA_ROOTS = ("/proc/", "/sys/", "/dev/")


# --- the config file, and its repository ----------------------------------------------------------


@contextlib.contextmanager
def _environment(name: str, value: str | None):
    if value is None:
        yield
        return
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def config_source(path: str | os.PathLike | None):
    """Name the config file the runs inside this block were read from (for their `git` record)."""
    return _environment(CONFIG_FILE_ENV, None if path is None else str(Path(path).resolve()))


def command_source(argv: list[str] | None):
    """Name the command the runs inside this block belong to (`expkit.cli.main(argv)` called in a
    process whose own command line is another program's); None keeps the process's command line."""
    return _environment(COMMAND_ENV, None if argv is None else shlex.join(argv))


def git_state(path: str | os.PathLike | None = None) -> dict | None:
    """{"commit", "dirty"} of the git repository holding `path` (default: the config file named by
    `config_source`); None outside a repository or without git. Untracked files do not make it
    dirty: a runs folder inside the repository is untracked and would always."""
    path = path or os.environ.get(CONFIG_FILE_ENV)
    if not path:
        return None
    folder = Path(path).parent if Path(path).is_file() or not Path(path).exists() else Path(path)

    def git(*args) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return None
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


# --- the machine and the command ------------------------------------------------------------------


def gpu_model(device: str | None) -> str | None:
    """The GPU a run trained on, from the backend's device description `GPU (name)`; None on a CPU."""
    if not device or not device.upper().startswith("GPU"):
        return None
    inner = device[device.find("(") + 1:device.rfind(")")] if "(" in device else ""
    return inner.strip() or device


def command_line(argv: list[str] | None = None) -> str:
    """The command the run belongs to: `command_source`'s, else this process's (the expkit script,
    or `python -m expkit.cli`, shown as `expkit`)."""
    if argv is None and os.environ.get(COMMAND_ENV):
        return os.environ[COMMAND_ENV]
    argv = list(sys.argv if argv is None else argv)
    if argv and (Path(argv[0]).name == "expkit" or argv[0].endswith(("expkit/cli.py", "expkit/__main__.py"))):
        argv[0] = "expkit"
    return shlex.join(argv)


def library_versions(base: dict) -> dict:
    """The backend's versions plus numpy's and each tracker library that is loaded."""
    import numpy

    out = {**base, "numpy": numpy.__version__}
    for name in ("tensorboard", "mlflow"):
        module = sys.modules.get(name)
        if module is not None and getattr(module, "__version__", None):
            out[name] = module.__version__
    return out


# --- the data files -------------------------------------------------------------------------------

_lock = threading.Lock()
_recorders: list[list[str]] = []
_hook_installed = False
_files_of: dict[int, tuple[weakref.ref, list[str]]] = {}
_hash_cache: dict[tuple, str] = {}


def _audit(event: str, args) -> None:
    # Runs on every audited event in the process: leave at once unless a load is being recorded.
    if event != "open" or not _recorders:
        return
    try:
        path, mode, flags = args
        if isinstance(path, int):
            return
        if mode is not None:
            if any(c in str(mode) for c in "wax+"):
                return
        elif flags is not None and flags & os.O_ACCMODE != os.O_RDONLY:
            return
        path = os.path.abspath(os.fsdecode(path))
        if (path.endswith(_NOT_DATA_SUFFIXES) or any(p in path for p in _NOT_DATA_PARTS)
                or path.startswith(_NOT_DATA_ROOTS) or not os.path.isfile(path)):
            return
        with _lock:
            for files in _recorders:
                if path not in files:
                    files.append(path)
    except Exception:  # an audit hook that raises would break the open() it watches
        return


@contextlib.contextmanager
def reading_files():
    """The files opened for reading inside the block (by any thread), in order."""
    global _hook_installed
    with _lock:
        if not _hook_installed:
            sys.addaudithook(_audit)
            _hook_installed = True
    files: list[str] = []
    with _lock:
        _recorders.append(files)
    try:
        yield files
    finally:
        with _lock:
            _recorders.remove(files)


def load_dataset(cfg_data, seed: int, loss: str):
    """`expkit.data.load_dataset`, noting the files it read (see `data_files`)."""
    from .data import load_dataset as load

    with reading_files() as files:
        dataset = load(cfg_data, seed, loss)
    with _lock:
        for key in [k for k, (ref, _) in _files_of.items() if ref() is None]:
            del _files_of[key]
        _files_of[id(dataset)] = (weakref.ref(dataset), list(files))
    return dataset


def data_files(dataset) -> list[str] | None:
    """The files `dataset` was read from, when it was loaded by `load_dataset` here; else None."""
    with _lock:
        entry = _files_of.get(id(dataset))
    if entry is None or entry[0]() is not dataset:
        return None
    return entry[1]


def file_sha256(path: str) -> str:
    stat = os.stat(path)
    key = (path, stat.st_size, stat.st_mtime_ns)
    if key not in _hash_cache:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        _hash_cache[key] = digest.hexdigest()
    return _hash_cache[key]


def weights_files(resolved: dict) -> dict | None:
    """{path: sha256} of the pretrained weights files a config loads (model.weights, an application's
    `weights` when it is a file): what the run started from, beside its data and code."""
    model = resolved.get("model") or {}
    paths = [model.get("weights")]
    for spec in model.get("layers") or []:
        args = spec.get("application") if isinstance(spec, dict) else None
        if isinstance(args, dict):
            paths.append(args.get("weights"))
    found = {p: file_sha256(p) for p in paths if isinstance(p, str) and os.path.isfile(p)}
    return found or None


def data_fingerprint(files: list[str]) -> tuple[str | None, list[dict]]:
    """(one sha256 over the files, [{"path", "bytes", "sha256"}] of the first MAX_LISTED_FILES).

    The combined hash covers each file's content and name, not its folder: the same files read on
    another machine, from another place, hash the same."""
    if not files:
        return None, []
    entries = [{"path": f, "bytes": os.path.getsize(f), "sha256": file_sha256(f)} for f in files]
    combined = hashlib.sha256()
    for line in sorted(f"{e['sha256']}  {Path(e['path']).name}\n" for e in entries):
        combined.update(line.encode())
    return combined.hexdigest(), entries[:MAX_LISTED_FILES]


# --- the record -----------------------------------------------------------------------------------


def describe(dataset, device: str | None) -> dict:
    """RunRecord fields: git, cpu, gpu, data_sha256, data_files, command. Never raises: a part
    that cannot be found is left null."""
    from .backend import cpu_model_name

    out: dict = {"git": None, "cpu": None, "gpu": gpu_model(device), "data_sha256": None, "data_files": None,
                 "command": None}
    for key, get in (("git", git_state), ("cpu", cpu_model_name), ("command", command_line)):
        try:
            out[key] = get()
        except Exception:
            pass
    try:
        files = data_files(dataset)
        if files is not None:
            out["data_sha256"], out["data_files"] = data_fingerprint(files)
    except OSError:
        pass
    return out


def resumed_entry(epoch: int) -> dict:
    return {"epoch": epoch, "at": datetime.now(timezone.utc).replace(microsecond=0).isoformat()}
