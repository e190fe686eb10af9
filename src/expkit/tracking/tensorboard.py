"""The TensorBoard tracker: event files in `<run>/tensorboard/`, written with TensorBoard's own
writer and protos (no TensorFlow needed, so it serves every Keras backend).

Layout, as Keras' TensorBoard callback lays it out, so train and validation share a chart:
`tensorboard/train`, `tensorboard/validation`, `tensorboard/test`, each with `epoch_loss`,
`epoch_accuracy`, ... at step = epoch (1-based); `train` also has `epoch_learning_rate` and
`epoch_seconds`. `tensorboard/` itself holds the HParams plugin's session records: a sweep
trial's swept values and seed (a single run: its flattened config), and how the session ended.
A sweep trial writes one level deeper, under its values (`<id>/tensorboard/train.learning_rate=0.01
seed=14/validation`), because TensorBoard names a run by its folder's path: the trial folders are
named by id, and a list of hashes is no way to find the curve of `lr=0.01`.
A sweep folder gets `tensorboard/` with the HParams experiment (every swept key with its values,
and the metrics), so `tensorboard --logdir runs/<sweep>` shows the sweep in the HParams table and
parallel-coordinates views.
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

from ..report.columns import NOT_COMPARED, compact, flatten_config

FOLDER = "tensorboard"
GROUPS = {"val_": "validation", "test_": "test"}
# The metrics the HParams views offer, by (group, tag).
HPARAM_METRICS = [("validation", "epoch_accuracy"), ("validation", "epoch_loss"), ("test", "epoch_accuracy"),
                  ("test", "epoch_loss"), ("train", "epoch_accuracy"), ("train", "epoch_loss")]


def _writer(folder: Path):
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    return EventFileWriter(str(folder))


def _event(summary, step: int = 0, wall_time: float | None = None):
    from tensorboard.compat.proto import event_pb2

    return event_pb2.Event(wall_time=time.time() if wall_time is None else wall_time, step=step, summary=summary)


def _scalars(values: dict[str, float]):
    from tensorboard.compat.proto import summary_pb2

    return summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, simple_value=v) for tag, v in values.items()])


def _session_end(status: int):
    """The HParams plugin's session-end record (its own session_end_pb needs TensorFlow's protos)."""
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.plugins.hparams import metadata, plugin_data_pb2

    data = plugin_data_pb2.HParamsPluginData(
        session_end_info=plugin_data_pb2.SessionEndInfo(status=status, end_time_secs=time.time()))
    summary = summary_pb2.Summary()
    summary.value.add(tag=metadata.SESSION_END_INFO_TAG, metadata=metadata.create_summary_metadata(data),
                      tensor=metadata.NULL_TENSOR)
    return summary


def split_row(row: dict) -> dict[str, dict[str, float]]:
    """One metrics.csv row -> {group: {tag: value}}: val_loss -> validation/epoch_loss, and so on."""
    out: dict[str, dict[str, float]] = {}
    for column, value in row.items():
        if column == "epoch" or not isinstance(value, (int, float)):
            continue
        group, name = "train", column
        for prefix, g in GROUPS.items():
            if column.startswith(prefix):
                group, name = g, column[len(prefix):]
        name = name if name.startswith("epoch_") else f"epoch_{name}"
        out.setdefault(group, {})[name] = float(value)
    return out


def hparam_value(value):
    """A value the HParams plugin takes (bool, int, float or str); anything else as compact text."""
    if isinstance(value, (bool, int, float, str)):
        return value
    return compact(value)


def session_hparams(config: dict, trial: dict | None) -> dict:
    """A trial's swept values and seed; a single run's config, flattened (free-text keys left out)."""
    if trial is not None:
        values = {k: hparam_value(v) for k, v in (trial.get("values") or {}).items()}
        values["seed"] = trial.get("seed", config.get("seed"))
        return values
    flat = flatten_config(config)
    return {k: hparam_value(v) for k, v in flat.items() if k.split(".", 1)[0] not in NOT_COMPARED or k == "seed"}


UNSAFE = re.compile(r"[^A-Za-z0-9=.,+\-_ \[\]]+")
NAME_LIMIT = 120


def run_name(trial: dict) -> str:
    """The folder a sweep trial's events go in, so TensorBoard's run names read as the trial's values:
    `train.learning_rate=0.01 seed=14` (a fold: `fold=2`); characters a path or TensorBoard's run filter
    would take apart become `_`, and a long name is cut (the HParams view holds every value in full)."""
    parts = [f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in (trial.get("values") or {}).items()]
    parts.append(f"seed={trial.get('seed')}")
    if trial.get("fold") is not None:
        parts.append(f"fold={trial['fold']}")
    name = UNSAFE.sub("_", " ".join(parts)).strip(" .") or "trial"
    return name if len(name) <= NAME_LIMIT else name[:NAME_LIMIT].rstrip(" .") + "~"


def events_dir(run_dir: Path, trial: dict | None) -> Path:
    """Where a run's (or sweep trial's) event files are: `<run>/tensorboard/`, a trial one level deeper."""
    folder = Path(run_dir) / FOLDER
    return folder / run_name(trial) if trial is not None else folder


class Tracker:
    def __init__(self, run_dir: Path, config: dict, trial: dict | None):
        import tensorboard  # noqa: F401  (fail here, at start, when the library is missing)

        self.dir = events_dir(run_dir, trial)
        self.config, self.trial = config, trial
        self._writers: dict[str, object] = {}
        self._last_epoch = 0

    def _write(self, group: str, summary, step: int) -> None:
        if group not in self._writers:
            self._writers[group] = _writer(self.dir / group if group else self.dir)
        self._writers[group].add_event(_event(summary, step))

    def start(self, history: list[dict]) -> None:
        from tensorboard.plugins.hparams import summary_v2 as hp

        new = not self.dir.exists()
        hparams = session_hparams(self.config, self.trial)
        trial_id = (self.trial or {}).get("id") or self.dir.parent.name
        self._write("", hp.hparams_pb(hparams, trial_id=trial_id), 0)
        if new:  # epochs a resumed run finished before it was tracked
            for row in history:
                self.log_epoch(row)
        self._last_epoch = max([0] + [int(r.get("epoch", 0)) for r in history])
        self.flush()

    def log_epoch(self, row: dict) -> None:
        step = int(row.get("epoch", self._last_epoch + 1))
        for group, values in split_row(row).items():
            self._write(group, _scalars(values), step)
        self._last_epoch = step
        self.flush()

    def finish(self, record) -> None:
        from tensorboard.plugins.hparams import api_pb2

        if record is not None and record.test and not any(g == "test" for g in self._writers):
            # the final test scores, at the last epoch, where a run without test_each_epoch has none
            values = {f"epoch_{k}": float(v) for k, v in record.test.items() if isinstance(v, (int, float))}
            self._write("test", _scalars(values), max(self._last_epoch, record.epochs_run))
        status = {"done": api_pb2.STATUS_SUCCESS, "diverged": api_pb2.STATUS_SUCCESS,
                  "pruned": api_pb2.STATUS_SUCCESS, "failed": api_pb2.STATUS_FAILURE}.get(getattr(record, "status", None), api_pb2.STATUS_UNKNOWN)
        self._write("", _session_end(status), max(self._last_epoch, 0))
        self.close()

    def flush(self) -> None:
        for writer in self._writers.values():
            writer.flush()

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers = {}


def _clear(folder: Path) -> None:
    """Remove the event files of an earlier export (only TensorBoard's own files)."""
    if folder.is_dir():
        for path in folder.rglob("events.out.tfevents.*"):
            path.unlink()


def export_run(run_dir: Path, config: dict, trial: dict | None, history: list[dict], record) -> str:
    """Write `<run>/tensorboard/` from the folder's records, replacing an earlier export."""
    folder = Path(run_dir) / FOLDER
    _clear(folder)
    tracker = Tracker(run_dir, config, trial)
    tracker.start([])
    for row in history:
        tracker.log_epoch(row)
    tracker.finish(record)
    return str(folder)


def finish_sweep(sweep_dir: Path) -> str:
    """`<sweep>/tensorboard/`: the HParams experiment, every swept key with the values its trials took."""
    from tensorboard.plugins.hparams import api as hp_api
    from tensorboard.plugins.hparams import summary_v2 as hp

    sweep_dir = Path(sweep_dir)
    from ..runfolder import read_manifest

    manifest = read_manifest(sweep_dir)
    values: dict[str, list] = {}
    for trial in manifest["trials"]:
        for key, value in {**(trial.get("values") or {}), "seed": trial.get("seed")}.items():
            seen = values.setdefault(key, [])
            value = hparam_value(value)
            if value not in seen:
                seen.append(value)
    hparams = []
    for key, seen in values.items():
        kinds = {type(v) for v in seen}
        if kinds <= {int, float} and len(kinds) == 2:
            seen, kinds = [float(v) for v in seen], {float}
        if len(kinds) == 1 and not any(isinstance(v, float) and math.isnan(v) for v in seen):
            hparams.append(hp_api.HParam(key, hp_api.Discrete(sorted(seen))))
        else:
            hparams.append(hp_api.HParam(key))
    metrics = [hp_api.Metric(tag, group=group, display_name=f"{group} {tag.removeprefix('epoch_')}")
               for group, tag in HPARAM_METRICS]
    folder = sweep_dir / FOLDER
    _clear(folder)
    writer = _writer(folder)
    writer.add_event(_event(hp.hparams_config_pb(hparams, metrics)))
    writer.close()
    return str(folder)
