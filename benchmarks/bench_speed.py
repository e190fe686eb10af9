"""expkit against the plain Keras script a user would write: same model, same data, same seed, same backend.

    python benchmarks/bench_speed.py                       # baseline, cnn1, cnn2 on JAX and TensorFlow; full Fashion-MNIST if installed
    python benchmarks/bench_speed.py --backends jax --models cnn2 --repeats 3 --limit 20000 --precision mixed_bfloat16

Every training run is its own process (Keras fixes its backend at import), and the plain and expkit runs
alternate (plain first in odd repeats, expkit first in even ones) so that drift in the machine's speed falls
on both sides. Both sides get the same arrays (expkit's loader, saved once to a temporary .npz) and time
only `model.fit`, whose first epoch includes tracing and compiling on both sides. Printed per backend and
model: samples per second (training examples x epochs / fit seconds), fit seconds and best validation
accuracy, medians over the repeats, then the expkit/plain ratio, and the same ratio for expkit's first run
alone: on JAX expkit keeps XLA's compiled programs in a persistent cache (backend.compile_cache_env), which
starts empty for each benchmark, so that run compiled from scratch (cold) and later ones loaded the programs
(warm), as a user's rerun of a config would; with several backends, expkit on the first
against expkit on each other. `--precision` adds expkit runs under a mixed dtype policy, reported against
expkit's float32 runs. The last table gives achieved training GFLOP/s (6 x forward MACs per example)
against this machine's fp32 matrix-multiply rate, measured with one 2048x2048 matmul loop per backend.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

DEFAULT_EPOCHS = {"baseline": 5, "cnn1": 2, "cnn2": 2}


# --- the plain script: what a user writes, in the seeds' style -------------------------------------


def plain_model(name: str):
    """seed 000's models written out in plain Keras, layer for layer as configs/<name>.yaml declares them."""
    import keras
    from keras import layers

    if name == "baseline":
        stack = [keras.Input((784,)), layers.Dense(32, activation="sigmoid"), layers.Dense(10, activation="softmax")]
    else:
        convs = [layers.Conv2D(32, 3, activation="relu"), layers.Conv2D(64, 3, activation="relu")]
        if name == "cnn2":
            convs += [layers.Conv2D(128, 3, strides=2, activation="relu"), layers.Conv2D(256, 3, strides=2, activation="relu")]
        stack = [keras.Input((784,)), layers.Reshape((28, 28, 1)), *convs, layers.Flatten(),
                 layers.Dense(64, activation="relu"), layers.Dense(10, activation="softmax")]
    return keras.Sequential(stack)


def worker_plain(args) -> dict:
    import keras
    import numpy as np

    data = np.load(args.data)
    keras.utils.set_random_seed(args.seed)
    model = plain_model(args.model)
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.01), loss="categorical_crossentropy",
                  metrics=["accuracy"])
    epoch_seconds: list[float] = []

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            epoch_seconds.append(time.perf_counter() - self.start)

    start = time.perf_counter()
    history = model.fit(data["x_train"], data["y_train"], batch_size=32, epochs=args.epochs,
                        validation_data=(data["x_val"], data["y_val"]), verbose=0, callbacks=[EpochTimer()])
    fit_seconds = time.perf_counter() - start
    return {"fit_seconds": fit_seconds, "epoch_seconds": epoch_seconds, "n_train": len(data["x_train"]),
            "best_val_accuracy": max(history.history["val_accuracy"]), "params": model.count_params()}


# --- the same experiment through expkit -------------------------------------------------------------


