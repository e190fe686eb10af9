"""Vectorised sweeps: grouping (pure), the knobs, and whole groups against the same trials one at a time."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from expkit.checkpoint import resumable_epoch
from expkit.config import validate
from expkit.errors import ConfigError
from expkit.sweeps.driver import run_sweep
from expkit.runfolder import read_metrics, read_record
from expkit.sweeps.dryrun import dry_run
from expkit.sweeps.trials import expand_sweep
from expkit.sweeps.vectorize import grouping
from expkit.sweeps.vectorize import plan as launch
from expkit.sweeps.vectorize.grouping import ModelShape

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO / "src")}
needs_jax = pytest.mark.skipif(not launch.jax_installed(), reason="jax is not installed (pip install 'expkit[jax]')")


def sweep_cfg(tiny_config, sweep, **train):
    base = {**tiny_config, "name": "vec", "train": {**tiny_config["train"], "epochs": 2, **train}}
    return validate({**base, "sweep": sweep})


def shapes_of(trials, layers=(("Dense", (None, 3), ((64, 3), (3,))),)):
    return {t.id: ModelShape(tuple(layers), 1000.0) for t in trials}


# --- grouping: pure -----------------------------------------------------------------------------------


def test_numbers_that_change_no_program_group_and_zero_is_a_program_of_its_own(tiny_config):
    cfg = sweep_cfg(tiny_config, {"grid": {"train.learning_rate": [0.1, 0.01], "model.layers.1.dense.l2": [0.0, 0.001, 0.01]},
                                  "seeds": [1, 2]})
    trials = expand_sweep(cfg)
    plan = grouping.plan_groups(cfg, trials, shapes_of(trials))
    assert [len(g.trials) for g in plan.groups] == [4, 8]  # l2 = 0 (no regulariser term) apart from l2 > 0
    assert plan.alone == []
    assert set(plan.groups[1].keys) == {"sweep.grid.train.learning_rate", "sweep.grid.model.layers.1.dense.l2", "sweep.seeds"}
    assert any(n.startswith("sweep.grid.model.layers.1.dense.l2: 0.0 and 0.001") for n in plan.notes)


def test_what_changes_the_program_keeps_trials_apart_and_true_names_the_key(tiny_config):
    cfg = sweep_cfg(tiny_config, {"grid": {"train.optimizer": ["sgd", "adam"]}, "vectorize": True})
    trials = expand_sweep(cfg)
    plan = grouping.plan_groups(cfg, trials, shapes_of(trials))
    assert plan.groups == [] and len(plan.alone) == 2
    with pytest.raises(ConfigError) as info:
        grouping.require_one_group(cfg, trials, shapes_of(trials))
    assert info.value.path == "sweep.grid.train.optimizer" and '"sgd" and "adam"' in info.value.message

    units = sweep_cfg(tiny_config, {"grid": {"model.layers.1.dense.units": [8, 16]}, "vectorize": True})
    trials = expand_sweep(units)
    shapes = {trials[0].id: ModelShape((("Dense", (None, 8), ((64, 8), (8,))),), 1.0),
              trials[1].id: ModelShape((("Dense", (None, 16), ((64, 16), (16,))),), 1.0)}
    with pytest.raises(ConfigError) as info:
        grouping.require_one_group(units, trials, shapes)
    assert info.value.path == "sweep.grid.model.layers.1.dense.units"
    assert "(64, 8)" in info.value.message and "(64, 16)" in info.value.message

    batch = sweep_cfg(tiny_config, {"grid": {"train.batch_size": [8, 16]}})
    assert grouping.plan_groups(batch, expand_sweep(batch), shapes_of(expand_sweep(batch))).groups == []
    mixed = sweep_cfg(tiny_config, {"grid": {"train.learning_rate": [0.1, 0.01]}}, precision="mixed_bfloat16")
    with pytest.raises(ConfigError) as info:
        grouping.check_vectorisable(mixed, expand_sweep(mixed))
    assert info.value.path == "train.precision"


def test_chunks_are_equal_and_fit_the_budget():
    trials = list(range(10))
    assert [len(c) for c in grouping.chunk(trials, 100, 0, 10_000)] == [10]
    assert [len(c) for c in grouping.chunk(trials, 100, 0, 10_000, max_size=4)] == [4, 3, 3]
    assert [len(c) for c in grouping.chunk(trials, 100, 600, 1_000)] == [4, 3, 3]  # room for 4 beside the data
    assert [len(c) for c in grouping.chunk(trials, 100, 5_000, 1_000)] == [1] * 10  # always at least one
    assert sum(grouping.chunk(trials, 100, 0, 350), []) == trials


def test_auto_vectorises_only_what_outlasts_starting_jax(tiny_config):
    cfg = sweep_cfg(tiny_config, {"grid": {"train.learning_rate": [0.1, 0.01, 0.001]}})
    trials = expand_sweep(cfg)
    group = grouping.Group(trials, ["sweep.grid.train.learning_rate"])
    small = {t.id: ModelShape((), 1e3) for t in trials}
    assert not grouping.worth_vectorizing(group, small, n_train=120)       # the test's tiny data
    assert grouping.worth_vectorizing(group, small, n_train=54_000 * 20)   # full Fashion-MNIST, long
    big = {t.id: ModelShape((), 2.7e7) for t in trials}                   # CNN2's forward cost
    assert grouping.worth_vectorizing(group, big, n_train=5_000)


# --- the knobs: per-trial numbers inside one traced program -------------------------------------------


def test_a_knob_computes_per_trial_and_refuses_branches_the_trials_disagree_on():
    import jax
    import jax.numpy as jnp

    from expkit.sweeps.vectorize.program import Knob, NotVectorizable

    def step(x, rate):
        r = Knob(rate, [0.1, 0.3], "dropout.rate")
        assert r > 0 and not (r == 1.0)   # every trial agrees: Python branches as Keras writes them
        return x / (1.0 - r) * jnp.asarray(r, dtype="float32")

    out = jax.vmap(step)(jnp.ones((2, 3)), jnp.asarray([0.1, 0.3]))
    assert np.allclose(out[:, 0], [0.1 / 0.9, 0.3 / 0.7])
    with pytest.raises(NotVectorizable, match="take different branches"):
        bool(Knob(0.0, [0.0, 0.2], "l2") != 0.0)
    with pytest.raises(NotVectorizable, match="one Python number"):
        float(Knob(0.0, [0.1, 0.2], "momentum"))


# --- whole groups -------------------------------------------------------------------------------------

SEQUENTIAL = """
import json, sys
import keras
from expkit.checkpoint import resumable_epoch
from expkit.config import validate
from expkit.runner import run_experiment
from expkit.runfolder import read_metrics, read_record
out = []
for spec in json.load(open(sys.argv[1])):
    folder = run_experiment(validate({**spec["config"], "backend": "jax"}), runs_dir=sys.argv[2], trial=spec["trial"])
    record = read_record(folder.path)
    out.append({"id": spec["trial"]["id"], "metrics": read_metrics(folder.path), "status": record.status,
                "test": record.test, "per_class": record.per_class, "files": sorted(p.name for p in folder.path.iterdir())})
    keras.backend.clear_session()
