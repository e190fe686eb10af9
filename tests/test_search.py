"""Searches (sweep.space + sweep.search, Optuna's samplers) and pruning (sweep.prune): real Keras on tiny
data, real processes for the crash and for two drivers on one search."""

import json
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

pytest.importorskip("optuna")

from expkit.api import sweep as api_sweep  # noqa: E402
from expkit.config import parse_distribution, validate  # noqa: E402
from expkit.errors import ConfigError  # noqa: E402
from expkit.sweeps.pruning import Competitor, decide, rung_epochs  # noqa: E402
from test_execute import ENV, cli  # noqa: E402

SPACE = {"train.learning_rate": {"log_uniform": [0.001, 0.3]}, "model.layers[2].dropout.rate": {"uniform": [0.0, 0.5]}}


def search_config(tiny_config, name="search", trials=12, epochs=1, sampler="tpe", seed=5, **sweep):
    model = {"layers": [{"flatten": {}}, {"dense": {"units": 8, "activation": "relu"}}, {"dropout": {"rate": 0.1}},
                        {"dense": {"units": 3, "activation": "softmax"}}]}
    return {**tiny_config, "name": name, "model": model, "train": {**tiny_config["train"], "epochs": epochs},
            "sweep": {"vectorize": False, "space": SPACE, "search": {"sampler": sampler, "trials": trials, "seed": seed},
                      **sweep}}


def proposals(sweep_dir):
    """The study's proposals, in order: (number, state, values)."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(sweep_dir / "search.journal")))
    study = optuna.load_study(study_name=sweep_dir.name, storage=storage)
    return [(t.number, t.state.name, t.user_attrs.get("expkit_values")) for t in study.trials]


def started(stderr: str) -> list[str]:
    """The ids of the trials a command's output says it started training."""
    return [re.search(r"\(([0-9a-f]{10})\)", line).group(1) for line in stderr.splitlines() if line.endswith("training")]


def trained_once(sweep_dir, ids, cut=()):
    """Every trial's record finished, and no trial was started twice (nothing set aside but `cut`)."""
    attempts = sweep_dir / ".attempts"
    set_aside = sorted(p.name.rsplit("-", 1)[0] for p in attempts.iterdir()) if attempts.exists() else []
    assert set(set_aside) <= set(cut) and len(set_aside) == len(set(set_aside))  # an interrupted one, once at most
    for tid in ids:
        record = json.loads((sweep_dir / tid / "results.json").read_text())
        assert record["status"] == "done", (tid, record["status"])
    return True


# --- the config ------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec, path, words", [
    ({"log_uniform": [0, 1]}, "log_uniform", "low > 0"),
    ({"uniform": [0.5, 0.1]}, "uniform", "low < high"),
    ({"int": [1, 9], "step": 0}, "step", "at least 1"),
    ({"int": [1.5, 9]}, "int", "whole numbers"),
    ({"choice": []}, "choice", "non-empty"),
    ({"uniform": [0, 1], "choice": [1]}, "", "exactly one"),
    ({"normal": [0, 1]}, "", "exactly one"),
])
def test_a_bad_distribution_names_its_key_path(spec, path, words):
    with pytest.raises(ConfigError) as exc:
        parse_distribution(spec, ("sweep", "space", "train.learning_rate"))
    assert exc.value.path.endswith(("train.learning_rate." + path).rstrip(".")) and words in str(exc.value)


def test_a_space_with_a_grid_or_without_a_budget_is_refused(tiny_config):
    cfg = search_config(tiny_config)
    with pytest.raises(ConfigError, match="sweep.grid and sweep.space cannot be combined"):
        validate({**cfg, "sweep": {**cfg["sweep"], "grid": {"seed": [1, 2]}}})
    with pytest.raises(ConfigError, match="sweep.search.trials"):
        validate({**cfg, "sweep": {**cfg["sweep"], "search": {"sampler": "random"}}})
    with pytest.raises(ConfigError, match="grid sampler needs a choice list"):
        validate({**cfg, "sweep": {**cfg["sweep"], "search": {"sampler": "grid"}}})


