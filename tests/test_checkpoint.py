"""Checkpoints and the saved model: an interrupted run resumes from its last finished epoch and ends
with exactly the numbers of an uninterrupted run at the same seed, with fit's shuffling on."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from expkit import api
from expkit.checkpoint import CHECKPOINT, MODEL, read_checkpoint
from expkit.config import validate
from expkit.errors import ConfigError
from expkit.runfolder import read_status
from expkit.runner import run_experiment
from expkit.sweeps.trials import trial_id

REPO = Path(__file__).resolve().parents[1]


def config(tiny_config, **train):
    """tiny_config with dropout (its seed generator must resume too) and shuffle on (the default)."""
    cfg = json.loads(json.dumps(tiny_config))
    cfg["model"]["layers"].insert(2, {"dropout": 0.3})
    cfg["data"]["options"]["n_train"] = 200
    cfg["train"].update({"epochs": 5, **train})
    assert cfg["train"].get("shuffle", True) is True
    return cfg


def interrupt_in_epoch(monkeypatch, epoch: int):
    """Ctrl-C in the middle of epoch `epoch` (1-based), after its first batches: as a user would."""
    import keras

    import expkit.train as train_module

    real = train_module.make_callbacks

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_begin(self, e, logs=None):
            self.epoch = e + 1

        def on_train_batch_end(self, batch, logs=None):
            if self.epoch == epoch:
                raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "make_callbacks", lambda *a, **k: real(*a, **k) + [Interrupt()])


def rows(folder):
    """metrics.csv without the wall-clock column."""
    with open(Path(folder) / "metrics.csv", newline="") as fh:
        return [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in csv.DictReader(fh)]


def results(folder):
    return json.loads((Path(folder) / "results.json").read_text())


@pytest.mark.parametrize("train", [
    {},
    # early stopping that fires (after epoch 4) only because its patience counter survived the
    # interruption, restoring the best (first) epoch's weights from the checkpoint; a plateau schedule
    # that halves the rate after epoch 3 only because it remembers epoch 2's best
    {"epochs": 8, "early_stopping": {"monitor": "loss", "min_delta": 10.0, "patience": 3,
                                     "restore_best_weights": True},
     "schedule": {"type": "plateau", "monitor": "val_accuracy", "patience": 0, "factor": 0.5}},
], ids=["dropout", "early-stopping-and-plateau"])
def test_a_resumed_run_repeats_the_uninterrupted_one(tmp_path, tiny_config, monkeypatch, train):
    cfg = validate(config(tiny_config, **train))
    whole = run_experiment(cfg, runs_dir=tmp_path / "whole")

    interrupt_in_epoch(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, runs_dir=tmp_path / "cut")
    monkeypatch.undo()
    (cut,) = (tmp_path / "cut" / "tiny").iterdir()
    assert read_status(cut) == "interrupted" and read_checkpoint(cut).epoch == 2
    assert len(rows(cut)) == 2

    resumed = api.resume(cut)
    assert resumed.path == cut and resumed.status == "done"
    assert rows(cut) == rows(whole.path)  # every epoch's numbers, bit for bit
    a, b = results(whole.path), results(cut)
    assert b["test"] == a["test"] and b["epochs_run"] == a["epochs_run"] and b["stopped_early"] == a["stopped_early"]
    assert [r["epoch"] for r in b["resumed"]] == [2] and b["started"] < b["ended"]
    if train:
        assert a["stopped_early"] and a["epochs_run"] == 4
        assert len({r["learning_rate"] for r in rows(whole.path)}) > 1  # the plateau schedule acted
    assert not (cut / CHECKPOINT).exists() and (cut / MODEL).is_file()


def test_sigterm_then_expkit_run_resume(tmp_path, tiny_config):
    """A real SIGTERM to `expkit run` mid-training, then `expkit run --resume RUN_DIR`: same numbers
    as an uninterrupted run, whichever epoch the signal landed in."""
    cfg = config(tiny_config, epochs=6)
    cfg["data"]["options"]["n_train"] = 4000
    cfg["model"]["layers"][1]["dense"]["units"] = 64
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    cmd = [sys.executable, "-m", "expkit.cli", "run"]
    proc = subprocess.Popen([*cmd, str(path), "--runs-dir", str(tmp_path / "cut")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        found = [read_checkpoint(p.parent) for p in (tmp_path / "cut" / "tiny").glob("*/" + CHECKPOINT)]
        if found and found[0] is not None and found[0].epoch >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    (cut,) = (tmp_path / "cut" / "tiny").iterdir()
    assert read_status(cut) == "interrupted"
    stopped_after = read_checkpoint(cut).epoch
    assert 2 <= stopped_after < 6

    out = subprocess.run([*cmd, "--resume", str(cut)], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == str(cut)
    whole = run_experiment(validate({**cfg, "name": "tiny"}), runs_dir=tmp_path / "whole")
    assert rows(cut) == rows(whole.path)
    record = results(cut)
    assert record["status"] == "done" and record["resumed"][0]["epoch"] == stopped_after
    assert record["command"] == f"expkit run --resume {cut}"


def test_a_sweep_resumes_its_interrupted_trial_from_the_checkpoint(tmp_path, tiny_config, monkeypatch):
    raw = config(tiny_config, epochs=3)
    raw["sweep"] = {"grid": {"train.learning_rate": [0.01, 0.003]}}
    whole = api.sweep(raw, runs_dir=tmp_path / "whole")

    interrupt_in_epoch(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        api.sweep(raw, runs_dir=tmp_path / "cut")
    monkeypatch.undo()
    sweep_dir = tmp_path / "cut" / "tiny"
    (first,) = [p for p in sweep_dir.iterdir() if (p / CHECKPOINT).exists()]
    assert read_status(first) == "interrupted" and read_checkpoint(first).epoch == 1

    import io

    log = io.StringIO()
    again = api.sweep(raw, runs_dir=tmp_path / "cut", log=log)
    assert again.counts == {"done": 2}
    assert "resuming the interrupted attempt after epoch 1" in log.getvalue()
    assert not (sweep_dir / ".attempts").exists()  # continued, not started over
    for trial in whole.path.iterdir():
        if (trial / "metrics.csv").exists():
            assert rows(sweep_dir / trial.name) == rows(trial)
    assert results(first)["resumed"][0]["epoch"] == 1


def test_the_model_is_saved_and_loads(tmp_path, tiny_config):
    import keras
    import numpy as np

    kept = []
    run = run_experiment(validate(config(tiny_config, epochs=2)), runs_dir=tmp_path, keep_model=kept)
    model = keras.saving.load_model(run.path / MODEL)
    x = np.random.default_rng(0).uniform(0, 1, size=(5, 8, 8, 1)).astype("float32")
    assert np.array_equal(model.predict(x, verbose=0), kept[0].predict(x, verbose=0))
    assert not (run.path / CHECKPOINT).exists()  # a finished run keeps model.keras only


def test_save_model_and_checkpoint_can_be_turned_off(tmp_path, tiny_config, monkeypatch):
    cfg = validate(config(tiny_config, epochs=3, save_model=False, checkpoint=False))
    run = run_experiment(cfg, runs_dir=tmp_path / "a")
    assert not (run.path / MODEL).exists()

    interrupt_in_epoch(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, runs_dir=tmp_path / "b")
    monkeypatch.undo()
    (cut,) = (tmp_path / "b" / "tiny").iterdir()
    assert not (cut / CHECKPOINT).exists()
    resumed = api.resume(cut)  # no checkpoint: it starts again from the first epoch, in the same folder
    assert resumed.status == "done" and resumed.record.resumed[0]["epoch"] == 0
    assert rows(cut) == rows(run.path)


def test_resume_refuses_what_it_cannot_continue(tmp_path, tiny_config):
    run = run_experiment(validate(config(tiny_config, epochs=1)), runs_dir=tmp_path)
    with pytest.raises(ConfigError, match="this run is done; there is nothing to resume"):
        api.resume(run.path)
    with pytest.raises(ConfigError, match="not a run folder"):
        api.resume(tmp_path)
    from expkit.cli import main

    assert main(["run", "--resume", str(run.path), str(tmp_path / "x.yaml")]) == 2
    assert main(["run"]) == 2


def test_test_each_epoch_adds_columns_and_changes_no_training_number(tmp_path, tiny_config):
    plain = run_experiment(validate(config(tiny_config, epochs=3)), runs_dir=tmp_path / "a")
    tested = run_experiment(validate(config(tiny_config, epochs=3, test_each_epoch=True)), runs_dir=tmp_path / "b")
    with_test = rows(tested.path)
    assert [k for k in with_test[0] if k.startswith("test_")] == ["test_accuracy", "test_loss"]
    assert [{k: v for k, v in r.items() if not k.startswith("test_")} for r in with_test] == rows(plain.path)
    final = results(tested.path)["test"]
    assert float(with_test[-1]["test_loss"]) == pytest.approx(final["loss"], rel=1e-6)
    assert float(with_test[-1]["test_accuracy"]) == pytest.approx(final["accuracy"])


def test_recording_keys_do_not_change_a_trial_id(tiny_config):
    plain = validate(tiny_config).to_dict()
    recorded = validate({**tiny_config, "track": ["tensorboard"],
                         "train": {**tiny_config["train"], "save_model": False, "checkpoint": False,
                                   "test_each_epoch": True}}).to_dict()
    assert trial_id(plain) == trial_id(recorded)
    assert trial_id(plain) != trial_id({**plain, "seed": 4})


def test_a_run_stopped_early_and_interrupted_before_its_test_does_not_train_again(tmp_path, tiny_config, monkeypatch):
    """Early stopping fired, then Ctrl-C came before the test evaluation: the resumed run trains no
    further epoch, restores the best epoch's weights and scores the test split as the whole run did."""
    import keras

    import expkit.train as train_module

    cfg = validate(config(tiny_config, epochs=8, early_stopping={"monitor": "loss", "min_delta": 10.0, "patience": 2}))
    whole = run_experiment(cfg, runs_dir=tmp_path / "whole")

    class InterruptAtTheEnd(keras.callbacks.Callback):
        def on_train_end(self, logs=None):
            raise KeyboardInterrupt

    real = train_module.make_callbacks
    monkeypatch.setattr(train_module, "make_callbacks", lambda *a, **k: real(*a, **k) + [InterruptAtTheEnd()])
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, runs_dir=tmp_path / "cut")
    monkeypatch.undo()
    (cut,) = (tmp_path / "cut" / "tiny").iterdir()
    assert read_checkpoint(cut).state["stopping"] is True
    resumed = api.resume(cut)
    assert rows(cut) == rows(whole.path) and len(rows(cut)) == 3
    assert resumed.record.test == results(whole.path)["test"] and resumed.record.stopped_early


