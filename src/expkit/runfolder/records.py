"""The records a run writes about itself: statuses, results.json (`RunRecord`), status.json and
metrics.csv; the `RunFolder` that writes them, and the readers everyone else uses."""

from __future__ import annotations

import csv
import io
import json
import math
import secrets
import time
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..files import write_json_atomic, write_text_atomic, write_yaml_atomic
from .claims import DEFAULT_STALE_AFTER, Claim, ClaimLost, Holder, _legacy_holder, now_iso

# --- statuses --------------------------------------------------------------------------------------

PENDING = "pending"          # no folder yet (a sweep trial not started)
RUNNING = "running"
DONE = "done"
DIVERGED = "diverged"        # the loss turned NaN/inf; training stopped, the record is kept
FAILED = "failed"
INTERRUPTED = "interrupted"  # Ctrl-C, SIGTERM, or a process that vanished while running
DAMAGED = "damaged"          # a record that cannot be read: reported by path, retrained on resume
PRUNED = "pruned"            # a sweep's pruner stopped it as a losing trial (sweep.prune); its epochs are kept
STATUSES = (PENDING, RUNNING, DONE, DIVERGED, PRUNED, FAILED, INTERRUPTED, DAMAGED)
WRITTEN = (RUNNING, DONE, DIVERGED, PRUNED, FAILED, INTERRUPTED)  # what a run may write about itself
FINISHED = (DONE, DIVERGED, PRUNED)  # a sweep skips these on resume
AVERAGED = (DONE, DIVERGED)  # what tables average over seeds (a pruned trial trained fewer epochs)


CONFUSION_CSV = "confusion.csv"  # the test set's confusion matrix (runfolder/confusion.py)


class DamagedRecord(ConfigError):
    """A run-folder file that exists but cannot be read (truncated JSON, garbage CSV)."""


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


# --- the results.json record ------------------------------------------------------------------------

NAN = float("nan")


def _nan_metrics() -> dict:
    return {"accuracy": NAN, "val_accuracy": NAN, "loss": NAN, "val_loss": NAN}


@dataclass
class RunRecord:
    """results.json: what one run did. Single runs, sweep trials and early failures all write this."""

    name: str
    run_id: str
    status: str = RUNNING
    error: str | None = None
    seed: int | None = None
    trial: dict | None = None            # {"id", "values", "seed"} for a sweep's trial
    params: int | None = None
    trainable_params: int | None = None
    n_train: int | None = None
    n_val: int | None = None
    n_test: int | None = None
    best: dict = field(default_factory=_nan_metrics)   # max accuracy / min loss over the epochs run
    final: dict = field(default_factory=_nan_metrics)  # the last epoch
    test: dict | None = None
    per_class: dict | None = None        # {class: {precision, recall, f1, support}} on the test set (confusion.csv)
    class_weight: dict | None = None     # {class: weight} the loss was weighted with (train.class_weight)
    sample_weight: dict | None = None    # the data's per-example weights (data.options.sample_weight): from, min, max, mean, sha256
    fit_seconds: float = 0.0
    epochs_run: int = 0
    stopped_early: bool = False
    diverged: bool = False
    samples_per_second: float | None = None
    steps_per_execution: int | None = None
    eval_batch_size: int | None = None
    jit_compile: bool | None = None
    device: str | None = None
    backend: str | None = None           # the Keras backend: tensorflow, jax or torch (its version is in versions)
    inter_op_threads: int | None = None
    versions: dict = field(default_factory=dict)
    host: str | None = None
    pid: int | None = None
    started: str | None = None
    ended: str | None = None
    # how to reproduce it (expkit/repro.py): the code, the machine, the data and the command
    git: dict | None = None              # {"commit", "dirty"} of the repository holding the config file
    cpu: str | None = None
    gpu: str | None = None               # the GPU it trained on; null on a CPU
    data_sha256: str | None = None       # one hash over the files the dataset was read from (null: generated)
    data_files: list | None = None       # [{"path", "bytes", "sha256"}], the first 20
    command: str | None = None
    user_code: list | None = None        # [{"module", "path", "sha256"}]: the user modules it imported (usercode.py)
    weights_files: dict | None = None    # {path: sha256}: pretrained weights it started from (model.weights, application)
    resumed: list = field(default_factory=list)  # [{"epoch", "at"}]: resumed after that many epochs, then
    extra: dict = field(default_factory=dict)  # keys this version does not know, kept on rewrite

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def to_dict(self) -> dict:
        data = asdict(self)
        extra = data.pop("extra")
        if self.trial is None:
            data.pop("trial")
        return {**data, **extra}

    @classmethod
    def from_dict(cls, data: dict) -> "RunRecord":
        known = {f.name for f in fields(cls)} - {"extra"}
        record = cls(name=str(data.get("name", "")), run_id=str(data.get("run_id", "")),
                     **{k: v for k, v in data.items() if k in known and k not in ("name", "run_id")})
        record.extra = {k: v for k, v in data.items() if k not in known}
        record.best = {**_nan_metrics(), **(record.best or {})}
        record.final = {**_nan_metrics(), **(record.final or {})}
        return record

    def summarise(self, history: list[dict], n_train: int | None = None) -> None:
        """Fill best, final, epochs_run and samples_per_second from the per-epoch rows."""
        keys = ("accuracy", "val_accuracy", "loss", "val_loss")
        self.best = {k: _best(history, k) for k in keys}
        last = history[-1] if history else {}
        self.final = {k: _float(last.get(k)) for k in keys}
        self.epochs_run = len(history)
        samples = (n_train if n_train is not None else self.n_train or 0) * len(history)
        self.samples_per_second = round(samples / self.fit_seconds, 1) if self.fit_seconds > 0 else None