json.dump(out, open(sys.argv[3], "w"))
"""


def one_at_a_time_on_jax(trials, tmp_path) -> dict:
    """The trials through runner.run_experiment, one at a time, in a process whose Keras runs on JAX."""
    specs = tmp_path / "specs.json"
    specs.write_text(json.dumps([{"config": t.config.to_dict(), "trial": {"id": t.id, "values": t.values, "seed": t.seed}}
                                 for t in trials]))
    script, out = tmp_path / "sequential.py", tmp_path / "sequential.json"
    script.write_text(SEQUENTIAL)
    done = subprocess.run([sys.executable, str(script), str(specs), str(tmp_path / "seq"), str(out)],
                          env={**ENV, "KERAS_BACKEND": "jax"}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return {r["id"]: r for r in json.loads(out.read_text())}


@needs_jax
def test_groups_equal_their_trials_one_at_a_time_on_jax(tiny_config, tmp_path, monkeypatch):
    """Rates, momenta, dropout rates, L2 factors, schedules and seeds: two programs (an exponential
    schedule inside the optimizer; a plateau schedule driven between epochs) whose every epoch's loss,
    accuracy, val_loss and val_accuracy and test scores equal the same trials trained alone on JAX (their
    own data order, initial weights and dropout draws); early stopping restores each trial's own best
    weights, and a trial whose loss turns NaN is `diverged` while the others go on."""
    monkeypatch.setattr(grouping, "MIN_SEQUENTIAL_SECONDS", 0.0)  # auto: vectorise even this tiny sweep
    tiny = {**tiny_config, "data": {**tiny_config["data"], "options": {**tiny_config["data"]["options"], "n_train": 130}},
            "model": {"layers": [{"flatten": {}}, {"dense": {"units": 16, "activation": "relu", "l2": 0.01}},
                                 {"dropout": 0.2}, {"dense": {"units": 3, "activation": "softmax"}}]}}
    exponential = [{"type": "exponential", "decay_rate": 0.9}, {"type": "exponential", "decay_rate": 0.5, "decay_epochs": 0.5}]
    plateau = [{"type": "plateau", "factor": 0.5, "patience": 0}] * 2
    cfg = sweep_cfg(tiny, {"zip": {"train.learning_rate": [0.05, 0.3, 1.0e12, 0.1],
                                   "train.optimizer.momentum": [0.5, 0.9, 0.5, 0.7],
                                   "model.layers.2.dropout": [0.1, 0.3, 0.2, 0.25],
                                   "model.layers.1.dense.l2": [0.01, 0.001, 0.01, 0.02],
                                   "train.schedule": exponential + plateau},
                           "seeds": [3, 4]},
                    optimizer={"name": "sgd", "momentum": 0.5}, validation_batch_size=4,  # 13 examples: 3 batches and 1
                    early_stopping={"monitor": "val_loss", "patience": 0, "restore_best_weights": True})
    log = equal_to_one_at_a_time(cfg, tmp_path, {"done": 6, "diverged": 2})
    assert log.count("4 trials as one JAX program") == 2


@needs_jax
def test_a_convolutional_group_takes_a_step_per_call_and_equals_its_trials(tiny_config, tmp_path, monkeypatch):
    """On a CPU a model that convolves runs one compiled step per batch (XLA's convolutions crawl
    inside a compiled loop); the numbers are the same as one trial at a time."""
    monkeypatch.setattr(grouping, "MIN_SEQUENTIAL_SECONDS", 0.0)
    tiny = {**tiny_config, "model": {"layers": [{"conv2d": {"filters": 4, "kernel_size": 3, "activation": "relu"}},
                                                {"dropout": 0.2}, {"flatten": {}}, {"dense": {"units": 3, "activation": "softmax"}}]}}
    cfg = sweep_cfg(tiny, {"grid": {"model.layers.1.dropout": [0.1, 0.4]}, "seeds": [3, 4], "vectorize": True},
                    test_each_epoch=True)
    log = equal_to_one_at_a_time(cfg, tmp_path, {"done": 4})
    assert "4 trials as one JAX program" in log


def equal_to_one_at_a_time(cfg, tmp_path, counts: dict) -> str:
    """Run the sweep (vectorised) and the same trials alone on JAX; assert equal per-epoch metrics,
    test scores, statuses and files; returns the sweep's log."""
    log = tmp_path / "log.txt"
    with open(log, "w") as fh:
        sweep_dir, got = run_sweep(cfg, runs_dir=tmp_path / "vec", log=fh)
    trials = expand_sweep(cfg)
    assert got == counts, log.read_text()
    alone = one_at_a_time_on_jax(trials, tmp_path)
    worst = 0.0
    for t in trials:
        folder = sweep_dir / t.id
        record, rows, ref = read_record(folder), read_metrics(folder), alone[t.id]
        assert record.status == ref["status"] and record.backend == "jax" and "vectorized" in record.extra
        assert sorted(p.name for p in folder.iterdir()) == ref["files"]  # the same files as a trial alone
        if record.status == "diverged":
            assert np.isnan(record.test["loss"])
            continue
        assert len(rows) == len(ref["metrics"]) >= 1
        for mine, theirs in zip(rows, ref["metrics"]):
            assert list(mine) == list(theirs)  # metrics.csv's columns, in order
            for key in set(theirs) - {"epoch_seconds"}:
                worst = max(worst, abs(mine[key] - theirs[key]))
        for key in ("loss", "accuracy"):
            worst = max(worst, abs(record.test[key] - ref["test"][key]))
        assert record.per_class == ref["per_class"] and "confusion.csv" in ref["files"]  # the same test predictions
    print(f"largest difference from one at a time: {worst:.3g}")
    assert worst < 1e-4, worst
    assert list((sweep_dir / ".claims").iterdir()) == []
    assert yaml.safe_load((sweep_dir / trials[0].id / "config.yaml").read_text())["backend"] == "jax"
    return log.read_text()


