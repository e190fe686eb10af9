"""train.callbacks: any Keras callback by name, or the user's own by "module:attribute", beside expkit's."""

import pytest
import yaml

from expkit.config import validate
from expkit.errors import ConfigError
from expkit.runfolder import read_metrics

WARMUP = '''
import keras


class Warmup(keras.callbacks.Callback):
    """The rate rises linearly to `peak` over `epochs` epochs."""

    def __init__(self, peak, epochs):
        super().__init__()
        self.peak, self.epochs = peak, epochs

    def on_epoch_begin(self, epoch, logs=None):
        self.model.optimizer.learning_rate.assign(self.peak * min(1.0, (epoch + 1) / self.epochs))
'''


def _raw(tiny_config, callbacks, **train):
    return {**tiny_config, "train": {**tiny_config["train"], "callbacks": callbacks, **train}}


def test_a_keras_callback_by_name_changes_the_rate_as_keras_own_does(tiny_config, tmp_path):
    """ReduceLROnPlateau with arguments the built-in plateau schedule has no key for (min_delta, cooldown):
    the rates metrics.csv records, epoch by epoch, are those Keras' own callback gives a plain fit."""
    import keras

    import expkit
    from expkit.backend import seed_everything
    from expkit.runner import prepare

    plateau = {"monitor": "loss", "factor": 0.5, "patience": 0, "min_delta": 100.0, "cooldown": 2}
    raw = _raw(tiny_config, [{"ReduceLROnPlateau": plateau}], epochs=5, shuffle=False)
    run = expkit.run(raw, runs_dir=tmp_path)
    cfg = validate(raw)
    seed_everything(cfg.seed, False)
    dataset, model = prepare(cfg)
    model.compile(optimizer=keras.optimizers.Adam(cfg.train.learning_rate), loss=cfg.train.loss, metrics=["accuracy"])
    rates = []
    record = keras.callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs: rates.append(
        float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))))
    history = model.fit(dataset.x_train, dataset.y_train, batch_size=cfg.train.batch_size, epochs=5, shuffle=False,
                        callbacks=[keras.callbacks.ReduceLROnPlateau(**plateau), record], verbose=0)
    ours = [row["learning_rate"] for row in read_metrics(run.path)]
    assert ours == pytest.approx(rates)
    assert rates == pytest.approx([0.01, 0.01, 0.005, 0.005, 0.0025])  # every epoch is a plateau; the cooldown holds one
    assert [row["loss"] for row in read_metrics(run.path)] == pytest.approx(history.history["loss"], rel=1e-5)