def _float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return NAN


def _best(history: list[dict], key: str) -> float:
    values = [v for v in (_float(r.get(key)) for r in history) if math.isfinite(v)]
    if not values:
        return NAN
    return max(values) if "acc" in key else min(values)


# --- readers ---------------------------------------------------------------------------------------


def _read_mapping(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DamagedRecord(f"damaged record: malformed JSON at line {exc.lineno}: {exc.msg}", file=path) from None
    except UnicodeDecodeError:
        raise DamagedRecord("damaged record: not UTF-8 text", file=path) from None
    except OSError as exc:
        raise DamagedRecord(f"cannot read: {exc.strerror}", file=path) from None
    if not isinstance(data, dict):
        raise DamagedRecord(f"damaged record: expected a JSON mapping, found {type(data).__name__}", file=path)
    return data


def is_run_folder(path: Path) -> bool:
    return (Path(path) / "results.json").is_file() or (Path(path) / "status.json").is_file()


def read_record(folder: str | Path) -> RunRecord | None:
    """The folder's results.json, or None before the run wrote one. Raises DamagedRecord."""
    path = Path(folder) / "results.json"
    if not path.is_file():
        return None
    return RunRecord.from_dict(_read_mapping(path))


def read_status(folder: str | Path, stale_after: float = DEFAULT_STALE_AFTER) -> str:
    """The folder's status. `pending` without a folder; a `running` run whose holder is gone reads
    as `interrupted`; an unreadable record reads as `damaged` (never an exception)."""
    folder = Path(folder)
    try:
        record = read_record(folder)
        if record is not None:
            return record.status if record.status in WRITTEN else DAMAGED
        if not (folder / "status.json").is_file():
            # a folder just created by its claimer is empty for a moment (dot files are temporaries)
            visible = folder.is_dir() and any(not p.name.startswith(".") for p in folder.iterdir())
            return DAMAGED if visible else PENDING
        data = _read_mapping(folder / "status.json")
    except DamagedRecord:
        return DAMAGED
    status = data.get("status")
    if status not in WRITTEN:
        return DAMAGED
    holder = _legacy_holder(data)
    if status == RUNNING and (holder is None or not holder.alive(stale_after)):
        return INTERRUPTED
    return status


def read_metrics(folder: str | Path) -> list[dict]:
    """metrics.csv as rows of floats (epoch as int); [] when absent. Raises DamagedRecord."""
    path = Path(folder) / "metrics.csv"
    if not path.is_file():
        return []
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DamagedRecord(f"damaged record: cannot read as CSV ({exc.__class__.__name__})", file=path) from None
    except OSError as exc:
        raise DamagedRecord(f"cannot read: {exc.strerror}", file=path) from None
    out = []
    for i, row in enumerate(rows, 1):
        if None in row or "epoch" not in row:
            raise DamagedRecord(f"damaged record: row {i} does not fit the header", file=path)
        parsed = {k: _float(v) for k, v in row.items()}
        if not math.isfinite(parsed["epoch"]):
            raise DamagedRecord(f"damaged record: row {i} has no epoch number", file=path)
        parsed["epoch"] = int(parsed["epoch"])
        out.append(parsed)
    return out


def metrics_csv_text(rows: list[dict]) -> str:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


# --- the run folder, written only by the process that holds it ------------------------------------


class RunFolder:
    """One run's folder, written only by the process that created (or claimed) it."""

    def __init__(self, path: Path, claim: "Claim | None" = None):
        self.path = Path(path)
        self.claim = claim
        self.holder = Holder.this_process()
        self._status = RUNNING

    @classmethod
    def create(cls, runs_dir: str | Path, name: str) -> "RunFolder":
        """A new folder runs_dir/name/<run-id>; the id is fresh every time (mkdir is the claim)."""
        parent = Path(runs_dir) / name
        parent.mkdir(parents=True, exist_ok=True)
        for _ in range(100):
            path = parent / new_run_id()
            try:
                path.mkdir()
                return cls(path)
            except FileExistsError:
                continue
        raise RuntimeError(f"could not create a new run folder under {parent}")

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def started(self) -> str:
        return self.holder.started

    def _check_held(self) -> None:
        if self.claim is not None and not self.claim.held():
            raise ClaimLost(f"{self.path}: another process claimed this trial; this process stops writing to it")

    def write_config(self, config: dict) -> None:
        self._check_held()
        write_yaml_atomic(self.path / "config.yaml", config)

    def write_summary(self, text: str) -> None:
        self._check_held()
        write_text_atomic(self.path / "summary.txt", text)

    def set_status(self, status: str) -> None:
        if status not in WRITTEN:
            raise ValueError(f"not a status a run writes: {status!r}")
        self._check_held()
        self._status = status
        self.holder.heartbeat = time.time()
        record = {"status": status, **asdict(self.holder)}
        if status != RUNNING:
            record["ended"] = now_iso()
        write_json_atomic(self.path / "status.json", record)

    def beat(self) -> None:
        """Refresh the heartbeat of the folder (and of its claim): at least once per epoch."""
        if self.claim is not None:
            self.claim.beat()
        if self._status == RUNNING:
            self.set_status(RUNNING)

    def write_metrics(self, rows: list[dict]) -> None:
        if rows:
            self._check_held()
            write_text_atomic(self.path / "metrics.csv", metrics_csv_text(rows))

    def write_confusion(self, text: str) -> None:
        """confusion.csv, as runfolder.confusion.confusion_csv_text writes it (and read_confusion reads it)."""
        self._check_held()
        write_text_atomic(self.path / CONFUSION_CSV, text)

    def write_record(self, record: RunRecord) -> None:
        self._check_held()
        write_json_atomic(self.path / "results.json", record.to_dict())

    def new_record(self, name: str, **values: Any) -> RunRecord:
        return RunRecord(name=name, run_id=self.run_id, host=self.holder.host, pid=self.holder.pid,
                         started=self.started, **values)