def test_a_bad_space_is_one_line_exit_2(tmp_path, tiny_config):
    cfg = search_config(tiny_config)
    cfg["sweep"]["space"] = {"train.learning_rate": {"log_uniform": [-1, 1]}}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = subprocess.run(cli("run", path, "--runs-dir", tmp_path / "runs"), env=ENV, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "bad.yaml" in out.stderr and "sweep.space.train.learning_rate.log_uniform" in out.stderr
    assert not (tmp_path / "runs").exists()


# --- the pruning rules (Optuna's), on known numbers ---------------------------------------------------


def test_successive_halving_keeps_the_top_third_at_each_rung():
    spec = {"type": "successive_halving", "metric": "val_accuracy", "min_epochs": 1, "reduction_factor": 3,
            "startup_trials": 0}
    assert rung_epochs(spec, 0, 9) == [1, 3, 9]
    others = [Competitor([v], False) for v in (0.1, 0.2, 0.3, 0.4, 0.5)]  # five at rung 1 (epoch 1)
    # six competing values at epoch 1: the best 6 // 3 = 2 go on
    assert decide(spec, [0.45], others) is False and decide(spec, [0.35], others) is True
    assert decide(spec, [0.45, 0.1], others) is False  # epoch 2 is no rung: nothing to judge
    loss = {**spec, "metric": "val_loss"}  # a loss: the lowest go on
    assert decide(loss, [0.15], others) is False and decide(loss, [0.35], others) is True


def test_median_compares_with_finished_trials_only_after_its_startup():
    spec = {"type": "median", "metric": "val_accuracy", "min_epochs": 2, "reduction_factor": 3, "startup_trials": 2}
    done = [Competitor([0.2, 0.4, 0.6], True), Competitor([0.3, 0.5, 0.7], True)]
    running = [Competitor([0.9, 0.9], False)]  # unfinished trials never set the median
    assert decide(spec, [0.1], done + running) is False  # epoch 1 < min_epochs
    assert decide(spec, [0.1, 0.44], done + running) is True  # median at epoch 2 is 0.45
    assert decide(spec, [0.1, 0.46], done + running) is False
    assert decide(spec, [0.1, 0.1], done[:1]) is False  # one finished trial < startup_trials


# --- searches ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tpe_search(tmp_path_factory):
    """One uninterrupted `expkit run` of a 12-trial TPE search (the resume test compares with it)."""
    from conftest import tiny_experiment

    folder = tmp_path_factory.mktemp("tpe")
    path = folder / "tpe.yaml"
    path.write_text(yaml.safe_dump(search_config(tiny_experiment(), name="tpe")))
    out = subprocess.run(cli("run", path, "--runs-dir", folder / "runs"), env=ENV, capture_output=True, text=True,
                         timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    return path, folder / "runs" / "tpe", out.stderr


def test_a_tpe_search_runs_its_budget_and_marks_its_best(tpe_search, tmp_path):
    from expkit.api import Sweep, table

    _, sweep_dir, err = tpe_search
    props = proposals(sweep_dir)
    assert len(props) == 12 and all(state == "COMPLETE" for _, state, _ in props)
    values = [v for _, _, v in props]
    assert len({json.dumps(v, sort_keys=True) for v in values}) == 12
    assert all(0.001 <= v["train.learning_rate"] <= 0.3 and 0 <= v["model.layers[2].dropout.rate"] <= 0.5
               for v in values)
    results = table([sweep_dir])
    assert len(results) == 12 and set(results["status"]) == {"done"}
    best = Sweep(sweep_dir).best  # the highest best_val_accuracy, marked in results.md and said by the CLI
    assert best["best_val_accuracy"] == results["best_val_accuracy"].max()
    assert f"best: {best['run']} (best_val_accuracy {best['best_val_accuracy']:.4f})" in err
    md = (sweep_dir / "results.md").read_text().splitlines()
    assert md[2].startswith("| run | best |") and md[4].split("|")[2].strip() == "*"
    assert md[4].split("|")[1].strip() == best["run"]
    assert (sweep_dir / "search.png").stat().st_size > 0 and (sweep_dir / "parallel.png").stat().st_size > 0


def test_a_search_seed_decides_its_proposals(tiny_config, tmp_path):
    """What the sampler proposes depends on its seed (and on what finished before), not on the process."""
    from expkit.sweeps.search import Search

    def first(seed, folder):
        cfg = validate(search_config(tiny_config, seed=seed, sampler="random"))
        return [t.values for t in Search(cfg, tmp_path / folder).step(set(), 3)[1]]

    assert first(5, "a") == first(5, "b") != first(6, "c")


def test_seeds_inside_a_search_train_each_proposal_at_every_seed(tmp_path, tiny_config):
    cfg = search_config(tiny_config, trials=3, sampler="random", seeds=[1, 2])
    result = api_sweep(cfg, runs_dir=tmp_path / "runs")
    assert result.counts == {"done": 6}
    table = result.results
    assert len(table) == 3 and list(table["seeds"]) == [2, 2, 2]
    props = proposals(result.path)
    manifest = json.loads((result.path / "manifest.json").read_text())
    for number, state, values in props:  # the sampler was told the mean over the two seeds
        runs = [json.loads((result.path / t["id"] / "results.json").read_text()) for t in manifest["trials"]
                if t["values"] == values]
        assert sorted(r["seed"] for r in runs) == [1, 2]
        import optuna
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        study = optuna.load_study(study_name="search", storage=JournalStorage(
            JournalFileBackend(str(result.path / "search.journal"))))
        told = study.trials[number].value
        assert told == pytest.approx(sum(r["best"]["val_accuracy"] for r in runs) / 2)


def test_a_search_stopped_mid_trial_resumes_to_the_same_search(tpe_search, tmp_path):
    """SIGTERM while its third proposal trains; the rerun continues that trial and the search: 12 trials,
    each trained once, and the same proposals as the uninterrupted search."""
    path, whole, _ = tpe_search
    runs = tmp_path / "runs"
    proc = subprocess.Popen(cli("run", path, "--runs-dir", runs), env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline, sweep_dir = time.time() + 300, runs / "tpe"
    while time.time() < deadline:
        running = [s for s in sweep_dir.glob("*/status.json") if '"running"' in s.read_text()]
        if len(list(sweep_dir.glob("*/status.json"))) >= 3 and running:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    # the sweep folder is named, and how to go on (the search's study included)
    assert f"finished trials are kept in the sweep folder {sweep_dir.absolute()}" in err and "Traceback" not in err
    cut = [s.parent.name for s in sweep_dir.glob("*/status.json") if json.loads(s.read_text())["status"] == "interrupted"]
    assert len(cut) == 1
    assert [state for _, state, _ in proposals(sweep_dir)] == ["COMPLETE", "COMPLETE", "RUNNING"]
    rerun = subprocess.run(cli("run", path, "--runs-dir", runs), env=ENV, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert proposals(sweep_dir) == proposals(whole)
    manifest = json.loads((sweep_dir / "manifest.json").read_text())["trials"]
    assert len(manifest) == 12 and sorted(started(rerun.stderr)) == sorted(t["id"] for t in manifest[2:])
    assert trained_once(sweep_dir, [t["id"] for t in manifest], cut=cut)


def test_two_drivers_share_one_search(tmp_path, tiny_config):
    cfg = search_config(tiny_config, name="shared", trials=12)
    path = tmp_path / "shared.yaml"
    path.write_text(yaml.safe_dump(cfg))
    runs = tmp_path / "runs"
    procs = [subprocess.Popen(cli("run", path, "--runs-dir", runs), env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outputs]
    sweep_dir = runs / "shared"
    props = proposals(sweep_dir)
    assert len(props) == 12 and all(state == "COMPLETE" for _, state, _ in props)
    trained = [tid for _, err in outputs for tid in started(err)]
    ids = [t["id"] for t in json.loads((sweep_dir / "manifest.json").read_text())["trials"]]
    assert sorted(trained) == sorted(ids) and len(ids) == 12  # each trained once, by one of the two
    assert all(started(err) for _, err in outputs)  # both trained some
    assert trained_once(sweep_dir, ids)


# --- pruning a grid ----------------------------------------------------------------------------------


def test_a_median_pruned_grid_records_pruned_trials_with_their_epochs(tmp_path, tiny_config):
    cfg = {**tiny_config, "name": "pruned", "train": {**tiny_config["train"], "epochs": 4},
           "sweep": {"vectorize": False, "grid": {"train.learning_rate": [0.03, 0.01, 0.00001, 0.000001, 0.02]},
                     "prune": {"type": "median", "metric": "val_accuracy", "startup_trials": 2, "min_epochs": 1}}}
    cfg["data"] = {**cfg["data"], "validation_split": 0.25}
    result = api_sweep(cfg, runs_dir=tmp_path / "runs")
    manifest = json.loads((result.path / "manifest.json").read_text())["trials"]
    status = {t["values"]["train.learning_rate"]: t["status"] for t in manifest}
    assert status[0.03] == status[0.01] == "done"  # the startup trials always finish
    assert status[0.00001] == status[0.000001] == "pruned"  # too slow to learn: below the median at once
    for t in manifest:
        record = json.loads((result.path / t["id"] / "results.json").read_text())
        rows = (result.path / t["id"] / "metrics.csv").read_text().splitlines()[1:]
        assert record["status"] == t["status"] and record["epochs_run"] == len(rows)
        assert (len(rows) < 4) == (t["status"] == "pruned")
        assert not (result.path / t["id"] / "checkpoint.keras").exists()
    table = result.results
    assert set(table["status"]) == {"done", "pruned"}
    again = api_sweep(cfg, runs_dir=tmp_path / "runs")  # a pruned trial is finished: never retrained
    assert again.counts == result.counts


# --- pruning lanes of a vectorised program -------------------------------------------------------------


def test_successive_halving_drops_lanes_of_a_vectorised_group(tiny_config, tmp_path, monkeypatch):
    """Nine trials as one JAX program, successive halving from epoch 1 (factor 3): the program goes on
    with 3 lanes after epoch 1 and 1 after epoch 3, recompiled smaller each time; every trial's epochs
    equal the same trial trained alone on JAX, the survivor's test scores too."""
    pytest.importorskip("jax")
    from expkit.runfolder import read_metrics, read_record
    from expkit.sweeps.driver import run_sweep
    from expkit.sweeps.trials import expand_sweep
    from expkit.sweeps.vectorize import grouping, plan
    from test_vectorize import one_at_a_time_on_jax

    monkeypatch.setattr(grouping, "MIN_SEQUENTIAL_SECONDS", 0.0)
    monkeypatch.setattr(plan, "lane_count", lambda groups: 1)  # one program (not one per core): its sizes are known
    monkeypatch.setenv("EXPKIT_RECOMPILE_PAYS", "0")  # tiny data: a recompilation never pays; forced here
    cfg = validate({**tiny_config, "name": "halving", "train": {**tiny_config["train"], "epochs": 4},
                    "sweep": {"grid": {"train.learning_rate": [0.3, 0.1, 0.03, 0.01, 0.003, 0.001, 0.0003, 0.0001,
                                                               0.00003]},
                              "prune": {"type": "successive_halving", "metric": "val_loss", "min_epochs": 1,
                                        "reduction_factor": 3},
                              "vectorize": True}})
    log = tmp_path / "log.txt"
    with open(log, "w") as fh:
        sweep_dir, counts = run_sweep(cfg, runs_dir=tmp_path / "vec", log=fh)
    assert counts == {"done": 1, "pruned": 8}, log.read_text()
    trials = expand_sweep(cfg)
    records = {t.id: read_record(sweep_dir / t.id) for t in trials}
    assert sorted(r.epochs_run for r in records.values()) == [1] * 6 + [3] * 2 + [4]
    assert all(r.extra["vectorized"]["sizes"] == [9, 3, 1] for r in records.values())
    assert all((sweep_dir / t.id / "confusion.csv").is_file() for t in trials)  # dropped lanes scored too
    alone = one_at_a_time_on_jax(trials, tmp_path)
    worst = 0.0
    for t in trials:
        rows, ref = read_metrics(sweep_dir / t.id), alone[t.id]
        for mine, theirs in zip(rows, ref["metrics"]):
            worst = max(worst, *(abs(mine[k] - theirs[k]) for k in theirs if k != "epoch_seconds"))
        if records[t.id].status == "done":
            worst = max(worst, *(abs(records[t.id].test[k] - ref["test"][k]) for k in ("loss", "accuracy")))
    assert worst < 1e-4, worst
    lane_epochs = sum(r.epochs_run for r in records.values())
    print(f"lane-epochs: {lane_epochs} of {9 * 4}")
    assert lane_epochs == 16


def test_hyperband_brackets_start_their_rungs_later():
    from expkit.sweeps.pruning import bracket_of, brackets

    spec = {"type": "hyperband", "metric": "val_accuracy", "min_epochs": 1, "reduction_factor": 3, "startup_trials": 0}
    assert brackets(spec, 9) == 3 and brackets({**spec, "type": "successive_halving"}, 9) == 1
    assert [rung_epochs(spec, b, 9) for b in range(3)] == [[1, 3, 9], [3, 9], [9]]
    ids = [f"{i:010x}" for i in range(30)]
    assert {bracket_of(spec, i, 9) for i in ids} == {0, 1, 2}  # fixed by the id, every bracket used
    others = [Competitor([0.1, 0.2, 0.3], False) for _ in range(5)]
    assert decide(spec, [0.05], others, bracket=1) is False  # bracket 1 judges first at epoch 3
    assert decide(spec, [0.05, 0.1, 0.2], others, bracket=1) is True


def test_the_report_shows_a_search_and_its_pruned_trials(tpe_search, tmp_path):
    from expkit.report.html import write_html_report

    _, sweep_dir, _ = tpe_search
    page = Path(write_html_report([sweep_dir], tmp_path / "report.html")).read_text()
    assert "the objective of each proposal and the best so far" in page
    assert "the search space in parallel coordinates" in page


def test_a_search_dry_run_shows_the_space_and_the_budget(tiny_config, tmp_path):
    import io

    from expkit.sweeps.dryrun import dry_run

    cfg = validate(search_config(tiny_config, trials=7, seeds=[1, 2],
                                 prune={"type": "median", "min_epochs": 2, "startup_trials": 3}))
    out = io.StringIO()
    rows = dry_run(cfg, out)
    text = out.getvalue()
    assert "tpe sampler (seed 5), 7 configurations x 2 seeds = 14 trials at most" in text
    assert "train.learning_rate           log_uniform [0.001, 0.3]" in text
    assert "model.layers[2].dropout.rate  uniform [0.0, 0.5]" in text
    assert "prune: median on val_accuracy from epoch 2, after 3 finished trials" in text
    assert rows[0]["params"] == 8 * 8 * 8 + 8 + 8 * 3 + 3 and "nothing trained" in text
    assert not (tmp_path / "runs").exists()


def test_without_optuna_a_search_or_pruning_is_one_line_naming_the_key(tiny_config, tmp_path, monkeypatch):
    import importlib.util

    from expkit.sweeps.driver import run_sweep

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "optuna" else real(name, *a))
    pruned = {**tiny_config, "sweep": {"grid": {"train.learning_rate": [0.1, 0.01]}, "prune": {"type": "median"}}}
    for raw, key in ((search_config(tiny_config), "sweep.search"), (pruned, "sweep.prune")):
        with pytest.raises(ConfigError, match="pip install 'expkit\\[search\\]'") as exc:
            run_sweep(validate(raw), runs_dir=tmp_path / "runs")
        assert exc.value.path == key
    assert not any((tmp_path / "runs").glob("*/*/results.json"))  # nothing trained
