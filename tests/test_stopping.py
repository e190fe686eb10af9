"""A stop request is never lost: a SIGTERM whose first raise a finalizer swallowed is raised again
by the loops that train or wait (expkit.stopping)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from expkit import stopping
from expkit.config import validate
from expkit.sweeps.driver import run_sweep
from expkit.sweeps.vectorize import plan as launch

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO / "src")}

# SIGTERM arrives while a finalizer runs: the handler's Terminated is dropped ("Exception ignored in"),
# and SIGTERM is ignored from then on. Then the script trains.
SWALLOWED = """
import contextlib, os, signal, sys, yaml
from expkit import stopping

SIG = signal.{sig}
if SIG == signal.SIGTERM:
    signal.signal(SIG, stopping.on_sigterm)
    handled = contextlib.nullcontext()
else:  # Ctrl-C, as `expkit` handles it around a command
    handled = stopping.interrupt_on_sigint()

class Finalized:
    def __del__(self):
        os.kill(os.getpid(), SIG)
        for _ in range(100000):  # the handler runs in here, and Python drops what it raises
            pass

with handled:
    obj = Finalized()
    del obj
    print("handler ran:", stopping.pending() is not None, flush=True)
{train}
"""

KERAS_RUN = """
from expkit.api import run
try:
    run(yaml.safe_load(open(sys.argv[1])), runs_dir=sys.argv[2])
    print("trained to the end")
except KeyboardInterrupt as exc:
    print("stopped:", type(exc).__name__)
"""

JAX_GROUP = """
import keras
from expkit.config import validate
from expkit.repro import load_dataset
from expkit.sweeps.trials import expand_sweep
from expkit.sweeps.vectorize.trainer import GroupTrainer, Member, build_member_model

