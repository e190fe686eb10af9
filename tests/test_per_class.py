"""Per-class results: the test set's confusion matrix (confusion.csv, confusion.png), per-class scores in
results.json, `expkit table --per-class` and the HTML report."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from expkit.runfolder.confusion import (confusion_matrix, per_class_scores, predicted_classes, read_confusion)
from expkit.runfolder import DamagedRecord

ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}


def test_scores_agree_with_scikit_learn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    true = rng.integers(0, 4, 200)
    pred = np.where(rng.random(200) < 0.6, true, rng.integers(0, 3, 200))
    pred[pred == 3] = 0  # class 3 is never predicted: its precision divides by 0
    counts = confusion_matrix(true, pred, 4)
    assert counts.sum() == 200
    np.testing.assert_array_equal(counts, sklearn_metrics.confusion_matrix(true, pred, labels=range(4)))
    scores = per_class_scores(counts, ["a", "b", "c", "d"])
    p, r, f, s = sklearn_metrics.precision_recall_fscore_support(true, pred, labels=range(4), zero_division=0)
    for i, name in enumerate("abcd"):
        assert scores[name]["precision"] == pytest.approx(p[i], abs=1e-6)
        assert scores[name]["recall"] == pytest.approx(r[i], abs=1e-6)
        assert scores[name]["f1"] == pytest.approx(f[i], abs=1e-6)
        assert scores[name]["support"] == s[i]
    assert scores["d"]["precision"] == 0.0 and scores["d"]["support"] > 0


def test_predicted_classes_of_softmax_and_sigmoid_outputs():
    assert predicted_classes(np.array([[0.1, 0.9], [0.8, 0.2]]), 2).tolist() == [1, 0]
    assert predicted_classes(np.array([[0.7], [0.2]]), 2).tolist() == [1, 0]
    assert predicted_classes(np.array([[0.7, 0.1]]), 3) is None  # not one score per class


def test_damaged_confusion_csv_is_reported(tmp_path):
    (tmp_path / "confusion.csv").write_text("true\\predicted,a,b\na,1,2\n")
    with pytest.raises(DamagedRecord, match="confusion.csv"):
        read_confusion(tmp_path)


@pytest.fixture(scope="module")
def classified(tmp_path_factory):
    """One tiny run (kept model) of a three-class problem, and its folder."""
    import expkit

    runs = tmp_path_factory.mktemp("runs")
    cfg = {
        "name": "tiny", "seed": 3,
        "data": {"dataset": "synthetic", "options": {"n_train": 120, "n_test": 40, "shape": [8, 8], "classes": 3}},
        "model": {"layers": [{"flatten": {}}, {"dense": {"units": 8, "activation": "relu"}},
                             {"dense": {"units": 3, "activation": "softmax"}}]},
        "train": {"optimizer": "adam", "learning_rate": 0.01, "epochs": 2, "batch_size": 16, "verbose": 0},
    }
    return expkit.run(cfg, runs_dir=runs), runs


def test_a_run_writes_its_confusion_matrix_and_per_class_scores(classified):
    from expkit.data import load_dataset

    run, _ = classified
    classes, counts = read_confusion(run.path)
    assert counts.shape == (3, 3) and counts.sum() == 40 == run.record.n_test  # the test set's size
    cfg = run.config
    data = load_dataset(cfg.data, cfg.seed, cfg.train.loss)
    outputs = run.model.predict(data.x_test, verbose=0)
    expected = confusion_matrix(np.argmax(data.y_test, axis=1), np.argmax(outputs, axis=1), 3)
    np.testing.assert_array_equal(counts, expected)
    # the matrix's diagonal is the test accuracy Keras reported
    assert np.trace(counts) / counts.sum() == pytest.approx(run.record.test["accuracy"], abs=1e-6)
    saved = json.loads((run.path / "results.json").read_text())["per_class"]
    assert list(saved) == classes
    assert saved == per_class_scores(counts, classes)
    assert sum(v["support"] for v in saved.values()) == 40
    assert (run.path / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_table_per_class_columns_on_request(classified, capsys):
    from expkit.cli import main

    run, _ = classified
    args = ["table", str(run.path), "--format", "csv"]
    assert main(args) == 0
    assert "f1[" not in capsys.readouterr().out
    assert main([*args, "--per-class", "f1,recall"]) == 0
    header, row = capsys.readouterr().out.splitlines()[:2]
    saved = json.loads((run.path / "results.json").read_text())["per_class"]
    columns = dict(zip(header.split(","), row.split(",")))
    for name, scores in saved.items():
        assert float(columns[f"f1[{name}]"]) == pytest.approx(scores["f1"], abs=1e-4)
        assert float(columns[f"recall[{name}]"]) == pytest.approx(scores["recall"], abs=1e-4)
    import expkit

    table = expkit.table([run.path], per_class="precision")  # the Python API's spelling
    assert [c for c in table.columns if c.startswith("precision[")] == [f"precision[{n}]" for n in saved]
    bad = subprocess.run([sys.executable, "-m", "expkit", *args, "--per-class", "f2"], capture_output=True, text=True,
                         env=ENV)
    assert bad.returncode == 2 and "unknown score 'f2'" in bad.stderr and "Traceback" not in bad.stderr


def test_html_report_shows_the_confusion_matrix(classified, tmp_path):
    from expkit.report.html import write_html_report

    run, _ = classified
    page = write_html_report([run.path], tmp_path / "report.html").read_text()
    assert "test-set confusion matrix of" in page and "Per-class test scores" in page
    first = next(iter(json.loads((run.path / "results.json").read_text())["per_class"]))
    assert f"<td>{first}</td>" in page
