"""A vectorised sweep against the same sweep one trial at a time: same configs, same data, same seeds.

    python benchmarks/bench_sweep.py                            # both studies; full Fashion-MNIST if installed
    python benchmarks/bench_sweep.py --studies lr --sequential tensorflow

Studies:
  lr    configs/sweep_lr.yaml: seed 000's dense baseline at its ten learning rates, 5 epochs.
  cnn2_lr  configs/cnn2.yaml at sweep_lr.yaml's ten learning rates, 2 epochs, first --cnn2-limit examples
        (the GPU check's second study; XLA's CPU convolutions make it slow here).
  cnn2  configs/cnn2_dropout.yaml with the rate of all five dropout layers swept (0.1, 0.2, 0.3) x seeds
        14, 15, 16, 2 epochs, on the first --cnn2-limit training examples (CNN2 is compute-bound here).

The lr study also runs the peer a user would otherwise pick (--peer): KerasTuner's GridSearch of the same
rates, benchmarks/peer_kerastuner.py, on TensorFlow and on JAX.

Every side is one `expkit run` of the sweep, in a fresh process and runs folder: one trial at a time
(`sweep.vectorize: false`) on each backend of --sequential (TensorFlow is the sweep's own; on JAX the
trials compute what the vectorised ones do), then the vectorised sweep (`sweep.vectorize: true`, one JAX
program). Printed per side: the wall time of the whole command, the training time (one at a time: the
trials' fit seconds summed, each with its own compilation; vectorised: the group's fit seconds plus its
compilation), and per trial the best validation accuracy on every side.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

DROPOUT_LAYERS = (2, 4, 6, 8, 11)  # configs/cnn2_dropout.yaml's dropout layers


def study_config(study: str, dataset: str, cnn2_limit: int, folder: Path) -> tuple[Path, str]:
    """The sweep file of a study, and a line that says what it is."""
    if study == "lr":
        raw = {"extends": str(ROOT / "configs" / "sweep_lr.yaml"), "name": "bench_lr", "data": {"dataset": dataset}}
        what = "dense baseline, 10 learning rates, 5 epochs"
    elif study == "cnn2_lr":
        raw = {"extends": str(ROOT / "configs" / "cnn2.yaml"), "name": "bench_cnn2_lr",
               "data": {"dataset": dataset, "limit": cnn2_limit or None}, "train": {"epochs": 2},
               "sweep": yaml.safe_load((ROOT / "configs" / "sweep_lr.yaml").read_text())["sweep"]}
        what = f"CNN2 at sweep_lr.yaml's ten learning rates, 2 epochs, {f'first {cnn2_limit}' if cnn2_limit else 'all'} training examples"
    else:
        rates = [0.1, 0.2, 0.3]
        raw = {"extends": str(ROOT / "configs" / "cnn2_dropout.yaml"), "name": "bench_cnn2",
               "data": {"dataset": dataset, "limit": cnn2_limit or None}, "train": {"epochs": 2},
               "sweep": {"zip": {f"model.layers.{i}.dropout": rates for i in DROPOUT_LAYERS}, "seeds": [14, 15, 16]}}
        what = f"CNN2 with dropout 0.1/0.2/0.3 x seeds 14/15/16, 2 epochs, {f'first {cnn2_limit}' if cnn2_limit else 'all'} training examples"
    path = folder / f"{raw['name']}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path, what


def short_label(values: dict) -> str:
    """`learning_rate=0.1`; the five dropout layers' one rate once: `dropout=0.2`."""
    parts = [f"{key.rsplit('.', 1)[-1]}={value}" for key, value in values.items()]
    return ", ".join(dict.fromkeys(parts))


def run_side(path: Path, runs: Path, *, vectorize: bool, backend: str | None) -> dict:
    """One `expkit run` of the sweep; its wall time and every trial's record."""
    cmd = [sys.executable, "-m", "expkit.cli", "run", str(path), "--runs-dir", str(runs),
           "--set", f"sweep.vectorize={'true' if vectorize else 'false'}"]
    if backend:
        cmd += ["--backend", backend]
    # each side starts with an empty JAX compilation cache: its first trial compiles, as on a first run
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "TF_CPP_MIN_LOG_LEVEL": "3",
           "EXPKIT_COMPILE_CACHE": str(runs / "xla")}
    started = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    sweep_dir = Path(done.stdout.strip().splitlines()[-1])
    trials = {}
    for entry in json.loads((sweep_dir / "manifest.json").read_text())["trials"]:
        record = json.loads((sweep_dir / entry["id"] / "results.json").read_text())
        trials[(short_label(entry["values"]), entry["seed"])] = record
    training = sum(r["fit_seconds"] for r in trials.values())
    if vectorize:  # a program's trials share its time, and its lanes (processes) run side by side
        programs: dict = {}
        for r in trials.values():
            v, key = r["vectorized"], (r["vectorized"]["group"], r["vectorized"]["chunk"])
            programs[key] = max(programs.get(key, 0.0), r["fit_seconds"] + v["compile_seconds"])
        training = sum(programs.values())
    return {"wall": wall, "training": training, "trials": trials}


