"""`make sweep-lr` one trial at a time, two at a time (`--jobs 2`) and through a local Ray instance.

    python benchmarks/bench_parallel.py                          # the shipped Fashion-MNIST sample
    python benchmarks/bench_parallel.py --data fashion_mnist --repeats 3
    python benchmarks/bench_parallel.py --gpus-per-trial 0.25    # GPU packing (needs a GPU): 8 CNN2 trials

Each way runs the whole `expkit run configs/sweep_lr.yaml` command in its own process, into its own
fresh runs folder, and is timed from start to exit (start-up, the checks, every trial, the tables and
plots: what a user waits for). With --repeats the ways alternate (1, 2, ray, then ray, 2, 1, ...) so
that drift in a shared machine's speed falls on all of them; medians are reported. Every results.csv
is compared with the first `--jobs 1` one, without its timing and path columns (fit_seconds,
fit_seconds_std, path): they must be identical. sweep.vectorize is off, so each trial trains on its
own (vectorising is measured elsewhere). Before and after, the cores the machine gives two busy
processes right now are measured (a pure-Python loop alone, then two at once): on a shared machine
that, not the core count, bounds what two jobs can gain.

Ray runs on a local instance this script starts on 127.0.0.1 with one CPU per core of this machine
(`--executor ray --address 127.0.0.1:PORT`); each trial reserves one CPU (sweep.resources.cpus).

--gpus-per-trial F: eight CNN2 trials (configs/cnn2.yaml, eight learning rates) on Ray, first with a
whole GPU each (one at a time), then with F of a GPU each (1/F at a time on one GPU, memory capped to
the share): the time of each and the ratio.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # before Ray is imported
TIMING = ["fit_seconds", "fit_seconds_std", "path"]
RAY_INIT_SECONDS = 120


def expkit(*args) -> list[str]:
    return [sys.executable, "-m", "expkit.cli", *map(str, args)]


def timed_run(cmd: list[str], env: dict, timeout: float) -> float:
    start = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    seconds = time.perf_counter() - start
    if out.returncode != 0:
        sys.exit(f"failed ({out.returncode}): {' '.join(cmd)}\n{out.stderr[-4000:]}")
    return seconds


def table(sweep_dir: Path):
    import pandas as pd

    return pd.read_csv(sweep_dir / "results.csv").drop(columns=TIMING)


def fit_seconds(sweep_dir: Path) -> list[float]:
    import json

    manifest = json.loads((sweep_dir / "manifest.json").read_text())
    return [json.loads((sweep_dir / t["id"] / "results.json").read_text())["fit_seconds"] for t in manifest["trials"]]


def start_ray(cpus: int, gpus: float | None = None) -> str:
    """A Ray instance on 127.0.0.1 in this process (bounded in time); its address."""
    import ray

    def too_slow(signum, frame):
        raise TimeoutError(f"Ray did not start within {RAY_INIT_SECONDS} s")

    signal.signal(signal.SIGALRM, too_slow)
    signal.alarm(RAY_INIT_SECONDS)
    try:
        options = {"num_gpus": gpus} if gpus is not None else {}
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
                 log_to_driver=False, logging_level="ERROR", **options)
    finally:
        signal.alarm(0)
    return ray.get_runtime_context().gcs_address


BUSY = "import time; t = time.perf_counter(); n = 0\nwhile n < 30_000_000: n += 1\nprint(time.perf_counter() - t)"


def free_cores(n: int = 2) -> float:
    """How many cores this machine gives to n CPU-bound processes right now: n x (one process's time
    alone) / (their time side by side). 2.0 on an idle 2-core machine; less when others use it."""
    alone = float(subprocess.run([sys.executable, "-c", BUSY], capture_output=True, text=True).stdout)
    procs = [subprocess.Popen([sys.executable, "-c", BUSY], stdout=subprocess.PIPE, text=True) for _ in range(n)]
    together = max(float(p.communicate()[0]) for p in procs)
    return n * alone / together


def vectorize_off() -> list[str]:
    from expkit.config import SweepConfig

    return ["--set", "sweep.vectorize=false"] if "vectorize" in SweepConfig.model_fields else []


def bench_lr(args) -> None:
    import pandas as pd

    cores = len(os.sched_getaffinity(0))
    address = start_ray(cores)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}  # with the RAY_AUTH_MODE ray.init set
    base = [*expkit("run", ROOT / "configs" / "sweep_lr.yaml", "--set", f"data.dataset={args.data}"), *vectorize_off()]
    ways = {"jobs 1": ["--jobs", "1"], "jobs 2": ["--jobs", "2"],
            "ray": ["--executor", "ray", "--address", address]}
    seconds: dict[str, list[float]] = {w: [] for w in ways}
    fits: dict[str, list[float]] = {w: [] for w in ways}
    tables, identical = {}, {}
    work = Path(tempfile.mkdtemp(prefix="bench-parallel-"))
    print(f"machine: {cores} cores, {platform.processor() or platform.machine()}, Python {platform.python_version()}; "
          f"load average at start {os.getloadavg()[0]:.2f}, cores free for 2 busy processes {free_cores():.2f}; "
          f"data {args.data}; Ray at {address}", flush=True)
    order = list(ways)
    for repeat in range(args.repeats):
        for way in (order if repeat % 2 == 0 else order[::-1]):
            runs = work / f"{way.replace(' ', '')}-{repeat}"
            s = timed_run(base + ["--runs-dir", runs] + ways[way], env, args.timeout)
            seconds[way].append(s)
            fits[way].append(sum(fit_seconds(runs / "sweep_lr")))
            this = table(runs / "sweep_lr")
            tables.setdefault(way, this)
            same = this.equals(tables.get("jobs 1", this))
            identical[way] = identical.get(way, True) and same
            print(f"  repeat {repeat + 1} {way:7s}: {s:6.1f} s wall, {fits[way][-1]:6.1f} s of fit in the trials; "
                  f"results.csv {'identical' if same else 'DIFFERENT'}", flush=True)
    import ray

    ray.shutdown()
    reference = tables["jobs 1"]
    print(f"\nconfigs/sweep_lr.yaml, 10 trials, data {args.data}, {args.repeats} repeat(s), medians; "
          f"load average at end {os.getloadavg()[0]:.2f}, cores free for 2 busy processes {free_cores():.2f}")
    print("| way | wall s | speed vs --jobs 1 | sum of trials' fit s | results.csv vs --jobs 1 |")
    print("| --- | ---: | ---: | ---: | --- |")
    one = statistics.median(seconds["jobs 1"])
    for way in ways:
        wall = statistics.median(seconds[way])
        same = "identical" if identical[way] else "DIFFERENT"
        print(f"| {way} | {wall:.1f} | {one / wall:.2f}x | {statistics.median(fits[way]):.1f} | {same} |")
    for way in ways:
        if not tables[way].equals(reference):
            print(f"\n{way} differs from jobs 1:")
            print(pd.concat({"jobs 1": reference, way: tables[way]}, axis=1).to_string())


def bench_gpu_packing(args) -> None:
    """Eight CNN2 trials on one GPU: a whole GPU each (one at a time) against `gpus_per_trial` each."""
    import yaml

    work = Path(tempfile.mkdtemp(prefix="bench-gpu-packing-"))
    sweep = work / "cnn2_pack.yaml"
    sweep.write_text(yaml.safe_dump({
        "name": "cnn2_pack", "extends": str(ROOT / "configs" / "cnn2.yaml"),
        "data": {"dataset": args.data}, "train": {"epochs": args.gpu_epochs},
        "sweep": {"grid": {"train.learning_rate": [0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001, 0.0005]}}}))
    address = start_ray(os.cpu_count() or 1, gpus=None)  # Ray counts the GPUs itself
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    results = {}
    for label, share in (("1 GPU per trial", 1), (f"{args.gpus_per_trial:g} GPU per trial", args.gpus_per_trial)):
        runs = work / f"gpus-{share}"
        cmd = [*expkit("run", sweep, "--runs-dir", runs, "--executor", "ray", "--address", address, "--device", "gpu",
                       "--set", f"sweep.resources.gpus={share}"), *vectorize_off()]
        results[label] = timed_run(cmd, env, args.timeout)
        print(f"  {label}: {results[label]:.1f} s wall", flush=True)
    import ray

    ray.shutdown()
    (one, packed) = results.values()
    print(f"\n8 CNN2 trials, {args.gpu_epochs} epochs each, data {args.data}: one at a time {one:.1f} s, "
          f"{1 / args.gpus_per_trial:g} per GPU {packed:.1f} s: {one / packed:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="fashion_mnist_sample", help="data.dataset (default: the shipped sample)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=3600, help="seconds allowed to each sweep")
    parser.add_argument("--gpus-per-trial", type=float, metavar="F",
                        help="instead: GPU packing, 8 CNN2 trials at F of a GPU each against a whole GPU each")
    parser.add_argument("--gpu-epochs", type=int, default=2, help="with --gpus-per-trial: epochs per trial")
    args = parser.parse_args()
    if args.gpus_per_trial is not None:
        bench_gpu_packing(args)
    else:
        bench_lr(args)


if __name__ == "__main__":
    main()