trials = expand_sweep(validate(yaml.safe_load(open(sys.argv[1]))))
cfgs = [t.config.model_copy(update={"backend": "jax"}) for t in trials]
data = load_dataset(cfgs[0].data, cfgs[0].seed, cfgs[0].train.loss)
steps = -(-len(data.x_train) // cfgs[0].train.batch_size)
members = [Member(t, c, 0) for t, c in zip(trials, cfgs)]
trainer = GroupTrainer(members, [build_member_model(c, data, steps) for c in cfgs], [data])
try:
    trainer.fit()
    print("trained to the end")
except KeyboardInterrupt as exc:
    print("stopped:", type(exc).__name__, "epochs:", [len(m.result.history) for m in members])
"""


def swallowed_then(train: str, cfg: dict, tmp_path, backend: str = "tensorflow", sig: str = "SIGTERM"):
    path, script = tmp_path / "cfg.yaml", tmp_path / "script.py"
    path.write_text(yaml.safe_dump(cfg))
    indented = "\n".join("    " + line for line in train.strip().splitlines())  # inside `with handled:`
    script.write_text(SWALLOWED.format(train=indented, sig=sig))
    return subprocess.run([sys.executable, str(script), str(path), str(tmp_path / "runs")], capture_output=True,
                          text=True, timeout=300, env={**ENV, "KERAS_BACKEND": backend})


def long_config(tiny_config, **train):
    return {**tiny_config, "name": "long",
            "train": {**tiny_config["train"], "epochs": 200, "batch_size": 8, "steps_per_execution": 1, **train}}


@pytest.mark.parametrize("sig, raised", [("SIGTERM", "Terminated"), ("SIGINT", "KeyboardInterrupt")])
def test_a_signal_a_finalizer_swallowed_stops_the_next_training_step(tiny_config, tmp_path, sig, raised):
    done = swallowed_then(KERAS_RUN, long_config(tiny_config), tmp_path, sig=sig)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "handler ran: True" in done.stdout  # printed after `del obj`: the first raise was lost
    assert "Exception ignored" not in done.stderr  # and not reported: it is raised again, not ignored
    assert f"stopped: {raised}" in done.stdout, done.stdout
    (folder,) = (tmp_path / "runs" / "long").iterdir()
    record = json.loads((folder / "results.json").read_text())
    assert record["status"] == "interrupted" and record["epochs_run"] == 0
    assert json.loads((folder / "status.json").read_text())["status"] == "interrupted"


@pytest.mark.skipif(not launch.jax_installed(), reason="jax is not installed (pip install 'expkit[jax]')")
def test_a_vectorised_group_stops_at_its_next_batch_too(tiny_config, tmp_path):
    cfg = {**long_config(tiny_config), "sweep": {"grid": {"train.learning_rate": [0.1, 0.01]}}}
    done = swallowed_then(JAX_GROUP, cfg, tmp_path, backend="jax")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "handler ran: True" in done.stdout and "Exception ignored" not in done.stderr
    assert "stopped: Terminated epochs: [0, 0]" in done.stdout, done.stdout


def test_a_sweep_asked_to_stop_starts_no_trial(tiny_config, tmp_path, monkeypatch):
    monkeypatch.setattr(stopping, "_pending", stopping.Terminated)
    cfg = validate({**tiny_config, "name": "st", "sweep": {"grid": {"train.learning_rate": [0.1, 0.01]},
                                                           "vectorize": False}})
    with pytest.raises(stopping.Terminated):
        run_sweep(cfg, runs_dir=tmp_path / "runs", log=open(os.devnull, "w"))
    sweep_dir = tmp_path / "runs" / "st"
    assert [p.name for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith(".")] == []
    assert pd.read_csv(sweep_dir / "results.csv")["status"].tolist() == ["pending", "pending"]


def test_a_ray_task_forgets_its_interrupt_when_it_ends(monkeypatch):
    """A worker process runs the next task: the cancel of the last one must not stop it."""
    import signal

    monkeypatch.setattr(stopping, "_pending", None)
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        with stopping.interrupt_on_sigint():
            signal.raise_signal(signal.SIGINT)
            for _ in range(1000):
                pass
    assert stopping.pending() is None and signal.getsignal(signal.SIGINT) is before


# SIGTERM arrives as Keras starts writing the first epoch's checkpoint (h5py inside model.save).
DURING_SAVE = """
import os, signal, sys, yaml, keras
from expkit import stopping
from expkit.api import run

signal.signal(signal.SIGTERM, stopping.on_sigterm)
real_save = keras.Model.save

def save(self, *args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(100000):  # the handler runs in here
        pass
    print("save goes on", flush=True)
    return real_save(self, *args, **kwargs)

keras.Model.save = save
try:
    run(yaml.safe_load(open(sys.argv[1])), runs_dir=sys.argv[2])
except KeyboardInterrupt as exc:
    print("stopped:", type(exc).__name__)
"""


def test_a_checkpoint_being_written_is_finished_before_the_stop(tiny_config, tmp_path):
    from expkit.checkpoint import read_checkpoint

    path, script = tmp_path / "cfg.yaml", tmp_path / "script.py"
    path.write_text(yaml.safe_dump(long_config(tiny_config)))
    script.write_text(DURING_SAVE)
    done = subprocess.run([sys.executable, str(script), str(path), str(tmp_path / "runs")], capture_output=True,
                          text=True, timeout=300, env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["save", "goes", "on", "stopped:", "Terminated"], done.stdout
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr, done.stderr[-3000:]
    (folder,) = (tmp_path / "runs" / "long").iterdir()
    record = json.loads((folder / "results.json").read_text())
    assert record["status"] == "interrupted" and record["epochs_run"] == 1
    assert read_checkpoint(folder).epoch == 1  # whole, and as far as the record says
    assert not list(folder.glob(".*.tmp.keras"))


def test_deferred_raises_the_stop_when_the_block_ends(monkeypatch):
    import signal

    monkeypatch.setattr(stopping, "_pending", None)
    before = signal.signal(signal.SIGTERM, stopping.on_sigterm)
    finished = []
    try:
        with pytest.raises(stopping.Terminated):
            with stopping.deferred():
                with stopping.deferred():  # nested: the outer block's end raises
                    signal.raise_signal(signal.SIGTERM)
                    for _ in range(1000):
                        pass
                finished.append("inner")
                for _ in range(1000):
                    pass
                finished.append("outer")
        assert finished == ["inner", "outer"] and stopping.pending() is stopping.Terminated
    finally:
        signal.signal(signal.SIGTERM, before)
