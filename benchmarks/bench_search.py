"""Pruning lanes of a vectorised program: a 27-trial grid with successive halving against the same grid
without pruning, both vectorised (one JAX program), same configs, data and seeds.

    python benchmarks/bench_search.py                 # full Fashion-MNIST when installed, else the sample
    python benchmarks/bench_search.py --limit 6000    # the first 6000 training examples (a quick look)

The model is configs/sweep_dropout.yaml's (seed 001's 400-200 ReLU MLP with dropout after each hidden
layer), 9 epochs; the grid is 3 Adam learning rates x 3 L2 factors (both hidden layers) x 3 dropout rates
(both dropout layers). Pruned: `sweep.prune: {type: successive_halving, min_epochs: 1,
reduction_factor: 3}`: after epoch 1 the best third of the lanes go on, after epoch 3 the best third of
those. Each side is one `expkit run` in a fresh process and runs folder. Printed: the lane-epochs each
side trained (the epochs of every trial summed), the wall time of each command, and the best
best_val_accuracy each found; then the ratios pruned / unpruned.
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

RATES = [0.003, 0.001, 0.0003]
L2 = [0.0001, 0.00001, 0.000001]
DROPOUT = [0.2, 0.4, 0.6]


def grid_config(dataset: str, limit: int | None, pruned: bool, folder: Path) -> Path:
    pairs = [(l2, d) for l2 in L2 for d in DROPOUT]
    raw = {"name": "pruned" if pruned else "unpruned", "data": {"dataset": dataset, "limit": limit},
           "train": {"epochs": 9},
           "sweep": {"zip": {"model.layers.0.dense.l2": [p[0] for p in pairs],
                             "model.layers.2.dense.l2": [p[0] for p in pairs],
                             "model.layers.1.dropout": [p[1] for p in pairs],
                             "model.layers.3.dropout": [p[1] for p in pairs]},
                     "grid": {"train.learning_rate": RATES}, "vectorize": True}}
    # sweep_dropout.yaml's own zip is replaced: extends merges mappings, so the file is written whole
    base = yaml.safe_load((ROOT / "configs" / "sweep_dropout.yaml").read_text())
    base["sweep"] = raw["sweep"]
    base.update(name=raw["name"], data={**base["data"], **raw["data"]}, train={**base["train"], **raw["train"]})
    for i in (0, 2):
        base["model"]["layers"][i]["dense"]["l2"] = 0.0
    if pruned:
        base["sweep"]["prune"] = {"type": "successive_halving", "metric": "val_accuracy", "min_epochs": 1,
                                  "reduction_factor": 3}
    path = folder / f"{raw['name']}.yaml"
    path.write_text(yaml.safe_dump(base, sort_keys=False))
    return path


def run_side(path: Path, runs: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "expkit.cli", "run", str(path), "--runs-dir", str(runs)], env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{path.name}: exit {done.returncode}\n{done.stderr[-3000:]}")
    sweep_dir = runs / yaml.safe_load(path.read_text())["name"]
    records = [json.loads((d / "results.json").read_text()) for d in sweep_dir.iterdir()
               if (d / "results.json").is_file()]
    best = max(records, key=lambda r: r["best"]["val_accuracy"] if r["status"] == "done" else -1)
    sizes = next((r["vectorized"].get("sizes") for r in records if r.get("vectorized")), None)
    return {"wall": wall, "lane_epochs": sum(r["epochs_run"] for r in records), "trials": len(records),
            "best": best["best"]["val_accuracy"], "best_values": best["trial"]["values"],
            "statuses": {s: sum(r["status"] == s for r in records) for s in {r["status"] for r in records}},
            "sizes": sizes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=None, help="the first N training examples (default: all)")
    parser.add_argument("--dataset", default=None, help="default: fashion_mnist when installed, else the sample")
    args = parser.parse_args()
    from expkit.data.builtin import SYSTEM_DATA_DIRS

    full = any((d / "fashion-mnist").is_dir() for d in SYSTEM_DATA_DIRS) or os.environ.get("EXPKIT_DATA")
    dataset = args.dataset or ("fashion_mnist" if full else "fashion_mnist_sample")
    print(f"bench_search: {platform.node()}, {os.cpu_count()} cores, {dataset}"
          + (f", first {args.limit} examples" if args.limit else "") + "; 27 trials, 9 epochs, one JAX program each")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        sides = {}
        for pruned in (False, True):
            name = "pruned" if pruned else "unpruned"
            sides[name] = run_side(grid_config(dataset, args.limit, pruned, folder), folder / "runs")
            s = sides[name]
            print(f"{name:9}: {s['lane_epochs']:4d} lane-epochs of {s['trials']} trials, {s['wall']:7.1f} s wall, "
                  f"best val_accuracy {s['best']:.4f} ({s['best_values']}), {s['statuses']}"
                  + (f", program sizes {s['sizes']}" if s["sizes"] else ""))
    u, p = sides["unpruned"], sides["pruned"]
    print(f"pruned / unpruned: lane-epochs {p['lane_epochs'] / u['lane_epochs']:.2f}, wall time {p['wall'] / u['wall']:.2f}, "
          f"best val_accuracy {p['best'] - u['best']:+.4f}")


if __name__ == "__main__":
    main()