def run_peer(dataset: str, backend: str, folder: Path) -> dict:
    """KerasTuner's GridSearch of the lr study (benchmarks/peer_kerastuner.py) in a fresh process."""
    out = folder / f"kerastuner-{backend}.json"
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT / "src")}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "peer_kerastuner.py"), "--dataset", dataset,
                           "--out", str(out)], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"peer_kerastuner.py on {backend} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return {**json.loads(out.read_text()), "wall": wall}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", default="lr,cnn2", help="lr, cnn2, cnn2_lr (comma-separated)")
    parser.add_argument("--sequential", default="tensorflow,jax", help="backends of the one-at-a-time sides")
    parser.add_argument("--dataset", default="auto", help="fashion_mnist, fashion_mnist_sample or auto (full set if installed)")
    parser.add_argument("--cnn2-limit", type=int, default=1000, help="cnn2 studies: first N training examples (0: all)")
    parser.add_argument("--peer", default="tensorflow,jax",
                        help="lr study: KerasTuner's GridSearch of the same rates on these backends (empty: none)")
    args = parser.parse_args(argv)
    dataset = args.dataset
    if dataset == "auto":
        from expkit.data.builtin import SYSTEM_DATA_DIRS

        full = any((d / "fashion-mnist").is_dir() for d in SYSTEM_DATA_DIRS) or os.environ.get("EXPKIT_DATA")
        dataset = "fashion_mnist" if full else "fashion_mnist_sample"
    print(f"# bench_sweep: {platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"dataset {dataset}, {time.strftime('%Y-%m-%d %H:%M')}")
    backends = [b for b in args.sequential.split(",") if b]
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        for study in [s for s in args.studies.split(",") if s]:
            path, what = study_config(study, dataset, args.cnn2_limit, Path(tmp))
            print(f"\n## {study}: {what}\n")
            sides = {}
            for backend in backends:
                sides[f"one at a time ({backend})"] = run_side(path, Path(tmp) / f"{study}-{backend}", vectorize=False,
                                                               backend=backend)
            sides["vectorised (jax)"] = vec = run_side(path, Path(tmp) / f"{study}-vec", vectorize=True, backend=None)
            print("| side | wall s | training s | wall / vectorised | training / vectorised |")
            print("| --- | ---: | ---: | ---: | ---: |")
            for name, side in sides.items():
                print(f"| {name} | {side['wall']:.1f} | {side['training']:.1f} | {side['wall'] / vec['wall']:.2f} | "
                      f"{side['training'] / vec['training']:.2f} |")
            print()
            names = list(sides)
            print("| trial | seed | " + " | ".join(f"best val acc, {n}" for n in names)
                  + " | " + " | ".join(f"vectorised - {b}" for b in backends) + " |")
            print("| --- | ---: |" + " ---: |" * (len(names) + len(backends)))
            for key, record in vec["trials"].items():
                accs = [sides[n]["trials"][key]["best"]["val_accuracy"] for n in names]
                diffs = [accs[-1] - accs[i] for i in range(len(backends))]
                print(f"| {key[0]} | {key[1]} | " + " | ".join(f"{a:.4f}" for a in accs) + " | "
                      + " | ".join(f"{d:+.4f}" for d in diffs) + " |")
            worst = {b: max(abs(vec["trials"][k]["best"]["val_accuracy"] - sides[f"one at a time ({b})"]["trials"][k]["best"]["val_accuracy"])
                            for k in vec["trials"] if vec["trials"][k]["status"] == "done") for b in backends}
            print("\nlargest |best val acc difference| over the trials that finished: "
                  + ", ".join(f"vectorised vs {b} {w:.4f}" for b, w in worst.items()))
            peers = [b for b in args.peer.split(",") if b] if study == "lr" else []
            if peers:
                print("\nThe peer: KerasTuner GridSearch over the same ten rates (same model, data, split, batch, "
                      "epochs; Keras' defaults otherwise), each in a fresh process\n")
                print("| side | process wall s | search s | its wall / expkit vectorised wall |")
                print("| --- | ---: | ---: | ---: |")
                print(f"| expkit, vectorised (whole command) | {vec['wall']:.1f} | | 1.00 |")
                for backend in peers:
                    peer = run_peer(dataset, backend, Path(tmp))
                    print(f"| KerasTuner {peer['keras_tuner']} GridSearch ({backend}) | {peer['wall']:.1f} | "
                          f"{peer['search_seconds']:.1f} | {peer['wall'] / vec['wall']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