@needs_jax
def test_a_group_keras_cannot_trace_per_trial_runs_one_at_a_time(tiny_config, tmp_path, monkeypatch):
    """Dropout 1.0 is another branch in Keras (all zeros) than 0.5: found while tracing, before any
    folder is written, and the sweep's own loop trains both trials."""
    monkeypatch.setattr(grouping, "MIN_SEQUENTIAL_SECONDS", 0.0)
    tiny = {**tiny_config, "model": {"layers": [{"flatten": {}}, {"dense": {"units": 8}}, {"dropout": 0.5},
                                                {"dense": {"units": 3, "activation": "softmax"}}]}}
    cfg = sweep_cfg(tiny, {"grid": {"model.layers.2.dropout": [0.5, 1.0]}}, epochs=1)
    log = tmp_path / "log.txt"
    with open(log, "w") as fh:
        sweep_dir, counts = run_sweep(cfg, runs_dir=tmp_path, log=fh)
    assert counts == {"done": 2}
    assert "cannot train as one program: dropout.rate: Keras branches on it" in log.read_text(), log.read_text()
    assert {read_record(sweep_dir / t.id).backend for t in expand_sweep(cfg)} == {os.environ["KERAS_BACKEND"]}


@needs_jax
def test_resume_trains_the_unfinished_trials_as_a_new_group_in_chunks(tiny_config, tmp_path):
    first = sweep_cfg(tiny_config, {"grid": {"train.learning_rate": [0.05, 0.02]}, "vectorize": True})
    sweep_dir, counts = run_sweep(first, runs_dir=tmp_path, log=open(os.devnull, "w"))
    assert counts == {"done": 2}
    kept = {t.id: (sweep_dir / t.id / "results.json").stat().st_mtime_ns for t in expand_sweep(first)}

    more = sweep_cfg(tiny_config, {"grid": {"train.learning_rate": [0.05, 0.02, 0.01, 0.005, 0.002]},
                                   "vectorize": True, "vectorize_max": 2})
    log = tmp_path / "log.txt"
    with open(log, "w") as fh:
        sweep_dir, counts = run_sweep(more, runs_dir=tmp_path, log=fh)
    text = log.read_text()
    assert counts == {"done": 5}
    assert "group 1/1: 3 trials" in text and "3 trials in 2 programs of at most 2 (sweep.vectorize_max is 2)" in text
    for trial_id, mtime in kept.items():  # finished trials untouched
        assert (sweep_dir / trial_id / "results.json").stat().st_mtime_ns == mtime
    sizes = sorted(read_record(sweep_dir / t.id).extra["vectorized"]["trials"] for t in expand_sweep(more) if t.id not in kept)
    assert sizes == [1, 2, 2]