def worker_expkit(args) -> dict:
    import numpy as np

    from expkit.config import load_config
    from expkit.data import Dataset
    from expkit.runfolder import read_metrics, read_record
    from expkit.runner import run_experiment

    data = np.load(args.data)
    cfg = load_config(ROOT / "configs" / f"{args.model}.yaml", [
        f"train.epochs={args.epochs}", "train.verbose=0", f"seed={args.seed}", f"train.precision={args.precision}",
        f"backend={os.environ['KERAS_BACKEND']}", *[o for o in (args.expkit_set or "").split(";") if o]])
    dataset = Dataset(data["x_train"], data["y_train"], data["x_val"], data["y_val"], None, None,
                      [str(i) for i in range(data["y_train"].shape[1])])
    with tempfile.TemporaryDirectory() as runs:
        run = run_experiment(cfg, runs_dir=runs, dataset=dataset)
        record = read_record(run.path)
        rows = read_metrics(run.path)
    import keras

    from expkit.train import model_macs_per_sample

    keras.mixed_precision.set_global_policy("float32")
    keras.utils.set_random_seed(args.seed)
    macs = model_macs_per_sample(plain_model(args.model))
    return {"fit_seconds": record.fit_seconds, "epoch_seconds": [r["epoch_seconds"] for r in rows],
            "n_train": record.n_train, "best_val_accuracy": record.best["val_accuracy"],
            "params": record.params, "steps_per_execution": record.steps_per_execution,
            "eval_batch_size": record.eval_batch_size, "macs_per_sample": macs, "status": record.status,
            "backend": record.backend, "device": record.device}


def worker_matmul(args) -> dict:
    """fp32 and bf16 matrix-multiply rate of this machine through the backend's library: the attainable peak."""
    n = 2048
    backend = os.environ["KERAS_BACKEND"]
    if backend == "tensorflow":
        import tensorflow as tf

        mm = tf.function(lambda x: tf.matmul(x, x))

        def operand(dtype):
            return tf.cast(tf.random.normal((n, n)), dtype)

        def run(a):
            mm(a).numpy()
    elif backend == "jax":
        import jax
        import jax.numpy as jnp

        mm = jax.jit(lambda x: x @ x)

        def operand(dtype):
            return jax.random.normal(jax.random.key(0), (n, n)).astype(dtype)

        def run(a):
            mm(a).block_until_ready()
    else:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"

        def operand(dtype):
            return torch.randn(n, n, device=device).to(getattr(torch, dtype))

        def run(a):
            (a @ a).sum().item()
    out = {}
    for dtype in ("float32", "bfloat16"):
        a = operand(dtype)
        run(a)
        reps, start = 0, time.perf_counter()
        while time.perf_counter() - start < 3.0:
            run(a)
            reps += 1
        out[dtype] = 2 * n ** 3 * reps / (time.perf_counter() - start) / 1e9
    return out


WORKERS = {"plain": worker_plain, "expkit": worker_expkit, "matmul": worker_matmul}


# --- the driver ---------------------------------------------------------------------------------------


