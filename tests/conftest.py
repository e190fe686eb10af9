import os
import sys
from pathlib import Path

# Tests never download: dataset loaders that would fall back to Keras' download fail at once instead.
os.environ["EXPKIT_OFFLINE"] = "1"
# The Keras backend of this test run, fixed before anything imports Keras: EXPKIT_TEST_BACKEND=jax runs the
# suite on JAX (`make test` runs the core files again that way), else $KERAS_BACKEND, else TensorFlow.
TEST_BACKEND = os.environ.get("EXPKIT_TEST_BACKEND") or os.environ.get("KERAS_BACKEND") or "tensorflow"
os.environ["KERAS_BACKEND"] = TEST_BACKEND
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import pytest  # noqa: E402
import yaml  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def pytest_report_header(config):
    return f"expkit test backend: {TEST_BACKEND} (EXPKIT_TEST_BACKEND)"


@pytest.fixture
def write_yaml(tmp_path):
    """Write a dict (or raw text) as a YAML file in tmp_path and return its path."""

    def write(name, data):
        path = tmp_path / name
        path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
        return path

    return write


@pytest.fixture
def tiny_config():
    """A tiny experiment on synthetic data: trains in a second or two."""
    return tiny_experiment()


def tiny_experiment() -> dict:
    """tiny_config's dict, for module-scoped fixtures."""
    return {
        "name": "tiny",
        "seed": 3,
        "data": {"dataset": "synthetic", "options": {"n_train": 120, "n_test": 40, "shape": [8, 8], "classes": 3}},
        "model": {"layers": [{"flatten": {}}, {"dense": {"units": 16, "activation": "relu"}},
                             {"dense": {"units": 3, "activation": "softmax"}}]},
        "train": {"optimizer": "adam", "learning_rate": 0.01, "epochs": 3, "batch_size": 16, "verbose": 0},
    }