@needs_jax
def test_a_large_group_trains_in_one_process_per_core(tiny_config, tmp_path, monkeypatch):
    """XLA runs a small model's steps on one core: 8 trials on 2 cores train as 2 processes of 4."""
    monkeypatch.setattr("expkit.sweeps.vectorize.plan.available_cores", lambda: 2)
    cfg = sweep_cfg(tiny_config, {"grid": {"train.learning_rate": [0.1, 0.07, 0.05, 0.03, 0.02, 0.01, 0.005, 0.002]},
                                  "vectorize": True}, epochs=1)
    log = tmp_path / "log.txt"
    with open(log, "w") as fh:
        sweep_dir, counts = run_sweep(cfg, runs_dir=tmp_path, log=fh)
    assert counts == {"done": 8}
    text = log.read_text()
    assert "8 trials differing in sweep.grid.train.learning_rate train as one JAX program in each of 2 processes" in text
    assert text.count(": done") == 8 and "skipped" not in text  # one line per trial, none claims it was skipped
    lanes = sorted(read_record(sweep_dir / t.id).extra["vectorized"]["lane"] for t in expand_sweep(cfg))
    assert lanes == ["1/2"] * 4 + ["2/2"] * 4
    assert list((sweep_dir / ".claims").iterdir()) == []


def test_vectorize_true_names_the_key_before_anything_is_written(tiny_config, tmp_path, monkeypatch):
    cfg = sweep_cfg(tiny_config, {"grid": {"model.layers.1.dense.units": [8, 16]}, "vectorize": True})
    with pytest.raises(ConfigError) as info:
        run_sweep(cfg, runs_dir=tmp_path, log=open(os.devnull, "w"))
    assert info.value.path == "sweep.grid.model.layers.1.dense.units"
    assert not (tmp_path / "vec").exists()

    monkeypatch.setattr(launch, "jax_installed", lambda: False)
    cfg = sweep_cfg(tiny_config, {"grid": {"train.learning_rate": [0.1, 0.01]}, "vectorize": True})
    with pytest.raises(ConfigError) as info:
        run_sweep(cfg, runs_dir=tmp_path, log=open(os.devnull, "w"))
    assert info.value.path == "sweep.vectorize" and "jax is not installed" in info.value.message


