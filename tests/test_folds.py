"""Cross-validation as a sweep axis (sweep.folds, data.fold): the splits, the trials, the tables, the tests
between rows, a vectorised group over folds, and the config errors."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from expkit.config import DataConfig, validate
from expkit.data import load_dataset
from expkit.errors import ConfigError
from expkit.report import collect_runs
from expkit.report.formatting import format_table
from expkit.report.stats import table_tests
from expkit.report.table import comparison_table
from expkit.sweeps.trials import expand_sweep
from expkit.sweeps.vectorize import grouping

sys.path.insert(0, str(Path(__file__).parent))
from test_report import write_run  # noqa: E402
from test_vectorize import equal_to_one_at_a_time, needs_jax, sweep_cfg  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def numbered_npz(tmp_path, n: int) -> Path:
    """An npz whose training example i holds the pixel value i everywhere: an example says which it is."""
    path = tmp_path / "numbered.npz"
    x = np.repeat(np.arange(n, dtype=np.uint8)[:, None, None], 16, axis=1).reshape(n, 4, 4)
    np.savez(path, x_train=x, y_train=np.arange(n) % 3)
    return path


def fold_examples(path: Path, index: int, of: int, seed: int = 7) -> tuple[list[int], list[int]]:
    """(training example numbers, validation example numbers) of one fold, in the order the run sees them."""
    cfg = DataConfig(dataset="npz", path=str(path), scale=False, fold={"index": index, "of": of})
    ds = load_dataset(cfg, seed, "sparse_categorical_crossentropy")
    return ds.x_train[:, 0, 0, 0].astype(int).tolist(), ds.x_val[:, 0, 0, 0].astype(int).tolist()


def test_three_folds_are_three_different_validation_sets_covering_the_training_set_once(tmp_path):
    path = numbered_npz(tmp_path, 31)
    folds = [fold_examples(path, i, 3) for i in range(3)]
    vals = [set(v) for _, v in folds]
    assert [len(v) for _, v in folds] == [11, 10, 10]  # 31 = 11 + 10 + 10, the first part one longer
    assert all(len(set(v)) == len(v) for _, v in folds)
    assert vals[0].isdisjoint(vals[1]) and vals[0].isdisjoint(vals[2]) and vals[1].isdisjoint(vals[2])
    assert set().union(*vals) == set(range(31))  # every example validates exactly once
    for (train, val) in folds:  # a fold trains on the rest
        assert sorted(train + val) == list(range(31))
    # the cuts follow the seed's shuffle: the same seed the same folds, another seed other folds
    assert fold_examples(path, 1, 3) == folds[1]
    assert set(fold_examples(path, 1, 3, seed=8)[1]) != vals[1]
    # as scikit-learn's KFold cuts the seed's shuffled order
    kfold = pytest.importorskip("sklearn.model_selection").KFold(3)
    order = np.random.default_rng(7).permutation(31)
    for (train, val), (k_train, k_val) in zip(folds, kfold.split(order)):
        assert val == order[k_val].tolist() and train == order[k_train].tolist()


def test_folds_expand_each_seed_into_trials_whose_id_covers_the_fold(tiny_config):
    cfg = validate({**tiny_config, "sweep": {"folds": 3, "seeds": [1, 2], "grid": {"train.learning_rate": [0.1, 0.2]}}})
    trials = expand_sweep(cfg)
    assert len(trials) == 12 and len({t.id for t in trials}) == 12
    assert [(t.seed, t.fold) for t in trials[:6]] == [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2)]
    assert all(t.config.data.fold.index == t.fold and t.config.data.fold.of == 3 for t in trials)
    assert "fold=2/3" in trials[2].heading() and trials[2].record()["fold"] == 2
    # a config without folds resolves as before the key existed: its trials keep their ids
    plain = validate({**tiny_config, "sweep": {"seeds": [1, 2]}})
    assert "fold" not in plain.to_dict()["data"] and "folds" not in plain.to_dict()["sweep"]
    assert "fold" not in expand_sweep(plain)[0].record()
    assert validate({**tiny_config, "sweep": {"folds": 2}}).sweep.folds == 2  # folds alone are a sweep


@pytest.mark.parametrize("change, path, words", [
    ({"sweep": {"folds": 1}}, "sweep.folds", "greater than or equal to 2"),
    ({"sweep": {"folds": 3}, "data": {"validation_split": 0.2}}, "data.validation_split", "sweep.folds=3 makes the validation sets"),
    ({"sweep": {"folds": 11}, "data": {"limit": 10}}, "sweep.folds", "at most 10"),
    ({"sweep": {"folds": 3}, "data": {"fold": {"index": 0, "of": 3}}}, "data.fold", "remove data.fold"),
    ({"data": {"fold": {"index": 3, "of": 3}}}, "data.fold.index", "must be 0..2"),
    ({"data": {"fold": {"index": 0, "of": 1}}}, "data.fold.of", "greater than or equal to 2"),
    ({"data": {"fold": {"index": 0, "of": 2}, "validation_split": 0.1}}, "data.validation_split", "data.fold makes the validation set"),
])
def test_fold_mistakes_name_their_key(tiny_config, change, path, words):
    raw = {**tiny_config, **{k: v for k, v in change.items() if k != "data"}}
    raw["data"] = {**tiny_config["data"], **change.get("data", {})}
    with pytest.raises(ConfigError) as err:
        validate(raw)
    assert str(err.value).startswith(f"{path}: ") and words in str(err.value)


def test_more_folds_than_training_examples_is_one_line_naming_the_key(tmp_path, write_yaml, tiny_config):
    with pytest.raises(ConfigError, match=r"^data\.fold\.of: 5 folds of 4 training examples leave a fold empty"):
        fold_examples(numbered_npz(tmp_path, 4), 0, 5)
    bad = write_yaml("cv.yaml", {**tiny_config, "data": {**tiny_config["data"], "validation_split": 0.1},
                                 "sweep": {"folds": 3}})
    done = subprocess.run([sys.executable, "-m", "expkit", "run", str(bad), "--runs-dir", str(tmp_path / "runs")],
                          env={**os.environ, "PYTHONPATH": str(REPO / "src")}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"expkit: error: {bad}: data.validation_split: sweep.folds=3 makes the validation sets (one fold each); "
        "remove data.validation_split"]
    assert not (tmp_path / "runs").exists()


def test_tests_between_rows_pair_on_each_seed_and_fold(tmp_path):
    scipy_stats = pytest.importorskip("scipy.stats")
    a, b = {}, {}
    for seed in (0, 1):
        for fold in (0, 1, 2):
            va, vb = 0.80 + 0.01 * seed + 0.003 * fold ** 2, 0.78 + 0.012 * seed + 0.001 * fold
            a[(seed, fold)], b[(seed, fold)] = va, vb
            for name, v in (("wide", va), ("narrow", vb)):
                write_run(tmp_path / name / f"s{seed}f{fold}", name=name, seed=seed, best=(0.9, v, 0.3, 0.4),
                          config={"data.fold": {"index": fold, "of": 3}})
    paths = [tmp_path / n / f"s{s}f{f}" for n in ("wide", "narrow") for s, f in a]
    runs = collect_runs(paths)
    table = comparison_table(runs)
    assert table["folds"].tolist() == [3, 3] and table["seeds"].tolist() == [6, 6]
    wide = np.array([a[k] for k in sorted(a)])
    assert table["best_val_accuracy"][0] == pytest.approx(wide.mean())
    assert "| done | 6 | 3 |" in format_table(table, "markdown")
    assert f"{wide.mean():.4f} ± {wide.std(ddof=1):.4f}" in format_table(table, "markdown")
    tests = table_tests(runs, table, compare=[["wide", "narrow"]], metrics=["best_val_accuracy"])
    got = tests.iloc[0]
    keys = sorted(a)
    want = scipy_stats.ttest_rel([a[k] for k in keys], [b[k] for k in keys])
    assert got["test"] == "paired" and got["seeds"] == "6 vs 6"
    assert got["p_value"] == pytest.approx(want.pvalue)
    assert (got["ci_low"], got["ci_high"]) == pytest.approx(tuple(want.confidence_interval(0.95)))
    # a row cross-validated with another K is another configuration: its own row
    write_run(tmp_path / "wide5" / "r", name="wide", seed=0, best=(0.9, 0.8, 0.3, 0.4),
              config={"data.fold": {"index": 0, "of": 5}})
    assert len(comparison_table(collect_runs([*paths, tmp_path / "wide5" / "r"]))) == 3


@needs_jax
def test_a_vectorised_group_over_folds_equals_its_trials_one_at_a_time(tiny_config, tmp_path, monkeypatch):
    """Folds are data, not shapes: the folds of a seed are data pools of one program. 121 examples cut in
    3 are folds of 41, 40 and 40: the folds of each size train as one program. The sweep's table averages
    each rate over its folds."""
    monkeypatch.setattr(grouping, "MIN_SEQUENTIAL_SECONDS", 0.0)
    tiny = {**tiny_config, "data": {**tiny_config["data"], "options": {**tiny_config["data"]["options"], "n_train": 121}}}
    cfg = sweep_cfg(tiny, {"grid": {"train.learning_rate": [0.01, 0.05]}, "folds": 3, "vectorize": True}, epochs=1)
    log = equal_to_one_at_a_time(cfg, tmp_path, {"done": 6})
    assert "2 trials as one JAX program" in log and "4 trials as one JAX program" in log
    # the sweep's table: a row per rate over its three folds, mean ± std of the three runs
    sweep_dir = tmp_path / "vec" / "vec"
    runs = collect_runs([sweep_dir])
    assert runs["fold"].tolist() == [0, 1, 2, 0, 1, 2] and runs["seed"].tolist() == [3] * 6
    configs = [yaml.safe_load((Path(p) / "config.yaml").read_text())["data"]["fold"] for p in runs["path"][:3]]
    assert configs == [{"index": i, "of": 3} for i in range(3)]
    assert len(set(runs["best_val_loss"][:3])) == 3  # three different validation sets
    table = comparison_table(runs)
    assert table["run"].tolist() == ["vec[learning_rate=0.01]", "vec[learning_rate=0.05]"]
    assert table["seeds"].tolist() == [3, 3] and table["folds"].tolist() == [3, 3]
    results = (sweep_dir / "results.md").read_text()
    assert "| seeds | folds |" in results
    for row, members in zip(table.to_dict("records"), (runs[:3], runs[3:])):
        accuracies = members["best_val_accuracy"].to_numpy()
        assert row["best_val_accuracy"] == pytest.approx(accuracies.mean())
        assert row["best_val_accuracy_std"] == pytest.approx(accuracies.std(ddof=1))
        assert f"{accuracies.mean():.4f} ± {accuracies.std(ddof=1):.4f}" in results
