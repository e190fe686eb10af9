"""The MLflow tracker: one MLflow run per expkit run, in the MLflow experiment named after it.

Params: the resolved config, flattened (`train.learning_rate`; `model.layers` as one architecture
string). Metrics: each metrics.csv column per epoch (step = epoch), then the record's test and best
metrics and fit seconds. Artifacts: the run folder's files (not the transient checkpoint). A sweep is
an MLflow parent run (named after the sweep, holding its tables and plots) with one child run per trial.

The store: `$MLFLOW_TRACKING_URI` when set (a server, `sqlite:///...`, or a `file:` store), else the
SQLite database `mlflow.db` beside the runs folder (`runs/../mlflow.db`, the store MLflow 3 recommends),
its artifacts in `runs/../mlartifacts/`; but a file store `runs/../mlruns/` already there (and no
`mlflow.db`) stays the store, so runs tracked there continue there. MLflow 3 keeps the file store in maintenance mode and refuses
it unless MLFLOW_ALLOW_FILE_STORE is set: a user who names a file store has chosen it, so expkit sets
that for them. Runs are tagged with their folder (`expkit.folder`), so a resumed run continues its
MLflow run and `expkit export mlflow` does not log a folder twice.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from pathlib import Path

from ..report.columns import flatten_config

FOLDER_TAG = "expkit.folder"     # a hash of the run (or sweep) folder's absolute path
PATH_TAG = "expkit.path"
KIND_TAG = "expkit.kind"         # run, trial or sweep
PARENT_TAG = "mlflow.parentRunId"
SKIPPED_ARTIFACTS = {"checkpoint.keras"}
BATCH = 100  # MLflow's limit on params (and tags) per log_batch


def runs_dir_of(run_dir: Path) -> Path:
    """The runs folder holding a run folder runs/<name>/<run-id> or a trial runs/<sweep>/<trial-id>."""
    return Path(run_dir).resolve().parent.parent


def _file_store_beside(runs_dir: Path) -> Path | None:
    """`mlruns/` beside `runs_dir` when it is the store already in use there: MLflow's own default, and
    where runs tracked with `MLFLOW_TRACKING_URI=file:...` (or by an earlier expkit) live. It is kept
    until an `mlflow.db` appears beside it, so a resumed run continues its MLflow run in the store its
    first attempt used instead of starting a second one in a new database."""
    beside = Path(runs_dir).resolve().parent
    if (beside / "mlruns").is_dir() and not (beside / "mlflow.db").exists():
        return beside / "mlruns"
    return None


def tracking_uri(runs_dir: Path) -> str:
    """$MLFLOW_TRACKING_URI, else the file store `mlruns/` beside `runs_dir` when one is there (and no
    `mlflow.db`), else the SQLite store `mlflow.db` beside `runs_dir`."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    store = None if uri else _file_store_beside(runs_dir)
    if store is not None:
        uri = store.as_uri()
    if uri:
        if uri.startswith("file:") or "://" not in uri:  # a file store chosen: MLflow 3 asks for consent
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        return uri
    return "sqlite:///" + str(Path(runs_dir).resolve().parent / "mlflow.db")


def artifact_root(runs_dir: Path) -> str | None:
    """Where the default store's experiments keep their files: `mlartifacts/` beside `runs_dir` (else
    MLflow would pick a folder under the current directory). None: the store the user set, or a file
    store (which keeps them inside itself), decides."""
    if os.environ.get("MLFLOW_TRACKING_URI") or _file_store_beside(runs_dir) is not None:
        return None
    return (Path(runs_dir).resolve().parent / "mlartifacts").as_uri()


def folder_key(folder: Path) -> str:
    return hashlib.sha256(str(Path(folder).resolve()).encode()).hexdigest()[:20]


def _client(runs_dir: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri(runs_dir))
    client.expkit_artifact_root = artifact_root(runs_dir)
    return client


def _experiment_id(client, name: str) -> str:
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    root = getattr(client, "expkit_artifact_root", None)
    try:
        return client.create_experiment(name, artifact_location=f"{root}/{name}" if root else None)
    except MlflowException:  # another process created it meanwhile
        return client.get_experiment_by_name(name).experiment_id