def test_auto_without_jax_or_gain_runs_one_at_a_time_and_says_so(tiny_config, tmp_path, monkeypatch):
    cfg = sweep_cfg(tiny_config, {"grid": {"train.learning_rate": [0.1, 0.01]}}, epochs=1)
    log = tmp_path / "log.txt"
    with open(log, "w") as fh:
        _, counts = run_sweep(cfg, runs_dir=tmp_path / "a", log=fh)
    assert counts == {"done": 2}
    if launch.jax_installed():
        assert "too little to gain from a JAX program; they run one at a time" in log.read_text()
    monkeypatch.setattr(launch, "jax_installed", lambda: False)
    with open(log, "w") as fh:
        _, counts = run_sweep(cfg, runs_dir=tmp_path / "b", log=fh)
    assert counts == {"done": 2}
    lines = [line for line in log.read_text().splitlines() if line.startswith("vectorize:")]
    assert lines == ["vectorize: jax is not installed here (pip install 'expkit[jax]'), so the trials run one at a time"]


def test_dry_run_shows_the_groups(tiny_config, capsys):
    cfg = sweep_cfg(tiny_config, {"grid": {"model.layers.1.dense.units": [8, 16]}, "seeds": [1, 2]})
    rows = dry_run(cfg)
    out = capsys.readouterr().out
    assert [r["group"] for r in rows] == ["1", "1", "2", "2"]
    assert "group 1: 2 trials (sweep.seeds) can train as one JAX program" in out and "group 2: 2 trials" in out
    assert "apart: sweep.grid.model.layers.1.dense.units: changes the model's shapes" in out
    assert "runs: the 4 trials of the vectorised groups in JAX processes of this machine" in out


def test_dry_run_says_what_auto_does_with_a_convolving_group_on_a_cpu(tiny_config, capsys):
    """On a CPU `auto` trains convolving trials one at a time: the dry run says so instead of a group."""
    conv = {**tiny_config, "data": {**tiny_config["data"], "options": {**tiny_config["data"]["options"],
                                                                       "shape": [8, 8, 1]}},
            "model": {"layers": [{"conv2d": {"filters": 4, "kernel_size": 3}}, {"flatten": {}},
                                 {"dense": {"units": 3, "activation": "softmax"}}]}}
    rows = dry_run(sweep_cfg(conv, {"grid": {"train.learning_rate": [0.1, 0.01]}}), device="cpu", jobs=2)
    out = capsys.readouterr().out
    assert [r["group"] for r in rows] == ["-", "-"]
    assert "convolve, and on a CPU auto trains them one at a time" in out
    assert "can train as one JAX program" not in out
    assert "runs: the 2 trials 2 at a time in worker processes" in out


@needs_jax
def test_sigterm_records_the_groups_finished_epochs_and_exits_143(tiny_config, tmp_path):
    cfg = {**tiny_config, "name": "vterm", "data": {**tiny_config["data"], "options": {**tiny_config["data"]["options"],
                                                                                    "n_train": 4000}},
           "train": {**tiny_config["train"], "epochs": 500, "batch_size": 8},
           "sweep": {"grid": {"train.learning_rate": [0.01, 0.001]}, "vectorize": True}}
    path = tmp_path / "vterm.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.Popen([sys.executable, "-m", "expkit.cli", "run", str(path), "--runs-dir", str(tmp_path / "runs")],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sweep_dir = tmp_path / "runs" / "vterm"
    deadline = time.time() + 300
    while time.time() < deadline and not any(len(read_metrics(f)) >= 2 for f in sweep_dir.glob("*/") if f.name[0] != "."):
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    for folder in (f for f in sweep_dir.iterdir() if not f.name.startswith(".") and f.is_dir()):
        record = read_record(folder)
        assert record.status == "interrupted" and record.epochs_run >= 1
        assert len(read_metrics(folder)) == record.epochs_run
    assert list((sweep_dir / ".claims").iterdir()) == []