def _interrupted_after_training(tmp_path, tiny_config, monkeypatch, epochs=2):
    import keras

    import expkit.train as train_module

    class InterruptAtTheEnd(keras.callbacks.Callback):
        def on_train_end(self, logs=None):
            raise KeyboardInterrupt

    cfg = config(tiny_config, epochs=epochs)
    real = train_module.make_callbacks
    monkeypatch.setattr(train_module, "make_callbacks", lambda *a, **k: real(*a, **k) + [InterruptAtTheEnd()])
    with pytest.raises(KeyboardInterrupt):
        run_experiment(validate(cfg), runs_dir=tmp_path / "cut")
    monkeypatch.undo()
    (cut,) = (tmp_path / "cut" / "tiny").iterdir()
    assert read_status(cut) == "interrupted" and read_checkpoint(cut).epoch == epochs
    return cut


def test_resume_after_the_config_was_edited_to_another_model_exits_2(tmp_path, tiny_config, monkeypatch, capsys):
    cut = _interrupted_after_training(tmp_path, tiny_config, monkeypatch)
    saved = yaml.safe_load((cut / "config.yaml").read_text())
    saved["model"]["layers"][1]["dense"]["units"] = 7
    (cut / "config.yaml").write_text(yaml.safe_dump(saved))
    before = (cut / CHECKPOINT).read_bytes()
    from expkit.cli import main

    assert main(["run", "--resume", str(cut)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert err[0].startswith(f"expkit: error: {cut / CHECKPOINT}: the checkpoint does not match the run's config")
    assert (cut / CHECKPOINT).read_bytes() == before  # the checkpoint is kept
    assert len(rows(cut)) == 2  # and the epochs it finished


def test_resume_with_garbage_weights_inside_a_whole_zip_starts_again(tmp_path, tiny_config, monkeypatch, capsys):
    import zipfile

    cut = _interrupted_after_training(tmp_path, tiny_config, monkeypatch)
    damaged = cut / "damaged.zip"
    with zipfile.ZipFile(cut / CHECKPOINT) as src, zipfile.ZipFile(damaged, "w") as dst:
        for item in src.infolist():
            dst.writestr(item, b"garbage" * 100 if item.filename == "model.weights.h5" else src.read(item))
    damaged.replace(cut / CHECKPOINT)
    capsys.readouterr()
    assert read_checkpoint(cut) is None
    assert "model.weights.h5 inside is not an HDF5 file (file signature not found)); training starts again " \
           "from the first epoch" in capsys.readouterr().err
    run = api.resume(cut)
    assert results(run.path)["status"] == "done" and len(rows(cut)) == 2
    assert results(run.path)["resumed"][0]["epoch"] == 0
