"""A run's test-set confusion matrix: how it is counted, the per-class scores results.json keeps
(`per_class`), and confusion.csv, its writer and its reader. Numpy only: no Keras, no scikit-learn
(which expkit does not depend on; tests/test_per_class.py checks these numbers against it where installed).

confusion.csv: a header `true\\predicted,<class>,...`, then one row per true class, its counts per
predicted class. Rows sum to the class's test examples, the whole matrix to the test set's size.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from .records import CONFUSION_CSV, DamagedRecord

CORNER = "true\\predicted"


def class_indexes(y) -> np.ndarray:
    """Integer labels from one-hot rows, probabilities or integer labels (of any shape (n,) or (n, 1))."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] > 1:
        return np.argmax(y, axis=1)
    return np.asarray(y).reshape(len(y)).astype(np.int64)


def predicted_classes(outputs, num_classes: int) -> np.ndarray | None:
    """The class a model's outputs choose: argmax over one score per class, or for a single sigmoid
    output of a two-class problem its 0.5 threshold. None when the outputs are not per-class scores."""
    outputs = np.asarray(outputs)
    if outputs.ndim == 2 and outputs.shape[1] == num_classes and num_classes > 1:
        return np.argmax(outputs, axis=1)
    if num_classes == 2 and (outputs.ndim == 1 or (outputs.ndim == 2 and outputs.shape[1] == 1)):
        return (outputs.reshape(len(outputs)) > 0.5).astype(np.int64)
    return None


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """counts[i, j]: test examples of class i predicted as class j."""
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return counts


def per_class_scores(counts: np.ndarray, classes: list[str]) -> dict:
    """{class: {precision, recall, f1, support}} from a confusion matrix; a score whose denominator is
    0 (a class never predicted, or absent from the test set) is 0.0, as scikit-learn's zero_division=0."""
    counts = np.asarray(counts, dtype=np.float64)
    hits = np.diag(counts)
    predicted, actual = counts.sum(axis=0), counts.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, hits / predicted, 0.0)
        recall = np.where(actual > 0, hits / actual, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return {str(c): {"precision": round(float(p), 6), "recall": round(float(r), 6), "f1": round(float(f), 6),
                     "support": int(s)} for c, p, r, f, s in zip(classes, precision, recall, f1, actual)}


def confusion_csv_text(counts: np.ndarray, classes: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([CORNER, *classes])
    for name, row in zip(classes, np.asarray(counts)):
        writer.writerow([name, *(int(v) for v in row)])
    return buf.getvalue()


def read_confusion(folder: str | Path) -> tuple[list[str], np.ndarray] | None:
    """(classes, counts) from the folder's confusion.csv; None when it has none. Raises DamagedRecord."""
    path = Path(folder) / CONFUSION_CSV
    if not path.is_file():
        return None
    try:
        rows = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"))))
        classes = rows[0][1:]
        if rows[0][0] != CORNER or len(rows) != len(classes) + 1 or [r[0] for r in rows[1:]] != classes:
            raise ValueError("not a square matrix with one row per class")
        counts = np.array([[int(v) for v in r[1:]] for r in rows[1:]], dtype=np.int64).reshape(len(classes), -1)
        if counts.shape != (len(classes), len(classes)):
            raise ValueError("not a square matrix with one row per class")
    except (OSError, UnicodeDecodeError, IndexError, ValueError) as exc:
        raise DamagedRecord(f"damaged record: cannot read the confusion matrix ({exc})", file=path) from None
    return classes, counts