@needs_jax
def test_an_interrupted_group_resumes_from_each_trials_checkpoint_with_the_uninterrupted_numbers(tiny_config, tmp_path):
    """SIGTERM while a group trains: each trial keeps a checkpoint of its last finished epoch; the rerun
    continues there (dropout's draws, the rate schedule and early stopping's state included) and ends
    with the numbers of a run never interrupted."""
    cfg = {**tiny_config, "name": "vresume",
           "data": {**tiny_config["data"], "options": {**tiny_config["data"]["options"], "n_train": 1500}},
           "model": {"layers": [{"flatten": {}}, {"dense": {"units": 16, "activation": "relu"}}, {"dropout": 0.3},
                                {"dense": {"units": 3, "activation": "softmax"}}]},
           "train": {**tiny_config["train"], "epochs": 30, "batch_size": 8, "optimizer": "sgd",
                     "schedule": {"type": "step", "factor": 0.5, "step_epochs": 3},
                     "early_stopping": {"monitor": "val_loss", "patience": 8, "restore_best_weights": True}},
           "sweep": {"grid": {"train.learning_rate": [0.05, 0.01]}, "vectorize": True}}
    path = tmp_path / "vresume.yaml"
    path.write_text(yaml.safe_dump(cfg))
    command = [sys.executable, "-m", "expkit.cli", "run", str(path), "--runs-dir"]
    uninterrupted = subprocess.Popen([*command, str(tmp_path / "reference")], env=ENV, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
    proc = subprocess.Popen([*command, str(tmp_path / "runs")], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    sweep_dir = tmp_path / "runs" / "vresume"
    trials = expand_sweep(validate(cfg))
    deadline = time.time() + 300
    while time.time() < deadline and not all(len(read_metrics(sweep_dir / t.id)) >= 2
                                             and (sweep_dir / t.id / "checkpoint.keras").exists() for t in trials):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    stopped = {t.id: read_record(sweep_dir / t.id) for t in trials}
    assert all(r.status == "interrupted" for r in stopped.values()), err[-2000:]
    assert all(r.epochs_run < 30 for r in stopped.values())  # stopped mid-training, not after it
    # the stop may come between an epoch's metrics.csv row and its checkpoint: the rerun repeats that epoch
    kept = {t.id: resumable_epoch(sweep_dir / t.id) for t in trials}
    assert all(stopped[i].epochs_run - 1 <= kept[i] <= stopped[i].epochs_run for i in kept), (kept, stopped)
    assert uninterrupted.wait(timeout=300) == 0, uninterrupted.stderr.read()[-2000:]
    reference = tmp_path / "reference" / "vresume"

    log = tmp_path / "log.txt"
    with open(log, "w") as fh:
        _, counts = run_sweep(validate(cfg), runs_dir=tmp_path / "runs", log=fh)
    text = log.read_text()
    assert counts == {"done": 2}, text
    for t in trials:
        record, rows, ref = read_record(sweep_dir / t.id), read_metrics(sweep_dir / t.id), read_metrics(reference / t.id)
        epoch = kept[t.id]
        assert f"{t.heading()}: resuming the interrupted attempt after epoch {epoch}; training" in text, text
        assert [r["epoch"] for r in record.resumed] == [epoch] and record.backend == "jax"
        assert len(rows) == len(ref) and rows[-1]["epoch"] == len(ref)
        for mine, theirs in zip(rows, ref):
            for key in set(theirs) - {"epoch_seconds"}:
                assert abs(mine[key] - theirs[key]) < 1e-5, (t.values, mine["epoch"], key)
        assert abs(record.test["accuracy"] - read_record(reference / t.id).test["accuracy"]) < 1e-5
        assert not (sweep_dir / t.id / "checkpoint.keras").exists()  # a finished trial keeps model.keras only
    assert list((sweep_dir / ".claims").iterdir()) == []


@needs_jax
def test_the_jax_processes_end_quietly_after_a_group_and_after_a_failed_check(tiny_config, tmp_path):
    """`vectorize: true` starts the JAX processes before the sweep's checks: a finished group ends them
    without noise, and a mistake the checks find stops them, with one line and exit 2."""
    good = {**tiny_config, "name": "vok", "train": {**tiny_config["train"], "epochs": 1},
            "sweep": {"grid": {"train.learning_rate": [0.1, 0.01]}, "vectorize": True}}
    bad = {**good, "name": "vbad", "train": {**good["train"], "metrics": ["accuracy", "no_such_metric"]}}
    outs = {}
    for cfg in (good, bad):
        path = tmp_path / f"{cfg['name']}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        outs[cfg["name"]] = subprocess.run([sys.executable, "-m", "expkit.cli", "run", str(path), "--runs-dir",
                                            str(tmp_path / "runs")], env=ENV, capture_output=True, text=True, timeout=300)
    ok = outs["vok"]
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert "2 trials as one JAX program" in ok.stderr
    assert not any(word in ok.stderr for word in ("Traceback", "Terminated", "exit status")), ok.stderr[-3000:]
    failed = outs["vbad"]
    assert failed.returncode == 2, failed.stderr[-3000:]
    assert failed.stderr.count("\n") == 1 and "no_such_metric" in failed.stderr
    assert not (tmp_path / "runs" / "vbad").exists()


