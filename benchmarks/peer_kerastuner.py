"""The peer a user would otherwise pick for sweep_lr.yaml: KerasTuner's GridSearch over the same ten
learning rates, the same model (seed 000's dense baseline), data, split, batch size and epochs, with
KerasTuner's and Keras' defaults otherwise. Run by bench_sweep.py --peer in a fresh process per backend:

    KERAS_BACKEND=jax python benchmarks/peer_kerastuner.py --dataset fashion_mnist --out result.json

Prints and writes the search's own time (`tuner.search`), the process's time from its start, and each
rate's best validation accuracy. Needs `pip install keras-tuner` (the benchmark installs it; expkit does not
depend on it).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

STARTED = time.perf_counter()
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--limit", type=int, default=0, help="first N training examples (0: all)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    import yaml

    from expkit.config import load_config
    from expkit.data.dataset import load_dataset

    sweep = yaml.safe_load((ROOT / "configs" / "sweep_lr.yaml").read_text())["sweep"]["grid"]["train.learning_rate"]
    overrides = [f"data.dataset={args.dataset}"] + ([f"data.limit={args.limit}"] if args.limit else [])
    cfg = load_config(ROOT / "configs" / "sweep_lr.yaml", overrides=overrides)
    data = load_dataset(cfg.data, cfg.seed, cfg.train.loss)  # the arrays expkit trains on: the same split and one-hot labels
    loaded = time.perf_counter() - STARTED

    import keras
    import keras_tuner

    def build(hp):
        model = keras.Sequential([keras.Input(data.x_train.shape[1:]),
                                  keras.layers.Dense(32, activation="sigmoid"),
                                  keras.layers.Dense(10, activation="softmax")])
        model.compile(optimizer=keras.optimizers.SGD(hp.Choice("learning_rate", sweep)),
                      loss="categorical_crossentropy", metrics=["accuracy"])
        return model

    with tempfile.TemporaryDirectory(prefix="kt-") as tmp:
        tuner = keras_tuner.GridSearch(build, objective="val_accuracy", max_trials=len(sweep), directory=tmp,
                                       project_name="sweep_lr", overwrite=True, seed=cfg.seed)
        began = time.perf_counter()
        tuner.search(data.x_train, data.y_train, validation_data=(data.x_val, data.y_val),
                     epochs=cfg.train.epochs, batch_size=cfg.train.batch_size, verbose=0)
        search = time.perf_counter() - began
        best = {}
        for trial in tuner.oracle.trials.values():
            rate = trial.hyperparameters.get("learning_rate")
            metric = trial.metrics.get_best_value("val_accuracy")
            best[str(rate)] = None if metric is None else float(metric)
    result = {"backend": keras.backend.backend(), "search_seconds": round(search, 2),
              "process_seconds": round(time.perf_counter() - STARTED, 2), "data_seconds": round(loaded, 2),
              "trials": len(best), "best_val_accuracy": best, "keras_tuner": keras_tuner.__version__}
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
