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

import expkit.runner as runner_mod
from expkit.config import validate
from expkit.errors import ConfigError
from expkit.sweeps.driver import run_sweep
from expkit.sweeps.dryrun import dry_run
from expkit.sweeps.trials import expand_sweep, trial_id

REPO = Path(__file__).resolve().parents[1]


def with_sweep(base, sweep, **train):
    return validate({**base, "name": "sw", "train": {**base["train"], "epochs": 1, **train}, "sweep": sweep})


def test_grid_zip_seeds_expand_in_order(tiny_config):
    cfg = with_sweep(tiny_config, {"grid": {"train.learning_rate": [0.1, 0.01], "train.optimizer": ["sgd", "adam"]},
                                   "zip": {"model.layers.1.dense.units": [4, 8], "train.batch_size": [8, 16]},
                                   "seeds": [0, 1]})
    trials = expand_sweep(cfg)
    assert len(trials) == 2 * 2 * 2 * 2
    first, last = trials[0], trials[-1]
    assert first.values == {"train.learning_rate": 0.1, "train.optimizer": "sgd",
                            "model.layers.1.dense.units": 4, "train.batch_size": 8} and first.seed == 0
    assert last.values["train.learning_rate"] == 0.01 and last.values["train.batch_size"] == 16 and last.seed == 1
    assert first.config.model.layers[1] == {"dense": {"units": 4, "activation": "relu"}}
    assert first.config.seed == 0 and trials[1].config.seed == 1
    assert first.config.sweep is None and first.config.name == "sw"
    assert len({t.id for t in trials}) == len(trials)


def test_structured_values_and_stable_ids(tiny_config):
    deep = [{"flatten": {}}, {"dense": {"units": 6, "activation": "relu"}}, {"dense": {"units": 3, "activation": "softmax"}}]
    shallow = [{"flatten": {}}, {"dense": {"units": 3, "activation": "softmax"}}]
    cfg = with_sweep(tiny_config, {"grid": {"model.layers": [deep, shallow]}})
    a, b = expand_sweep(cfg)
    assert a.config.model.layers == deep and b.config.model.layers == shallow
    assert [t.id for t in expand_sweep(cfg)] == [a.id, b.id]  # same config, same id, every time
    assert trial_id({"a": 1, "b": {"c": 2}}) == trial_id({"b": {"c": 2}, "a": 1})


def test_sweep_key_errors_name_the_key(tiny_config):
    cfg = with_sweep(tiny_config, {"grid": {"train.lerning_rate": [0.1]}})
    with pytest.raises(ConfigError) as info:
        expand_sweep(cfg)
    assert "train.lerning_rate" in str(info.value) and "did you mean 'learning_rate'" in str(info.value)
    cfg = with_sweep(tiny_config, {"grid": {"model.layers.7.dropout": [0.1]}})
    with pytest.raises(ConfigError, match="out of range"):
        expand_sweep(cfg)


def test_dry_run_builds_every_trial_without_folders(tiny_config, tmp_path, capsys):
    cfg = with_sweep(tiny_config, {"grid": {"model.layers.1.dense.units": [4, 32]}})
    rows = dry_run(cfg)
    assert [r["params"] for r in rows] == [64 * 4 + 4 + 4 * 3 + 3, 64 * 32 + 32 + 32 * 3 + 3]
    assert "2 trials; every model built." in capsys.readouterr().out
    bad = with_sweep(tiny_config, {"grid": {"model.layers.2.dense.units": [3, 5]}})
    with pytest.raises(ConfigError, match="trial 2"):
        dry_run(bad)


def table_without_timings(sweep_dir):
    df = pd.read_csv(sweep_dir / "results.csv")
    return df.drop(columns=[c for c in df.columns if "seconds" in c or c == "path"])