CHECKED_IN_LANES = """
import sys, yaml
from expkit.api import sweep
from expkit.errors import ConfigError

if __name__ == "__main__":  # the JAX processes start with 'spawn', which imports this module again
    try:
        print("counts:", sweep(yaml.safe_load(open(sys.argv[1])), runs_dir=sys.argv[2]).counts)
    except ConfigError as exc:
        print("error:", exc)
    print("imported:", sorted(m for m in ("keras", "tensorflow", "jax") if m in sys.modules))
"""


@needs_jax
def test_the_jax_processes_check_their_trials_so_the_sweep_imports_no_backend(tiny_config, tmp_path, monkeypatch):
    """Every trial vectorised: the JAX processes run the checks (where the trials train), and the sweep's
    own process imports no Keras backend (TensorFlow's import was a quarter of a vectorised sweep's wall
    time). A mistake stops the sweep with the message the sweep's own checks give, for the first such trial."""
    script = tmp_path / "script.py"
    script.write_text(CHECKED_IN_LANES)
    rates = [0.1, 0.2, 0.3, 0.15, 0.4, 0.5, 0.25, 0.6]
    good = {**tiny_config, "name": "lanes", "train": {**tiny_config["train"], "epochs": 1},
            "model": {"layers": [{"flatten": {}}, {"dense": {"units": 16, "activation": "relu"}}, {"dropout": {"rate": 0.1}},
                                 {"dense": {"units": 3, "activation": "softmax"}}]},
            "sweep": {"grid": {"model.layers.2.dropout.rate": list(rates)}, "vectorize": True}}
    rates[3], rates[6] = 1.5, 1.7  # Keras rejects both; the schema does not know the layer's range
    bad = {**good, "name": "lanes_bad", "sweep": {**good["sweep"], "grid": {"model.layers.2.dropout.rate": rates}}}
    outs = []
    for cfg in (good, bad):
        path = tmp_path / f"{cfg['name']}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        done = subprocess.run([sys.executable, str(script), str(path), str(tmp_path / "runs")], env=ENV,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        outs.append(done.stdout.splitlines())
    assert outs[0] == ["counts: {'done': 8}", "imported: []"]
    assert outs[1][1] == "imported: []" and not (tmp_path / "runs" / "lanes_bad").exists()
    monkeypatch.setattr("expkit.sweeps.vectorize.plan.available_cores", lambda: 2)  # as in the JAX processes' split above
    with pytest.raises(ConfigError) as here:  # the same trials checked by this process, on its backend
        run_sweep(validate({**bad, "sweep": {**bad["sweep"], "vectorize": False}}), runs_dir=tmp_path / "runs",
                  log=open(os.devnull, "w"))
    assert str(here.value).startswith("trial 4 (model.layers.2.dropout.rate=1.5, seed 3): ")
    assert outs[1][0] == f"error: {here.value}"


@needs_jax
def test_when_the_jax_processes_cannot_check_this_process_does(tiny_config, tmp_path, monkeypatch):
    """A JAX process that ends without answering: the checks run in the sweep's process, same message."""
    from expkit.sweeps.executors.pool import WorkerPool

    monkeypatch.setattr(WorkerPool, "check", lambda self, trials, numbers, say, meanwhile=None: None)
    layers = [{"flatten": {}}, {"dense": {"units": 16, "activation": "relu"}}, {"dropout": {"rate": 0.1}},
              {"dense": {"units": 3, "activation": "softmax"}}]
    cfg = validate({**tiny_config, "name": "fallback", "model": {"layers": layers},
                    "sweep": {"grid": {"model.layers.2.dropout.rate": [0.1, 0.2, 1.5]}, "vectorize": True}})
    with pytest.raises(ConfigError) as info:
        run_sweep(cfg, runs_dir=tmp_path, log=open(os.devnull, "w"))
    assert str(info.value).startswith("trial 3 (model.layers.2.dropout.rate=1.5, seed 3): ")
    assert not (tmp_path / "fallback").exists()


@needs_jax
def test_vectorize_false_after_a_vectorised_run_says_what_it_keeps(tiny_config, tmp_path, monkeypatch):
    """`make sweep-lr VECTORIZE=false` after a vectorised run: the finished JAX trials are kept (not trained
    again), and one line says they were trained on another backend than their config's and how to retrain."""
    import io

    monkeypatch.setattr(grouping, "MIN_SEQUENTIAL_SECONDS", 0.0)
    grid = {"grid": {"train.learning_rate": [0.1, 0.01]}}
    cfg = sweep_cfg(tiny_config, {**grid, "vectorize": True})
    sweep_dir, counts = run_sweep(cfg, runs_dir=tmp_path, log=io.StringIO())
    assert counts == {"done": 2}
    ids = [t.id for t in expand_sweep(cfg)]
    assert {read_record(sweep_dir / i).backend for i in ids} == {"jax"}
    before = {i: (sweep_dir / i / "metrics.csv").read_bytes() for i in ids}
    log = io.StringIO()
    run_sweep(sweep_cfg(tiny_config, {**grid, "vectorize": False}), runs_dir=tmp_path, log=log)
    assert [t.id for t in expand_sweep(sweep_cfg(tiny_config, {**grid, "vectorize": False}))] == ids
    assert ("kept: 2 finished trials were trained on another backend than their config's (2 on jax, vectorised); "
            "their records and the tables say so. To train them again one at a time, run the sweep under another "
            "name (--set name=...)") in log.getvalue().splitlines()
    assert {i: (sweep_dir / i / "metrics.csv").read_bytes() for i in ids} == before  # nothing trained again