def _find_run(client, experiment_id: str, folder: Path):
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{FOLDER_TAG}` = '{folder_key(folder)}'",
                              max_results=1)
    return runs[0] if runs else None


def _parent_run_id(client, experiment_id: str, sweep_dir: Path) -> str:
    """The sweep's parent run, created by the first trial that asks (under the sweep's lock)."""
    from ..runfolder import sweep_lock

    with sweep_lock(sweep_dir):
        run = _find_run(client, experiment_id, sweep_dir)
        if run is not None:
            return run.info.run_id
        run = client.create_run(experiment_id, run_name=sweep_dir.name,
                                tags={FOLDER_TAG: folder_key(sweep_dir), PATH_TAG: str(sweep_dir.resolve()),
                                      KIND_TAG: "sweep"})
        return run.info.run_id


def _metrics(row: dict, step: int, timestamp: int) -> list:
    from mlflow.entities import Metric

    return [Metric(k, float(v), timestamp, step) for k, v in row.items()
            if k != "epoch" and isinstance(v, (int, float)) and math.isfinite(float(v))]


class Tracker:
    def __init__(self, run_dir: Path, config: dict, trial: dict | None):
        self.run_dir = Path(run_dir)
        self.config, self.trial = config, trial
        self.client = _client(runs_dir_of(self.run_dir))
        self.experiment_id = _experiment_id(self.client, str(config.get("name") or self.run_dir.parent.name))
        self.run_id: str | None = None
        self.existed = False

    def start(self, history: list[dict]) -> None:
        from mlflow.entities import Param

        found = _find_run(self.client, self.experiment_id, self.run_dir)
        self.existed = found is not None
        if found is not None:  # a resumed run continues its MLflow run
            self.run_id = found.info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
            return
        tags = {FOLDER_TAG: folder_key(self.run_dir), PATH_TAG: str(self.run_dir.resolve()),
                KIND_TAG: "trial" if self.trial is not None else "run", "expkit.run_id": self.run_dir.name}
        if self.trial is not None:
            tags[PARENT_TAG] = _parent_run_id(self.client, self.experiment_id, self.run_dir.parent)
        name = self.run_dir.name if self.trial is None else _trial_name(self.trial)
        self.run_id = self.client.create_run(self.experiment_id, run_name=name, tags=tags).info.run_id
        params = [Param(k, _param_text(v)) for k, v in flatten_config(self.config).items()]
        for i in range(0, len(params), BATCH):
            self.client.log_batch(self.run_id, params=params[i:i + BATCH])
        for row in history:
            self.log_epoch(row)

    def log_epoch(self, row: dict) -> None:
        metrics = _metrics(row, int(row.get("epoch", 0)), int(time.time() * 1000))
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def finish(self, record) -> None:
        if record is not None:
            final = {f"test_{k}": v for k, v in (record.test or {}).items()}
            final.update({f"best_{k}": v for k, v in record.best.items()})
            final["fit_seconds"] = record.fit_seconds
            metrics = _metrics(final, record.epochs_run, int(time.time() * 1000))
            if metrics:
                self.client.log_batch(self.run_id, metrics=metrics)
        for path in sorted(self.run_dir.iterdir()):
            if path.name.startswith(".") or path.name in SKIPPED_ARTIFACTS:
                continue
            if path.is_dir():
                self.client.log_artifacts(self.run_id, str(path), artifact_path=path.name)
            else:
                self.client.log_artifact(self.run_id, str(path))
        status = getattr(record, "status", None)
        self.client.set_terminated(self.run_id, {"done": "FINISHED", "diverged": "FINISHED",
                                                 "pruned": "KILLED", "interrupted": "KILLED"}.get(status, "FAILED"))


def _trial_name(trial: dict) -> str:
    values = ", ".join(f"{k}={v}" for k, v in (trial.get("values") or {}).items())
    return f"{values} seed={trial.get('seed')}" if values else f"seed={trial.get('seed')}"


def _param_text(value) -> str:
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

    from ..report.columns import compact

    text = compact(value) if not isinstance(value, str) else value
    return text if len(text) <= MAX_PARAM_VAL_LENGTH else text[:MAX_PARAM_VAL_LENGTH - 1] + "…"


def export_run(run_dir: Path, config: dict, trial: dict | None, history: list[dict], record) -> str:
    """Log an existing run folder as an MLflow run, unless it is already there."""
    tracker = Tracker(run_dir, config, trial)
    found = _find_run(tracker.client, tracker.experiment_id, run_dir)
    if found is not None and found.info.status != "RUNNING":
        return f"already in MLflow (run {found.info.run_id})"
    tracker.start(history)
    if tracker.existed:  # an unfinished earlier export: log what it may have missed
        for row in history:
            tracker.log_epoch(row)
    tracker.finish(record)
    return f"MLflow run {tracker.run_id} in {tracking_uri(runs_dir_of(run_dir))}"


def finish_sweep(sweep_dir: Path) -> str:
    """Close the sweep's parent run with its tables and plots as artifacts."""
    from ..runfolder import read_manifest

    sweep_dir = Path(sweep_dir)
    name = read_manifest(sweep_dir).get("name") or sweep_dir.name
    client = _client(sweep_dir.resolve().parent)
    experiment_id = _experiment_id(client, str(name))
    run_id = _parent_run_id(client, experiment_id, sweep_dir)
    for path in sorted(sweep_dir.iterdir()):
        if path.is_file() and not path.name.startswith(".") and path.suffix in (".csv", ".md", ".png", ".json"):
            client.log_artifact(run_id, str(path))
    client.set_terminated(run_id, "FINISHED")
    return f"MLflow parent run {run_id}"