def test_resume_after_interrupt_runs_nothing_twice_and_matches(tiny_config, tmp_path, monkeypatch):
    sweep = {"grid": {"train.learning_rate": [0.05, 0.01, 0.002]}}
    reference_dir, _ = run_sweep(with_sweep(tiny_config, sweep), runs_dir=tmp_path / "ref", log=open(os.devnull, "w"))

    calls = []
    interrupt_at = [2]  # the second trial of the first attempt is interrupted, once
    real = runner_mod.run_experiment

    def flaky(cfg, **kwargs):
        calls.append(cfg.train.learning_rate)
        if len(calls) == interrupt_at[0]:
            interrupt_at[0] = None
            raise KeyboardInterrupt
        return real(cfg, **kwargs)

    monkeypatch.setattr(runner_mod, "run_experiment", flaky)
    cfg = with_sweep(tiny_config, sweep)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(cfg, runs_dir=tmp_path / "b", log=open(os.devnull, "w"))
    manifest = json.loads((tmp_path / "b" / "sw" / "manifest.json").read_text())
    assert [t["status"] for t in manifest["trials"]] == ["done", "interrupted", "pending"]

    calls.clear()
    sweep_dir, counts = run_sweep(cfg, runs_dir=tmp_path / "b", log=open(os.devnull, "w"))
    assert calls == [0.01, 0.002]  # the finished trial is not run again
    assert counts == {"done": 3}
    pd.testing.assert_frame_equal(table_without_timings(sweep_dir), table_without_timings(reference_dir))


def test_failed_trial_is_recorded_and_others_run(tiny_config, tmp_path, monkeypatch):
    real = runner_mod.run_experiment

    def fail_on_small_lr(cfg, **kwargs):
        if cfg.train.learning_rate < 0.01:
            raise RuntimeError("simulated out-of-memory")
        return real(cfg, **kwargs)

    monkeypatch.setattr(runner_mod, "run_experiment", fail_on_small_lr)
    cfg = with_sweep(tiny_config, {"grid": {"train.learning_rate": [0.001, 0.05]}})
    sweep_dir, counts = run_sweep(cfg, runs_dir=tmp_path, log=open(os.devnull, "w"))
    assert counts == {"failed": 1, "done": 1}
    failed = json.loads((sweep_dir / expand_sweep(cfg)[0].id / "results.json").read_text())
    assert failed["status"] == "failed" and "simulated" in failed["error"]

    monkeypatch.setattr(runner_mod, "run_experiment", real)
    sweep_dir, counts = run_sweep(cfg, runs_dir=tmp_path, log=open(os.devnull, "w"))
    assert counts == {"done": 2}  # the failed trial was retried ...
    assert len(list((sweep_dir / ".attempts").iterdir())) == 1  # ... and its first attempt kept


def test_fail_fast_stops_at_first_failure(tiny_config, tmp_path, monkeypatch):
    def always_fail(cfg, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(runner_mod, "run_experiment", always_fail)
    cfg = with_sweep(tiny_config, {"grid": {"train.learning_rate": [0.1, 0.01, 0.001]}})
    _, counts = run_sweep(cfg, runs_dir=tmp_path, fail_fast=True, log=open(os.devnull, "w"))
    assert counts == {"failed": 1, "pending": 2}


def test_killed_sweep_resumes_from_the_command_line(tiny_config, tmp_path):
    """SIGKILL in the middle of a real `expkit run`, then run again: complete, nothing run twice."""
    cfg = {**tiny_config, "name": "killme", "train": {**tiny_config["train"], "epochs": 2},
           "sweep": {"grid": {"train.learning_rate": [0.05, 0.02, 0.01, 0.005]}}}
    path = tmp_path / "killme.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    cmd = [sys.executable, "-m", "expkit.cli", "run", str(path), "--runs-dir", str(tmp_path / "runs")]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sweep_dir = tmp_path / "runs" / "killme"
    deadline = time.time() + 120
    while time.time() < deadline:
        done = [p for p in sweep_dir.glob("*/results.json")] if sweep_dir.exists() else []
        if done:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished_before = {p.parent.name: p.stat().st_mtime_ns for p in sweep_dir.glob("*/results.json")}
    assert 1 <= len(finished_before) < 4

    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == str(sweep_dir)
    for trial, mtime in finished_before.items():  # finished trials untouched
        assert (sweep_dir / trial / "results.json").stat().st_mtime_ns == mtime
    manifest = json.loads((sweep_dir / "manifest.json").read_text())
    assert [t["status"] for t in manifest["trials"]] == ["done"] * 4
    assert len(pd.read_csv(sweep_dir / "results.csv")) == 4