@needs_jax
def test_a_tracked_sweep_says_why_it_trains_one_at_a_time(tiny_config, tmp_path, monkeypatch):
    """`--track` keeps trials out of vectorised groups: one line says so, and the records say TensorFlow."""
    import io

    monkeypatch.setattr(grouping, "MIN_SEQUENTIAL_SECONDS", 0.0)
    cfg = sweep_cfg({**tiny_config, "track": ["tensorboard"]}, {"grid": {"train.learning_rate": [0.1, 0.01]}})
    log = io.StringIO()
    sweep_dir, counts = run_sweep(cfg, runs_dir=tmp_path, log=log)
    assert counts == {"done": 2}
    assert ("vectorize: track: trackers follow one run at a time, and a vectorised group does not feed them; "
            "those trials train one at a time") in log.getvalue()
    assert {read_record(sweep_dir / t.id).backend for t in expand_sweep(cfg)} == {"tensorflow"}


@needs_jax
@pytest.mark.slow  # two sweeps' worth of JAX processes (about a minute here): `make test-slow`
def test_augmentation_layers_in_a_group_equal_their_trials_one_at_a_time(tiny_config, tmp_path, monkeypatch):
    """Keras' random preprocessing layers draw from each trial's own seed generator inside the group's
    program, as Dropout does: every epoch's numbers equal the same trials trained alone on JAX."""
    monkeypatch.setattr(grouping, "MIN_SEQUENTIAL_SECONDS", 0.0)
    augmented = {**tiny_config, "model": {"layers": [{"random_flip": "horizontal"}, {"random_rotation": 0.1},
                                                     *tiny_config["model"]["layers"]]}}
    cfg = sweep_cfg(augmented, {"grid": {"train.learning_rate": [0.01, 0.03]}, "seeds": [3, 4]})
    log = equal_to_one_at_a_time(cfg, tmp_path, {"done": 4})
    assert "4 trials as one JAX program" in log


@needs_jax
def test_processes_about_to_compile_the_same_programs_take_turns(tmp_path):
    """The processes a group is split over compile identical programs: one at a time, so that the later
    ones load them from the persistent compilation cache. Checked with a real second process that tries
    the lock while this one holds it, and again after."""
    import jax

    from expkit.sweeps.vectorize.program import _compiling_alone

    lowered = [jax.jit(lambda x: x * 2.0).lower(np.zeros(3, np.float32))]
    probe = ("import sys, filelock\n"
             "try:\n"
             "    with filelock.FileLock(sys.argv[1], timeout=0.5):\n"
             "        print('free')\n"
             "except filelock.Timeout:\n"
             "    print('held')\n")
    before = jax.config.jax_compilation_cache_dir
    jax.config.update("jax_compilation_cache_dir", str(tmp_path / "xla"))
    try:
        with _compiling_alone(lowered):
            (lock,) = (tmp_path / "xla").glob("expkit-compile-*.lock")
            inside = subprocess.run([sys.executable, "-c", probe, str(lock)], capture_output=True, text=True, timeout=120)
        after = subprocess.run([sys.executable, "-c", probe, str(lock)], capture_output=True, text=True, timeout=120)
        with _compiling_alone(lowered):  # the same programs: the same lock
            assert list((tmp_path / "xla").glob("expkit-compile-*.lock")) == [lock]
        jax.config.update("jax_compilation_cache_dir", None)
        with _compiling_alone(lowered):  # no persistent cache: nothing to take turns for
            held_without = subprocess.run([sys.executable, "-c", probe, str(lock)], capture_output=True, text=True,
                                          timeout=120)
    finally:
        jax.config.update("jax_compilation_cache_dir", before)
    assert (inside.stdout.strip(), after.stdout.strip()) == ("held", "free"), inside.stderr + after.stderr
    assert held_without.stdout.strip() == "free"