def test_the_users_callback_from_a_module_beside_the_config(tiny_config, tmp_path, monkeypatch, capsys):
    """A config file's my_callbacks.py is found beside it, wherever the run starts from; a missing
    attribute is one line naming the key path and the module, exit 2, before any run folder."""
    import expkit

    folder = tmp_path / "exp"
    folder.mkdir()
    (folder / "my_callbacks.py").write_text(WARMUP)
    config = folder / "warm.yaml"
    config.write_text(yaml.safe_dump(_raw(tiny_config, [{"my_callbacks:Warmup": {"peak": 0.04, "epochs": 4}}],
                                          epochs=3)))
    monkeypatch.chdir(tmp_path)  # not the config's folder
    runs = tmp_path / "runs"
    run = expkit.run(config, runs_dir=runs)
    assert [row["learning_rate"] for row in read_metrics(run.path)] == pytest.approx([0.01, 0.02, 0.03])

    config.write_text(yaml.safe_dump(_raw(tiny_config, [{"my_callbacks:Warmpu": {"peak": 0.04}}], epochs=1)))
    from expkit.cli import main  # in-process: the exit status is main's return value (no second TensorFlow start-up)

    assert main(["run", str(config), "--runs-dir", str(runs)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"expkit: error: {config}: train.callbacks[0].my_callbacks:Warmpu: module 'my_callbacks' has no attribute "
        "'Warmpu'; did you mean 'Warmup'?"]
    assert [p.name for p in (runs / "tiny").iterdir()] == [run.path.name]  # nothing written for the failed run


def test_callback_mistakes_name_the_key(tiny_config):
    from expkit.train import user_callbacks

    cases = [([{"ReduceLROnPlateu": {}}], r"train\.callbacks\[0\]\.ReduceLROnPlateu: unknown callback "
                                          r"'ReduceLROnPlateu'; did you mean 'ReduceLROnPlateau'\?"),
             ([{"EarlyStopping": {"patiense": 2}}], r"train\.callbacks\[0\]\.EarlyStopping: EarlyStopping rejected "
                                                    r"its arguments: TypeError: .*patiense"),
             ([{"no_such_module_xyz:Thing": {}}], r"no module 'no_such_module_xyz' \(looked on sys\.path\)")]
    for callbacks, message in cases:
        with pytest.raises(ConfigError, match=message):
            user_callbacks(validate(_raw(tiny_config, callbacks)))
    with pytest.raises(ConfigError, match=r"train\.callbacks\[0\]: expected one \{Name: \{arguments\}\} mapping"):
        validate(_raw(tiny_config, [{"EarlyStopping": {}, "CSVLogger": {}}]))


def test_a_sweep_with_callbacks_or_class_weights_trains_one_at_a_time_and_says_why(tiny_config):
    from expkit.sweeps.trials import expand_sweep
    from expkit.sweeps.vectorize import grouping
    from expkit.sweeps.vectorize.grouping import ModelShape

    for train, note in (({"callbacks": [{"TerminateOnNaN": {}}]}, "train.callbacks: a vectorised group calls only "
                         "expkit's own callbacks"), ({"class_weight": "balanced"}, "train.class_weight: class weights "
                                                     "are not vectorised")):
        cfg = validate({**_raw(tiny_config, **{"callbacks": [], **train}), "sweep": {"grid": {"train.learning_rate": [0.1, 0.01]}}})
        trials = expand_sweep(cfg)
        plan = grouping.plan_groups(cfg, trials, {t.id: ModelShape((), 1000.0) for t in trials})
        assert plan.groups == [] and len(plan.alone) == 2
        assert [n for n in plan.notes if n.startswith(note)], plan.notes
        with pytest.raises(ConfigError, match=note.split(":")[0]):
            grouping.check_vectorisable(cfg, trials)


RAMP = '''
import keras


class Ramp(keras.callbacks.Callback):
    """The rate is `step` times the epochs this callback has seen: state of its own, reset when training begins."""

    def __init__(self, step):
        super().__init__()
        self.step, self.seen = step, 0

    def on_train_begin(self, logs=None):
        self.seen = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.seen += 1
        self.model.optimizer.learning_rate.assign(self.step * self.seen)

    def get_state(self):
        return {"seen": self.seen}

    def set_state(self, state):
        self.seen = state["seen"]


class ForgetfulRamp(Ramp):
    get_state = set_state = None


class SetRamp(Ramp):
    def get_state(self):
        return {"seen": {self.seen}}  # a set: JSON cannot hold it
'''


def _interrupted_then_resumed(raw, tmp_path, monkeypatch, epoch):
    import expkit
    from test_checkpoint import interrupt_in_epoch

    from expkit.runner import run_experiment

    interrupt_in_epoch(monkeypatch, epoch)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(validate(raw), runs_dir=tmp_path)
    monkeypatch.undo()
    (cut,) = (tmp_path / raw["name"]).iterdir()
    return expkit.resume(cut)


@pytest.mark.parametrize("callback", [
    {"ReduceLROnPlateau": {"monitor": "loss", "factor": 0.5, "patience": 1, "min_delta": 100.0}},
    {"EarlyStopping": {"monitor": "loss", "min_delta": 100.0, "patience": 3}},
], ids=["plateau", "early-stopping"])
def test_a_keras_callback_by_name_resumes_with_its_state(tiny_config, tmp_path, monkeypatch, callback):
    """Interrupted in epoch 4 and resumed: the plateau's and the early stopping's patience carry on from the
    checkpoint (started afresh, both would count from epoch 4), so the rates and the stopping epoch are
    those of the uninterrupted run."""
    import expkit

    raw = {**_raw(tiny_config, [callback], epochs=6), "name": "resumed_callback"}
    whole = expkit.run(raw, runs_dir=tmp_path / "whole")
    resumed = _interrupted_then_resumed(raw, tmp_path / "cut", monkeypatch, 4)
    rows = [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in read_metrics(resumed.path)]
    assert rows == [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in read_metrics(whole.path)]
    if "EarlyStopping" in callback:
        assert len(rows) == 4  # patience 3 after the first epoch: stopped after epoch 4, also across the resume
    else:
        assert [r["learning_rate"] for r in rows] == pytest.approx([0.01, 0.01, 0.005, 0.0025, 0.00125, 0.000625])


def test_the_users_callback_carries_its_state_through_get_state(tiny_config, tmp_path, monkeypatch, capsys):
    """A callback of one's own with get_state/set_state resumes where it was; one without says, on resume,
    that it starts afresh (and then does: the record shows what happened)."""
    (tmp_path / "ramp_callbacks.py").write_text(RAMP)
    monkeypatch.syspath_prepend(str(tmp_path))
    raw = {**_raw(tiny_config, [{"ramp_callbacks:Ramp": {"step": 0.01}}], epochs=4), "name": "ramp"}
    resumed = _interrupted_then_resumed(raw, tmp_path / "kept", monkeypatch, 3)
    assert [r["learning_rate"] for r in read_metrics(resumed.path)] == pytest.approx([0.01, 0.02, 0.03, 0.04])
    assert "warning" not in capsys.readouterr().err

    monkeypatch.syspath_prepend(str(tmp_path))
    raw = {**_raw(tiny_config, [{"ramp_callbacks:ForgetfulRamp": {"step": 0.01}}], epochs=4), "name": "ramp"}
    resumed = _interrupted_then_resumed(raw, tmp_path / "lost", monkeypatch, 3)
    assert [r["learning_rate"] for r in read_metrics(resumed.path)] == pytest.approx([0.01, 0.02, 0.01, 0.02])
    assert [line for line in capsys.readouterr().err.splitlines() if "warning" in line] == [
        "expkit: warning: train.callbacks[0] (ramp_callbacks:ForgetfulRamp) starts afresh: a checkpoint carries "
        "the state of a callback of one's own only through its get_state() and set_state(state) methods"]


def test_a_get_state_json_cannot_hold_is_one_warning_and_the_resume_starts_it_afresh(tiny_config, tmp_path,
                                                                                     monkeypatch, capsys):
    (tmp_path / "ramp_callbacks.py").write_text(RAMP)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(__import__("sys").modules, "ramp_callbacks", raising=False)
    raw = {**_raw(tiny_config, [{"ramp_callbacks:SetRamp": {"step": 0.01}}], epochs=4), "name": "ramp"}
    resumed = _interrupted_then_resumed(raw, tmp_path / "runs", monkeypatch, 3)
    assert [r["learning_rate"] for r in read_metrics(resumed.path)] == pytest.approx([0.01, 0.02, 0.01, 0.02])
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 2 and all(w.startswith("expkit: warning: train.callbacks[0] (ramp_callbacks:SetRamp): "
                                                   "get_state() returned what JSON cannot hold") for w in warnings)