def spawn(kind: str, backend: str, env: dict | None = None, **options) -> dict:
    """One worker in a fresh interpreter whose Keras runs on `backend` (set before Keras is imported)."""
    cmd = [sys.executable, __file__, "--worker", kind]
    for key, value in options.items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "KERAS_BACKEND": backend, **(env or {})})
    if proc.returncode != 0:
        sys.exit(f"{kind} worker failed ({' '.join(cmd)}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def prepare_data(model: str, dataset: str, limit: int | None, seed: int, folder: Path) -> Path:
    """expkit's arrays for configs/<model>.yaml, saved for both sides to read."""
    import numpy as np

    from expkit.config import load_config
    from expkit.data import load_dataset

    overrides = [f"data.dataset={dataset}", f"seed={seed}"] + ([f"data.limit={limit}"] if limit else [])
    cfg = load_config(ROOT / "configs" / f"{model}.yaml", overrides)
    ds = load_dataset(cfg.data, cfg.seed, cfg.train.loss)
    path = folder / f"{model}.npz"
    np.savez(path, x_train=ds.x_train, y_train=ds.y_train, x_val=ds.x_val, y_val=ds.y_val)
    return path


def pick_dataset(requested: str) -> str:
    if requested != "auto":
        return requested
    from expkit.config import DataConfig
    from expkit.data import load_dataset
    from expkit.errors import ConfigError

    os.environ.setdefault("EXPKIT_OFFLINE", "1")
    try:
        load_dataset(DataConfig(dataset="fashion_mnist", limit=10, test_limit=10), 0, "categorical_crossentropy")
        return "fashion_mnist"
    except ConfigError:
        return "fashion_mnist_sample"


def sps(run: dict, epochs: int) -> float:
    return run["n_train"] * epochs / run["fit_seconds"]


def median(values) -> float:
    return statistics.median(values)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="baseline,cnn1,cnn2")
    parser.add_argument("--backends", default="jax,tensorflow",
                        help="comma-separated Keras backends; each gets its own plain-vs-expkit table, and expkit on "
                        "the first is compared with expkit on the others (default: jax,tensorflow)")
    parser.add_argument("--epochs", default="", help="per model, e.g. baseline=5,cnn1=2 (defaults: %s)" % DEFAULT_EPOCHS)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dataset", default="auto", help="fashion_mnist, fashion_mnist_sample or auto (full set if installed)")
    parser.add_argument("--limit", type=int, default=None, help="first N training examples")
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--precision", default="mixed_bfloat16", help="comma-separated mixed policies to add; '' for none")
    parser.add_argument("--expkit-set", default="", help="overrides for the expkit side, ';'-separated, e.g. "
                        "'train.steps_per_execution=1' (printed with the results)")
    # worker-only options
    parser.add_argument("--worker", choices=sorted(WORKERS))
    parser.add_argument("--model")
    parser.add_argument("--data")
    parser.add_argument("--epochs-n", dest="epochs_n", type=int)
    args = parser.parse_args(argv)

    if args.worker:
        if args.worker != "matmul":
            args.epochs = args.epochs_n
            args.precision = args.precision or "float32"
        print(json.dumps(WORKERS[args.worker](args)))
        return 0

    models = [m for m in args.models.split(",") if m]
    backends = [b for b in args.backends.split(",") if b]
    epochs = {**DEFAULT_EPOCHS, **{k: int(v) for k, v in (p.split("=") for p in args.epochs.split(",") if p)}}
    precisions = [p for p in args.precision.split(",") if p]
    dataset = pick_dataset(args.dataset)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, {cpu_model()}; Python {platform.python_version()}")
    rates = {}
    for backend in backends:
        rates[backend] = spawn("matmul", backend)
        print(f"{backend} matmul 2048x2048: fp32 {rates[backend]['float32']:.1f} GFLOP/s, "
              f"bf16 {rates[backend]['bfloat16']:.1f} GFLOP/s")
    if args.expkit_set:
        print(f"expkit side with: {args.expkit_set}")
    print(f"data: {dataset}{f' (first {args.limit})' if args.limit else ''}; seed {args.seed}; "
          f"{args.repeats} alternating repeats per side\n")

    # results[model][backend][side] -> runs
    results: dict[str, dict[str, dict[str, list[dict]]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        # expkit's JAX compilation cache starts empty here: each model's first expkit run per backend and
        # precision compiles from scratch (cold), the later ones load the programs (warm), as a rerun would
        cache = {"EXPKIT_COMPILE_CACHE": str(Path(tmp) / "xla")}
        for model in models:
            data = prepare_data(model, dataset, args.limit, args.seed, Path(tmp))
            results[model] = {b: {"plain": [], "expkit": [], **{p: [] for p in precisions}} for b in backends}
            for r in range(args.repeats):
                for backend in backends:
                    order = ["plain", "expkit"] if r % 2 == 0 else ["expkit", "plain"]
                    for side in order + precisions:
                        kind = "plain" if side == "plain" else "expkit"
                        precision = side if side in precisions else "float32"
                        extra = {"expkit_set": args.expkit_set} if kind == "expkit" and args.expkit_set else {}
                        run = spawn(kind, backend, env=cache, model=model, data=data, epochs_n=epochs[model],
                                    seed=args.seed, precision=precision, **extra)
                        run["cache"] = ("warm" if results[model][backend][side] else "cold") if kind == "expkit" else ""
                        results[model][backend][side].append(run)
                        print(f"  {model:8} {backend:10} {side:15} repeat {r + 1}: {sps(run, epochs[model]):9.0f} "
                              f"samples/s, fit {run['fit_seconds']:7.1f} s, best val acc {run['best_val_accuracy']:.4f}, "
                              f"epochs {' '.join(f'{t:.1f}' for t in run['epoch_seconds'])} s"
                              + (f" (compile cache {run['cache']})" if run["cache"] and backend == "jax" else ""), flush=True)

    devices = sorted({r["device"] for m in results.values() for b in m.values() for r in b["expkit"]})
    print(f"\ndevice: {', '.join(devices)}")
    for backend in backends:
        print(f"\nexpkit against plain Keras, both on {backend}:\n")
        print("| model | backend | epochs | train examples | plain samples/s | expkit samples/s | expkit/plain "
              "| expkit/plain, first run | plain fit s | expkit fit s | plain best val acc | expkit best val acc "
              "| steps/execution |")
        print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for model in models:
            e, p, x = epochs[model], results[model][backend]["plain"], results[model][backend]["expkit"]
            ps, xs = median(sps(r, e) for r in p), median(sps(r, e) for r in x)
            print(f"| {model} | {backend} | {e} | {p[0]['n_train']} | {ps:.0f} | {xs:.0f} | **{xs / ps:.2f}** "
                  f"| {sps(x[0], e) / ps:.2f} "
                  f"| {median(r['fit_seconds'] for r in p):.1f} | {median(r['fit_seconds'] for r in x):.1f} "
                  f"| {median(r['best_val_accuracy'] for r in p):.4f} | {median(r['best_val_accuracy'] for r in x):.4f} "
                  f"| {x[0]['steps_per_execution']} |")

    first = backends[0]
    for other in backends[1:]:
        print(f"\nexpkit on {first} against expkit on {other} (and the plain scripts likewise):\n")
        print(f"| model | expkit {first} samples/s | expkit {other} samples/s | {first}/{other} (expkit) "
              f"| {first}/{other} (plain) | expkit {first} best val acc | expkit {other} best val acc |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for model in models:
            e, a, b = epochs[model], results[model][first], results[model][other]
            xa, xb = median(sps(r, e) for r in a["expkit"]), median(sps(r, e) for r in b["expkit"])
            pa, pb = median(sps(r, e) for r in a["plain"]), median(sps(r, e) for r in b["plain"])
            print(f"| {model} | {xa:.0f} | {xb:.0f} | **{xa / xb:.2f}** | {pa / pb:.2f} "
                  f"| {median(r['best_val_accuracy'] for r in a['expkit']):.4f} "
                  f"| {median(r['best_val_accuracy'] for r in b['expkit']):.4f} |")

    if precisions:
        print("\n| model | backend | precision | expkit samples/s | speed-up vs float32 | best val acc | change vs float32 |")
        print("| --- | --- | --- | ---: | ---: | ---: | ---: |")
        for model in models:
            e = epochs[model]
            for backend in backends:
                sides = results[model][backend]
                base_s = median(sps(r, e) for r in sides["expkit"])
                base_a = median(r["best_val_accuracy"] for r in sides["expkit"])
                for precision in precisions:
                    runs = sides[precision]
                    s, a = median(sps(r, e) for r in runs), median(r["best_val_accuracy"] for r in runs)
                    print(f"| {model} | {backend} | {precision} | {s:.0f} | {s / base_s:.2f} | {a:.4f} | {a - base_a:+.4f} |")

    print("\n| model | forward MFLOP/example | backend | run | achieved GFLOP/s (training, 6 x MACs) "
          "| share of the fp32 matmul rate | share of the same dtype's matmul rate |")
    print("| --- | ---: | --- | --- | ---: | ---: | ---: |")
    for model in models:
        e = epochs[model]
        for backend in backends:
            sides = results[model][backend]
            macs = sides["expkit"][0]["macs_per_sample"]
            for side in ["plain", "expkit", *precisions]:
                rate = median(sps(r, e) for r in sides[side]) * 6 * macs / 1e9
                policy = "float32" if side in ("plain", "expkit") else side
                peak = rates[backend]["bfloat16"] if "bfloat16" in policy else rates[backend]["float32"]
                print(f"| {model} | {2 * macs / 1e6:.1f} | {backend} | {side} ({policy}) | {rate:.1f} "
                      f"| {rate / rates[backend]['float32']:.0%} | {rate / peak:.0%} |")
    return 0


def cpu_model() -> str:
    from expkit.backend import cpu_model_name

    return cpu_model_name()


if __name__ == "__main__":
    sys.exit(main())
