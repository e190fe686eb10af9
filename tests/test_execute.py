"""Running sweeps: real processes on one sweep, signals, the pre-flight checks, and records kept."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from expkit.config import validate
from expkit.errors import ConfigError
from expkit.sweeps.driver import run_sweep
from expkit.sweeps.trials import expand_sweep

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO / "src")}
TIMING = ["fit_seconds", "fit_seconds_std", "path"]


def cli(*args):
    return [sys.executable, "-m", "expkit.cli", *map(str, args)]


def sweep_file(tmp_path, tiny_config, name="sw", grid=None, seeds=None, epochs=2, **extra):
    cfg = {**tiny_config, "name": name, "train": {**tiny_config["train"], "epochs": epochs},
           "sweep": {"grid": grid or {"train.learning_rate": [0.1, 0.01, 0.001]}, **({"seeds": seeds} if seeds else {})},
           **extra}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def table(sweep_dir):
    return pd.read_csv(sweep_dir / "results.csv").drop(columns=TIMING)


def test_four_processes_on_one_sweep_train_each_trial_once(tmp_path, tiny_config):
    """Four `expkit run` started together on a 6-trial sweep: every trial trained exactly once,
    by one process, every process exits 0, and the table equals a single process's."""
    path = sweep_file(tmp_path, tiny_config, seeds=[0, 1])
    runs = tmp_path / "together"
    procs = [subprocess.Popen(cli("run", path, "--runs-dir", runs), env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], [err[-2000:] for _, err in outputs]
    sweep_dir = runs / "sw"
    trials = json.loads((sweep_dir / "manifest.json").read_text())["trials"]
    assert len(trials) == 6 and all(t["status"] == "done" for t in trials)

    trained = [line for _, err in outputs for line in err.splitlines() if line.endswith(": training")]
    assert sorted(line.split("(")[1][:10] for line in trained) == sorted(t["id"] for t in trials)
    assert not (sweep_dir / ".attempts").exists()  # no folder was set aside: none was started twice
    for t in trials:  # the process that wrote the record is the one that held the folder throughout
        record = json.loads((sweep_dir / t["id"] / "results.json").read_text())
        status = json.loads((sweep_dir / t["id"] / "status.json").read_text())
        assert record["pid"] == status["pid"] and record["status"] == "done"
    assert list((sweep_dir / ".claims").iterdir()) == []  # every claim released

    alone = subprocess.run(cli("run", path, "--runs-dir", tmp_path / "alone"), env=ENV, capture_output=True,
                           text=True, timeout=600)
    assert alone.returncode == 0, alone.stderr
    pd.testing.assert_frame_equal(table(sweep_dir), table(tmp_path / "alone" / "sw"))


def test_sigterm_records_the_finished_epochs_and_exits_143(tmp_path, tiny_config):
    cfg = {**tiny_config, "name": "term", "data": {**tiny_config["data"],
           "options": {**tiny_config["data"]["options"], "n_train": 4000}},
           "train": {**tiny_config["train"], "epochs": 500, "batch_size": 8, "steps_per_execution": 1}}
    path = tmp_path / "term.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.Popen(cli("run", path, "--runs-dir", tmp_path / "runs"), env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    metrics = None
    while time.time() < deadline and metrics is None:
        found = list((tmp_path / "runs").glob("term/*/metrics.csv"))
        if found and len(found[0].read_text().splitlines()) >= 3:  # header + two epochs
            metrics = found[0]
        time.sleep(0.1)
    assert metrics is not None, "the run never finished two epochs"
    sent = time.time()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    print(f"SIGTERM to exit: {time.time() - sent:.2f} s")
    assert proc.returncode == 143, err
    assert "Traceback" not in err and "interrupted" in err
    record = json.loads((metrics.parent / "results.json").read_text())
    rows = metrics.read_text().splitlines()[1:]
    assert record["status"] == "interrupted" and record["epochs_run"] == len(rows) >= 2
    assert record["fit_seconds"] > 0 and 0 < record["best"]["val_accuracy"] <= 1
    assert json.loads((metrics.parent / "status.json").read_text())["status"] == "interrupted"


def test_a_trial_mistake_stops_the_sweep_before_anything_trains(tmp_path, tiny_config):
    """Pre-flight: the second trial's unknown metric is found before the first trial trains."""
    path = sweep_file(tmp_path, tiny_config, grid={"train.metrics": [["accuracy"], ["accuracy", "precisionn"]]})
    out = subprocess.run(cli("run", path, "--runs-dir", tmp_path / "runs"), env=ENV, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith(f"expkit: error: {path}:") and "trial 2" in last and "precisionn" in last
    assert not list((tmp_path / "runs").glob("sw/*/results.json"))


def test_a_missing_dataset_file_stops_the_sweep_with_exit_2(tmp_path, tiny_config):
    path = sweep_file(tmp_path, tiny_config, data={"dataset": "npz", "path": str(tmp_path / "nowhere.npz")})
    started = time.time()
    out = subprocess.run(cli("run", path, "--runs-dir", tmp_path / "runs"), env=ENV, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert "nowhere.npz" in out.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "runs" / "sw").exists()
    print(f"refused in {time.time() - started:.1f} s")


def test_changed_sweep_keeps_the_earlier_trials(tmp_path, tiny_config):
    log = open(os.devnull, "w")
    first = validate({**tiny_config, "name": "sw", "train": {**tiny_config["train"], "epochs": 1},
                      "sweep": {"grid": {"train.learning_rate": [0.1, 0.01]}}})
    run_sweep(first, runs_dir=tmp_path, log=log)
    second = validate({**first.to_dict(), "sweep": {"grid": {"train.learning_rate": [0.01, 0.001]}}})
    sweep_dir, counts = run_sweep(second, runs_dir=tmp_path, log=log)
    assert counts == {"done": 2}  # the current grid's trials
    trials = json.loads((sweep_dir / "manifest.json").read_text())["trials"]
    assert [(t["values"]["train.learning_rate"], t.get("in_grid", True)) for t in trials] == [
        (0.01, True), (0.001, True), (0.1, False)]
    rows = pd.read_csv(sweep_dir / "results.csv")
    print(rows.to_string())
    assert sorted(rows["train.learning_rate"]) == [0.001, 0.01, 0.1]
    earlier = rows.loc[rows["train.learning_rate"] == 0.1]
    assert list(earlier["status"]) == ["done"] and list(earlier["grid"]) == ["earlier"]
    assert rows.loc[rows["train.learning_rate"] != 0.1, "grid"].isna().all()


def test_a_damaged_record_is_retrained_not_a_crash(tmp_path, tiny_config):
    log = open(os.devnull, "w")
    cfg = validate({**tiny_config, "name": "sw", "train": {**tiny_config["train"], "epochs": 1},
                    "sweep": {"grid": {"train.learning_rate": [0.1, 0.01]}}})
    sweep_dir, _ = run_sweep(cfg, runs_dir=tmp_path, log=log)
    damaged = sweep_dir / expand_sweep(cfg)[0].id
    (damaged / "results.json").write_text('{"status": "done", "best": {')
    untouched = (sweep_dir / expand_sweep(cfg)[1].id / "results.json").stat().st_mtime_ns
    sweep_dir, counts = run_sweep(cfg, runs_dir=tmp_path, log=log)
    assert counts == {"done": 2}
    assert json.loads((damaged / "results.json").read_text())["status"] == "done"
    (kept,) = (sweep_dir / ".attempts").iterdir()
    assert kept.name == f"{damaged.name}-1" and (kept / "results.json").read_text().endswith("{")
    assert (sweep_dir / expand_sweep(cfg)[1].id / "results.json").stat().st_mtime_ns == untouched


def test_trials_that_resolve_to_one_experiment_are_refused(tiny_config):
    """Listed values that differ but end as one config (sweep.seeds overrides a swept seed) would
    count one trained run twice in the table."""
    cfg = validate({**tiny_config, "name": "sw", "sweep": {"grid": {"seed": [1, 2]}, "seeds": [5]}})
    with pytest.raises(ConfigError, match="are the same experiment") as info:
        expand_sweep(cfg)
    assert info.value.path == "sweep" and "seed=1" in info.value.message and "seed=2" in info.value.message


def test_a_sweep_folder_that_stops_being_writable_is_one_line_exit_1(tmp_path, tiny_config, monkeypatch, capsys):
    """The disk fills after the first trial: one error line naming the folder, exit 1, no traceback,
    and the finished trial's record intact."""
    import errno

    import expkit.sweeps.tables as trials_mod
    from expkit.cli import main

    real = trials_mod.write_json_atomic
    writes = {"n": 0}

    def full_after_first_trial(path, data):
        writes["n"] += 1
        if writes["n"] >= 3:  # the manifest at start, after trial 1, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(trials_mod, "write_json_atomic", full_after_first_trial)
    path = sweep_file(tmp_path, tiny_config, epochs=1)
    assert main(["run", str(path), "--runs-dir", str(tmp_path / "runs")]) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("expkit: error:")]
    assert len(lines) == 1 and "No space left on device" in lines[0] and str(tmp_path / "runs" / "sw") in lines[0]
    assert "Traceback" not in err
    finished = list((tmp_path / "runs" / "sw").glob("*/results.json"))
    assert finished and all(json.loads(p.read_text())["status"] == "done" for p in finished)


def test_an_unwritable_runs_folder_is_refused_before_any_work(tmp_path, tiny_config):
    """/proc refuses new files even to root: the error comes before data is loaded."""
    path = sweep_file(tmp_path, tiny_config)
    out = subprocess.run(cli("run", path, "--runs-dir", "/proc/expkit-runs"), env=ENV, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("expkit: error: /proc/expkit-runs: cannot write here")


def test_a_checkpoint_another_backend_wrote_is_set_aside_not_continued(tmp_path):
    """What runs is what was asked: an interrupted vectorised attempt (JAX) rerun one at a time on
    TensorFlow starts afresh and says why; on JAX it continues from the checkpoint."""
    import keras

    from expkit.checkpoint import write_checkpoint
    from expkit.runfolder import INTERRUPTED
    from expkit.sweeps.work import open_attempt

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        write_checkpoint(model, tmp_path / name, {"epoch": 2, "history": [{"epoch": 1}, {"epoch": 2}], "backend": "jax"})
    note, resume = open_attempt(tmp_path / "a", INTERRUPTED, backend="tensorflow")
    assert not resume and note.startswith("its checkpoint is from jax, this attempt trains on tensorflow; "
                                          "earlier attempt (interrupted) kept in ")
    assert (tmp_path / ".attempts" / "a-1" / "checkpoint.keras").is_file()  # kept, not lost
    assert list((tmp_path / "a").iterdir()) == []
    assert open_attempt(tmp_path / "b", INTERRUPTED, backend="jax") == ("resuming the interrupted attempt after epoch 2; ", True)
