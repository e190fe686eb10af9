"""Trackers: what TensorBoard and MLflow hold after a run, a sweep and an export, read back with
the libraries' own readers (TensorBoard's EventAccumulator, MLflow's MlflowClient on expkit's SQLite store)."""

import csv
import io
import json
from pathlib import Path

import pytest

from expkit import api
from expkit.cli import main
from expkit.config import validate
from expkit.errors import ConfigError
from expkit.runner import run_experiment
from expkit.tracking import TRACKERS, check_trackers

tensorboard = pytest.importorskip("tensorboard")
mlflow = pytest.importorskip("mlflow")


def metrics(folder):
    with open(Path(folder) / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def accumulator(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return acc


def client(tmp_path, monkeypatch):
    """expkit's default store: the SQLite database beside the runs folder."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")


@pytest.fixture(autouse=True)
def no_tracking_uri(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def test_tensorboard_holds_each_epoch_and_the_session(tmp_path, tiny_config):
    from tensorboard.plugins.hparams import metadata

    cfg = validate({**tiny_config, "track": ["tensorboard"], "train": {**tiny_config["train"], "test_each_epoch": True}})
    run = run_experiment(cfg, runs_dir=tmp_path / "runs")
    rows = metrics(run.path)
    board = run.path / "tensorboard"
    for group, prefix in (("train", ""), ("validation", "val_"), ("test", "test_")):
        acc = accumulator(board / group)
        for name in ("loss", "accuracy"):
            events = acc.Scalars(f"epoch_{name}")
            assert [e.step for e in events] == [1, 2, 3]
            assert [e.value for e in events] == pytest.approx([float(r[prefix + name]) for r in rows], rel=1e-6)
    assert "epoch_learning_rate" in accumulator(board / "train").Tags()["scalars"]
    content = accumulator(board).PluginTagToContent("hparams")
    start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
    assert start.hparams["train.learning_rate"].number_value == pytest.approx(0.01)
    assert start.hparams["train.optimizer"].string_value == "adam"
    end = metadata.parse_session_end_info_plugin_data(content[metadata.SESSION_END_INFO_TAG])
    assert end.status == 1  # STATUS_SUCCESS


def sweep_config(tiny_config, track):
    return {**tiny_config, "track": track, "train": {**tiny_config["train"], "epochs": 2},
            "sweep": {"grid": {"train.learning_rate": [0.01, 0.001]}}}


def test_a_tensorboard_sweep_has_the_hparams_experiment(tmp_path, tiny_config):
    from tensorboard.plugins.hparams import metadata

    sweep = api.sweep(sweep_config(tiny_config, ["tensorboard"]), runs_dir=tmp_path / "runs")
    content = accumulator(sweep.path / "tensorboard").PluginTagToContent("hparams")
    experiment = metadata.parse_experiment_plugin_data(content[metadata.EXPERIMENT_TAG])
    infos = {h.name: h for h in experiment.hparam_infos}
    assert sorted(infos) == ["seed", "train.learning_rate"]
    assert sorted(v.number_value for v in infos["train.learning_rate"].domain_discrete.values) == \
        pytest.approx([0.001, 0.01])
    assert ("validation", "epoch_accuracy") in {(m.name.group, m.name.tag) for m in experiment.metric_infos}
    sessions = {}
    for trial in sweep.trials:
        # a trial's events sit under its values, so TensorBoard's run names read `<id>/tensorboard/<values>/...`
        (board,) = (trial.path / "tensorboard").iterdir()
        lr = trial.config.train.learning_rate
        assert board.name == f"train.learning_rate={lr} seed={trial.config.seed}"
        tags = accumulator(board).PluginTagToContent("hparams")
        start = metadata.parse_session_start_info_plugin_data(tags[metadata.SESSION_START_INFO_TAG])
        sessions[trial.path.name] = start.hparams["train.learning_rate"].number_value
        assert len(accumulator(board / "validation").Scalars("epoch_accuracy")) == 2
    assert sorted(sessions.values()) == pytest.approx([0.001, 0.01])


def test_a_trials_tensorboard_run_name_is_its_values():
    from expkit.tracking.tensorboard import NAME_LIMIT, run_name

    assert run_name({"values": {"train.learning_rate": 0.01, "model.layers.0.activation": "relu"}, "seed": 14}) \
        == "train.learning_rate=0.01 model.layers.0.activation=relu seed=14"
    assert run_name({"values": {}, "seed": 3, "fold": 2}) == "seed=3 fold=2"
    # a path separator, a colon (a user's "module:attribute") or a quote never makes another folder level
    assert run_name({"values": {"train.optimizer": "my_opt:Lion", "data.path": "../x/y"}, "seed": 1}) \
        == "train.optimizer=my_opt_Lion data.path=.._x_y seed=1"
    long = run_name({"values": {f"model.layers.{i}.units": 1024 for i in range(20)}, "seed": 1})
    assert len(long) <= NAME_LIMIT + 1 and long.endswith("~")


def test_mlflow_holds_params_metrics_and_files(tmp_path, tiny_config, monkeypatch):
    cfg = validate({**tiny_config, "track": ["mlflow"]})
    run = run_experiment(cfg, runs_dir=tmp_path / "runs")  # the store: runs/../mlflow.db
    mlf = client(tmp_path, monkeypatch)
    (found,) = mlf.search_runs([mlf.get_experiment_by_name("tiny").experiment_id])
    assert found.info.status == "FINISHED" and found.info.run_name == run.path.name
    assert found.data.params["train.learning_rate"] == "0.01" and found.data.params["train.batch_size"] == "16"
    assert found.data.params["model.layers"] == "flatten dense(16,relu) dense(3,softmax)"
    history = mlf.get_metric_history(found.info.run_id, "val_accuracy")
    assert [m.step for m in history] == [1, 2, 3]
    assert [m.value for m in history] == pytest.approx([float(r["val_accuracy"]) for r in metrics(run.path)])
    assert found.data.metrics["test_accuracy"] == pytest.approx(json.loads((run.path / "results.json").read_text())["test"]["accuracy"])
    files = {a.path for a in mlf.list_artifacts(found.info.run_id)}
    assert {"config.yaml", "metrics.csv", "results.json", "model.keras", "curves.png"} <= files


def test_an_mlflow_sweep_is_a_parent_with_child_runs(tmp_path, tiny_config, monkeypatch):
    sweep = api.sweep(sweep_config(tiny_config, ["mlflow"]), runs_dir=tmp_path / "runs")
    mlf = client(tmp_path, monkeypatch)
    runs = mlf.search_runs([mlf.get_experiment_by_name("tiny").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("expkit.kind") == "sweep"]
    children = [r for r in runs if r is not parent]
    assert len(children) == 2 and all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in children)
    assert sorted(r.data.params["train.learning_rate"] for r in children) == ["0.001", "0.01"]
    assert parent.info.status == "FINISHED" and parent.info.run_name == sweep.path.name
    assert {"results.csv", "manifest.json"} <= {a.path for a in mlf.list_artifacts(parent.info.run_id)}


def test_export_writes_what_tracking_would_have(tmp_path, tiny_config, monkeypatch, capsys):
    run = run_experiment(validate(tiny_config), runs_dir=tmp_path / "runs")
    assert not (run.path / "tensorboard").exists()
    assert main(["export", "tensorboard", str(tmp_path / "runs")]) == 0
    assert main(["export", "tensorboard", str(run.path)]) == 0  # again: replaced, not doubled
    events = accumulator(run.path / "tensorboard" / "validation").Scalars("epoch_loss")
    assert [e.step for e in events] == [1, 2, 3]
    assert [e.value for e in events] == pytest.approx([float(r["val_loss"]) for r in metrics(run.path)], rel=1e-6)

    assert main(["export", "mlflow", str(run.path)]) == 0
    assert main(["export", "mlflow", str(run.path.parent)]) == 0
    assert "already in MLflow" in capsys.readouterr().err
    mlf = client(tmp_path, monkeypatch)
    (found,) = mlf.search_runs([mlf.get_experiment_by_name("tiny").experiment_id])
    assert [m.step for m in mlf.get_metric_history(found.info.run_id, "loss")] == [1, 2, 3]


def test_export_of_a_sweep_makes_the_parent_and_the_experiment(tmp_path, tiny_config, monkeypatch):
    sweep = api.sweep(sweep_config(tiny_config, []), runs_dir=tmp_path / "runs")
    log = io.StringIO()
    from expkit.tracking.export import export

    assert export("mlflow", [sweep.path], log) == 2 and export("tensorboard", [sweep.path], log) == 2
    mlf = client(tmp_path, monkeypatch)
    runs = mlf.search_runs([mlf.get_experiment_by_name("tiny").experiment_id])
    assert sorted(r.data.tags["expkit.kind"] for r in runs) == ["sweep", "trial", "trial"]
    assert (sweep.path / "tensorboard").is_dir()


def test_a_failing_tracker_is_one_warning_and_the_run_keeps_its_record(tmp_path, tiny_config, monkeypatch, capsys):
    from expkit.tracking import tensorboard as tb

    def broken(self, row):
        raise RuntimeError("disk quota exceeded\nsecond line")

    monkeypatch.setattr(tb.Tracker, "log_epoch", broken)
    run = run_experiment(validate({**tiny_config, "track": ["tensorboard"]}), runs_dir=tmp_path)
    record = json.loads((run.path / "results.json").read_text())
    assert record["status"] == "done" and record["epochs_run"] == 3
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warnings == ["expkit: warning: tensorboard tracking failed while logging epoch 1 (RuntimeError: disk "
                        "quota exceeded); the run goes on without tensorboard"]


def test_a_file_store_the_user_names_is_honoured(tmp_path, tiny_config, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    store = (tmp_path / "elsewhere").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    run_experiment(validate({**tiny_config, "track": ["mlflow"]}), runs_dir=tmp_path / "runs")
    found = MlflowClient(tracking_uri=store).search_runs([MlflowClient(tracking_uri=store)
                                                         .get_experiment_by_name("tiny").experiment_id])
    assert len(found) == 1 and found[0].info.status == "FINISHED"
    assert not (tmp_path / "mlflow.db").exists()


def test_a_resumed_run_continues_in_the_mlruns_store_its_first_attempt_used(tmp_path, tiny_config, monkeypatch):
    """Interrupted while tracking into `mlruns/` beside the runs folder, resumed without the variable
    set: the same MLflow run finishes there, with every epoch, and no second store is started."""
    from mlflow.tracking import MlflowClient

    from test_checkpoint import interrupt_in_epoch

    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    store = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    interrupt_in_epoch(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(validate({**tiny_config, "track": ["mlflow"]}), runs_dir=tmp_path / "runs")
    monkeypatch.undo()
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    (cut,) = (tmp_path / "runs" / "tiny").iterdir()
    assert api.resume(cut).status == "done"
    assert not (tmp_path / "mlflow.db").exists()
    client = MlflowClient(tracking_uri=store)
    (run,) = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == cut.name
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2, 3]


def test_tracker_names_are_checked_before_anything_runs(tmp_path, tiny_config, monkeypatch):
    with pytest.raises(ConfigError, match="unknown tracker 'tensorbord'; did you mean 'tensorboard'") as info:
        validate({**tiny_config, "track": ["tensorbord"]})
    assert info.value.path == "track[0]"
    with pytest.raises(ConfigError, match="listed twice"):
        validate({**tiny_config, "track": ["mlflow", "mlflow"]})
    import dataclasses

    missing = dataclasses.replace(TRACKERS.get("mlflow"), requires="expkit_no_such_library")
    monkeypatch.setitem(TRACKERS._items, "mlflow", missing)  # as if mlflow were not installed
    with pytest.raises(ConfigError, match=r"pip install 'expkit\[mlflow\]'"):
        check_trackers(["tensorboard", "mlflow"])
    path = tmp_path / "t.yaml"
    path.write_text(json.dumps(tiny_config))
    assert main(["run", str(path), "--track", "tensorboard,mlflow", "--runs-dir", str(tmp_path / "runs")]) == 2
    assert not (tmp_path / "runs").exists()


def test_track_on_the_command_line(tmp_path, tiny_config, capsys):
    path = tmp_path / "t.yaml"
    path.write_text(json.dumps({**tiny_config, "track": ["mlflow"], "train": {**tiny_config["train"], "epochs": 1}}))
    assert main(["config", str(path)]) == 0 and "track: [mlflow]" in capsys.readouterr().out
    assert main(["run", str(path), "--track", "tensorboard", "--runs-dir", str(tmp_path / "runs")]) == 0
    folder = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert (folder / "tensorboard").is_dir() and not (tmp_path / "mlflow.db").exists()
    assert main(["run", str(path), "--track", "none", "--runs-dir", str(tmp_path / "runs2")]) == 0
    assert not (tmp_path / "mlflow.db").exists()


def test_tracking_a_finished_sweep_says_so_and_names_the_export_command(tmp_path, tiny_config):
    """A tracker records a trial while it trains: a rerun with `track` over finished trials trains
    nothing and tracks nothing, and one line says how to record them (the command it names works)."""
    from expkit.sweeps.driver import run_sweep

    sweep_dir, counts = run_sweep(validate(sweep_config(tiny_config, [])), runs_dir=tmp_path / "runs",
                                  log=io.StringIO())
    assert counts == {"done": 2}
    log = io.StringIO()
    _, counts = run_sweep(validate(sweep_config(tiny_config, ["tensorboard"])), runs_dir=tmp_path / "runs", log=log)
    assert counts == {"done": 2} and not (sweep_dir / "tensorboard").exists()
    line = next(l for l in log.getvalue().splitlines() if l.startswith("track: "))
    assert line == (f"track: 2 of 2 trials had finished before and are not tracked again; to record them: "
                    f"expkit export tensorboard {sweep_dir}")
    assert main(line.split("to record them: expkit ")[1].split()) == 0
    assert (sweep_dir / "tensorboard").is_dir()
