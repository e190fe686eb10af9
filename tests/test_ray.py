"""Sweeps on Ray (`--executor ray`): a local Ray instance on 127.0.0.1, started here, real tasks.

Skipped when Ray is not installed (`pip install 'expkit[ray]'`). Every wait is bounded.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # before Ray is imported
ray = pytest.importorskip("ray")

from expkit.config import validate  # noqa: E402
from expkit.errors import ConfigError  # noqa: E402
from expkit.sweeps.driver import run_sweep  # noqa: E402
from expkit.sweeps.trials import expand_sweep  # noqa: E402
from procs import alive, children  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO / "src")}
TIMING = ["fit_seconds", "fit_seconds_std", "path"]
INIT_SECONDS = 120
SWEEP_SECONDS = 600


def cli(*args):
    return [sys.executable, "-m", "expkit.cli", *map(str, args)]


@pytest.fixture(scope="module")
def local_ray():
    """A Ray instance on 127.0.0.1 with 2 CPUs and one declared (fake) GPU, for this module.

    Started from the main thread: Ray's own processes die with the thread that started them."""

    def too_slow(signum, frame):
        raise TimeoutError(f"a local Ray instance did not start within {INIT_SECONDS} s")

    previous = signal.signal(signal.SIGALRM, too_slow)
    signal.alarm(INIT_SECONDS)
    try:
        ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, _node_ip_address="127.0.0.1",
                 log_to_driver=False, logging_level="ERROR")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    address = ray.get_runtime_context().gcs_address
    assert address.startswith("127.0.0.1:")
    yield address
    ray.shutdown()


def sweep_cfg(tiny_config, name="rs", epochs=2, n_train=120, seeds=(0, 1), **sweep):
    data = {**tiny_config["data"], "options": {**tiny_config["data"]["options"], "n_train": n_train}}
    return {**tiny_config, "name": name, "data": data, "train": {**tiny_config["train"], "epochs": epochs},
            "sweep": {"grid": {"train.learning_rate": [0.1, 0.01]}, "seeds": list(seeds), **sweep}}


def table(sweep_dir):
    return pd.read_csv(sweep_dir / "results.csv").drop(columns=TIMING)


def sweep_in_thread(cfg, runs_dir, **options):
    """run_sweep in a thread (this process is the Ray driver); returns (thread, result holder)."""
    result = {}

    def target():
        try:
            log = options.pop("log", None) or open(os.devnull, "w")
            result["value"] = run_sweep(cfg, runs_dir=runs_dir, log=log, **options)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            result["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, result


def finish(thread, result):
    thread.join(SWEEP_SECONDS)
    assert not thread.is_alive(), f"the sweep did not end within {SWEEP_SECONDS} s"
    if "error" in result:
        raise result["error"]
    return result["value"]


def records(sweep_dir, trials):
    return [json.loads((sweep_dir / t.id / "results.json").read_text()) for t in trials]


def test_a_ray_sweep_equals_one_job(local_ray, tmp_path, tiny_config, write_yaml):
    """Four trials as Ray tasks on the local instance: the same table as `--jobs 1`."""
    cfg = validate(sweep_cfg(tiny_config))
    sweep_dir, counts = finish(*sweep_in_thread(cfg, tmp_path / "ray", executor="ray"))
    assert counts == {"done": 4}
    trials = expand_sweep(cfg)
    assert {r["pid"] for r in records(sweep_dir, trials)}.isdisjoint({os.getpid()})  # trained in Ray's workers
    assert {r["backend"] for r in records(sweep_dir, trials)} == {"tensorflow"}  # the config's, one trial a task
    path = write_yaml("rs.yaml", sweep_cfg(tiny_config))
    alone = subprocess.run(cli("run", path, "--runs-dir", tmp_path / "alone", "--jobs", "1"), env=ENV,
                           capture_output=True, text=True, timeout=SWEEP_SECONDS)
    assert alone.returncode == 0, alone.stderr[-3000:]
    pd.testing.assert_frame_equal(table(sweep_dir), table(tmp_path / "alone" / "rs"))


needs_jax = pytest.mark.skipif(__import__("importlib").util.find_spec("jax") is None, reason="jax is not installed")


@needs_jax
def test_a_vectorised_group_trains_as_one_ray_task_like_the_local_group(local_ray, tmp_path, tiny_config):
    """`--executor ray` with `sweep.vectorize: true`: the four trials train as one JAX program in one Ray
    task (one worker process, none of them here) and each trial's best val accuracy equals the same
    group trained by the local JAX processes."""
    import io

    cfg = validate(sweep_cfg(tiny_config, name="rv", vectorize=True))
    log = io.StringIO()
    ray_dir, counts = finish(*sweep_in_thread(cfg, tmp_path / "ray", executor="ray", log=log))
    assert counts == {"done": 4}
    assert "train as one JAX program as a Ray task" in log.getvalue()
    trials = expand_sweep(cfg)
    on_ray = records(ray_dir, trials)
    assert len({r["pid"] for r in on_ray}) == 1 and on_ray[0]["pid"] != os.getpid()  # one task, in Ray's worker
    assert all(r["backend"] == "jax" and r["vectorized"]["trials"] == 4 for r in on_ray)
    local_dir, counts = run_sweep(cfg, runs_dir=tmp_path / "local", log=open(os.devnull, "w"))
    assert counts == {"done": 4}
    local = records(local_dir, trials)
    assert all(r["vectorized"]["trials"] == 4 and r["pid"] != os.getpid() for r in local)
    for a, b in zip(on_ray, local):
        assert a["best"]["val_accuracy"] == pytest.approx(b["best"]["val_accuracy"], abs=1e-4)
        assert a["best"]["val_loss"] == pytest.approx(b["best"]["val_loss"], abs=1e-4)


def test_vectorised_groups_at_half_a_gpu_are_each_one_ray_task(local_ray, tmp_path, tiny_config, monkeypatch):
    """Two groups (two widths, each over two learning rates; `auto` splits them by shape) at gpus: 0.5 on
    the instance's one GPU: each group is scheduled as one Ray task holding half the GPU. (Whether the two
    overlap depends on how fast Ray starts its workers on a busy machine, so it is not asserted.)"""
    import io

    from expkit.sweeps.vectorize import grouping

    monkeypatch.setattr(grouping, "MIN_SEQUENTIAL_SECONDS", 0.0)  # group even trials this short
    cfg = sweep_cfg(tiny_config, name="rg", seeds=(0,), vectorize="auto",
                    resources={"cpus": 0.5, "gpus": 0.5})
    cfg["sweep"]["grid"] = {"model.layers.1.dense.units": [8, 16], "train.learning_rate": [0.1, 0.01]}
    cfg = validate(cfg)
    log = io.StringIO()
    sweep_dir, counts = finish(*sweep_in_thread(cfg, tmp_path, executor="ray", log=log))
    assert counts == {"done": 4}
    assert log.getvalue().count("train as one JAX program as a Ray task") == 2
    done = records(sweep_dir, expand_sweep(cfg))
    assert all(r["vectorized"]["trials"] == 2 for r in done)
    groups: dict = {}
    for t, r in zip(expand_sweep(cfg), done):
        groups.setdefault(r["vectorized"]["group"], set()).add(t.config.model.layers[1]["dense"]["units"])
    assert sorted(map(sorted, groups.values())) == [[8], [16]]  # one program per width
    assert os.getpid() not in {r["pid"] for r in done} and {r["backend"] for r in done} == {"jax"}  # in Ray's workers


def _interval(record):
    from datetime import datetime

    return datetime.fromisoformat(record["started"]), datetime.fromisoformat(record["ended"])


def test_half_a_gpu_each_packs_two_trials_onto_one_gpu(local_ray, tmp_path, tiny_config):
    """The instance declares one GPU; at gpus: 0.5 and cpus: 0.5 (CPUs would allow four at once),
    two trials run at the same time and never three."""
    cfg = validate(sweep_cfg(tiny_config, name="gpu", epochs=6, n_train=1500,
                             resources={"cpus": 0.5, "gpus": 0.5}))
    sweep_dir, counts = finish(*sweep_in_thread(cfg, tmp_path, executor="ray"))
    assert counts == {"done": 4}
    spans = [_interval(r) for r in records(sweep_dir, expand_sweep(cfg))]
    print("\n".join(f"{a.time()} - {b.time()}" for a, b in spans))
    overlapping = [(i, j) for i in range(4) for j in range(i + 1, 4)
                   if spans[i][0] < spans[j][1] and spans[j][0] < spans[i][1]]
    assert overlapping, "no two trials ran at the same time"
    # At most two at once: every moment a trial started, at most one other was strictly inside its span.
    for start, _ in spans:
        inside = [s for s in spans if s[0] < start < s[1]]
        assert len(inside) <= 1, f"three trials at once at {start}"


def test_a_worker_killed_mid_trial_is_retried_and_the_trial_recorded_once(local_ray, tmp_path, tiny_config):
    cfg = validate({**sweep_cfg(tiny_config, name="kill", epochs=40, n_train=1000, seeds=(0,)),
                    "train": {**tiny_config["train"], "epochs": 40, "batch_size": 8, "steps_per_execution": 1}})
    trials = expand_sweep(cfg)
    sweep_dir = tmp_path / "kill"
    thread, result = sweep_in_thread(cfg, tmp_path, executor="ray")
    victim, pid = None, None
    deadline = time.time() + 300
    while victim is None and time.time() < deadline and thread.is_alive():
        for t in trials:
            metrics = sweep_dir / t.id / "metrics.csv"
            if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:  # one epoch done
                status = json.loads((sweep_dir / t.id / "status.json").read_text())
                victim, pid = t, status["pid"]
                break
        time.sleep(0.2)
    assert victim is not None, "no trial finished an epoch"
    os.kill(pid, signal.SIGKILL)  # the Ray worker process training it
    sweep_dir, counts = finish(thread, result)
    assert counts == {"done": 2}
    record = json.loads((sweep_dir / victim.id / "results.json").read_text())
    assert record["status"] == "done" and record["pid"] != pid and record["epochs_run"] == 40
    attempts = sweep_dir / ".attempts"
    if record.get("resumed"):  # the retry took the claim over and continued from the epoch checkpoint
        assert not attempts.exists()
    else:  # the retry took the claim over and set the half-written attempt aside
        (kept,) = attempts.iterdir()
        assert kept.name == f"{victim.id}-1"
        assert json.loads((kept / "status.json").read_text())["pid"] == pid
    manifest = json.loads((sweep_dir / "manifest.json").read_text())["trials"]
    assert sorted(t["id"] for t in manifest) == sorted(t.id for t in trials)
    assert len(pd.read_csv(sweep_dir / "results.csv")) == 2
    assert list((sweep_dir / ".claims").iterdir()) == []


def test_two_drivers_on_one_sweep_train_each_trial_once(local_ray, tmp_path, tiny_config, write_yaml):
    """Two `expkit run --executor ray --address` on the same sweep and cluster."""
    path = write_yaml("two.yaml", sweep_cfg(tiny_config, name="two", epochs=4, n_train=600))
    runs = tmp_path / "runs"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}  # with the RAY_AUTH_MODE the instance set up
    procs = [subprocess.Popen(cli("run", path, "--runs-dir", runs, "--executor", "ray", "--address", local_ray),
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=SWEEP_SECONDS) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-3000:] for _, err in outputs]
    sweep_dir = runs / "two"
    trials = json.loads((sweep_dir / "manifest.json").read_text())["trials"]
    assert len(trials) == 4 and all(t["status"] == "done" for t in trials)
    # each driver reports the trials its own tasks trained; a task that found the claim held trained nothing
    trained = [line for _, err in outputs for line in err.splitlines() if "): training on " in line]
    assert sorted(line.split("(")[1][:10] for line in trained) == sorted(t["id"] for t in trials)
    assert not (sweep_dir / ".attempts").exists()  # no trial was started twice
    assert list((sweep_dir / ".claims").iterdir()) == []


def test_a_worker_that_cannot_see_the_runs_dir_says_so(tmp_path, tiny_config):
    from expkit.sweeps.executors.ray import unit_task

    trial = expand_sweep(validate(sweep_cfg(tiny_config)))[0]
    result = unit_task(trial, str(tmp_path / "elsewhere" / "rs"), "auto", 600.0)
    assert "does not exist on the Ray worker" in result["storage_error"]
    assert "storage every node sees" in result["storage_error"]


def test_ray_missing_is_one_line_with_the_install_hint(monkeypatch, tiny_config, tmp_path):
    from expkit.sweeps.executors import ray as ray_executor

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(ConfigError, match=r"expkit\[ray\]"):
        ray_executor.import_ray()


def test_task_env_forwards_expkit_settings_and_the_share(monkeypatch):
    from expkit.sweeps.executors.ray import task_env

    env = task_env("jax", 0.5, 0.25, environ={"EXPKIT_OFFLINE": "1", "HOME": "/root", "XLA_FLAGS": ""})
    assert env["EXPKIT_OFFLINE"] == "1" and "HOME" not in env and env["KERAS_BACKEND"] == "jax"
    from expkit.repro import command_line

    assert env["EXPKIT_COMMAND"] == command_line()  # the driver's command line, for the records
    named = task_env("jax", 1, 0, environ={"EXPKIT_COMMAND": "expkit run a.yaml"})  # main(argv) in-process
    assert named["EXPKIT_COMMAND"] == "expkit run a.yaml"
    assert env["OMP_NUM_THREADS"] == "1" and env["TF_NUM_INTRAOP_THREADS"] == "1"
    assert "intra_op_parallelism_threads=1" in env["XLA_FLAGS"]
    assert float(env["XLA_PYTHON_CLIENT_MEM_FRACTION"]) == pytest.approx(0.25 * 0.9)
    assert "XLA_PYTHON_CLIENT_MEM_FRACTION" not in task_env("tensorflow", 2, 1, environ={})


def test_sigterm_to_a_ray_driver_records_its_trials_interrupted(tmp_path, tiny_config, write_yaml):
    """The driver starts its own Ray instance (127.0.0.1); SIGTERM cancels the tasks, which record
    their trials, and the driver exits 143 leaving no Ray process of its own behind."""
    path = write_yaml("rt.yaml", {**sweep_cfg(tiny_config, name="rt", n_train=1000, seeds=(0,), vectorize=False),
                                  # long enough that neither trial can finish while the other's worker
                                  # starts (200 epochs once ran out first under a loaded CI run); as Ray
                                  # tasks (two trials this long would otherwise train as one JAX program)
                                  "train": {**tiny_config["train"], "epochs": 5000, "batch_size": 8,
                                            "steps_per_execution": 1}})
    runs = tmp_path / "runs"
    proc = subprocess.Popen(cli("run", path, "--runs-dir", runs, "--executor", "ray"), env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    training = []
    while time.time() < deadline and len(training) < 2 and proc.poll() is None:
        training = [m.parent for m in runs.glob("rt/*/metrics.csv") if len(m.read_text().splitlines()) >= 2]
        time.sleep(0.2)
    assert len(training) == 2, "two trials never trained side by side"
    started_by_driver = children(proc.pid)  # Ray's own processes (GCS, raylet, ...)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 143, err[-3000:]
    for folder in training:
        assert (folder / "results.json").exists(), f"{folder.name} has no record: {sorted(os.listdir(folder))}\n{err[-3000:]}"
        record = json.loads((folder / "results.json").read_text())
        assert record["status"] == "interrupted" and record["epochs_run"] >= 1
        assert record["command"] == f"expkit run {path} --runs-dir {runs} --executor ray"  # the driver's
    assert "vectorize" not in err  # Ray's tasks trained them
    deadline = time.time() + 30
    while time.time() < deadline and [p for p in started_by_driver if alive(p)]:
        time.sleep(0.5)
    assert not [p for p in started_by_driver if alive(p)]


def test_an_address_where_nothing_listens_ends_at_once_naming_the_key(tmp_path, tiny_config, write_yaml):
    """Ray itself retries such an address for minutes; expkit refuses it within seconds, exit 2."""
    path = write_yaml("rs.yaml", sweep_cfg(tiny_config))
    began = time.monotonic()
    out = subprocess.run(cli("run", path, "--runs-dir", tmp_path / "runs", "--executor", "ray", "--address",
                             "127.0.0.1:1"), env=ENV, capture_output=True, text=True, timeout=120)
    took = time.monotonic() - began
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.count("\n") == 1 and "sweep.address: no Ray cluster answers at 127.0.0.1:1" in out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "runs" / "rs").exists()
    assert took < 60, f"took {took:.1f} s"


def test_a_gpu_asked_of_a_local_ray_without_one_ends_at_once_naming_the_key(tmp_path, tiny_config, write_yaml):
    """`sweep.resources.gpus: 1` and `--executor ray` on a machine without a GPU (none visible to the Ray
    the command starts itself): one line naming the key and what the cluster has, exit 2, within seconds
    of Ray's start, and no sweep folder (Ray alone would wait for the GPU forever)."""
    path = write_yaml("rs.yaml", sweep_cfg(tiny_config, resources={"gpus": 1}))
    began = time.monotonic()
    out = subprocess.run(cli("run", path, "--runs-dir", tmp_path / "runs", "--executor", "ray"),
                         env={**ENV, "CUDA_VISIBLE_DEVICES": "", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"},
                         capture_output=True, text=True, timeout=180)
    took = time.monotonic() - began
    assert out.returncode == 2, out.stderr[-2000:]
    (line,) = [line for line in out.stderr.splitlines() if line.startswith("expkit: error")]
    assert "sweep.resources.gpus" in line and "reserves 1 GPU, and the Ray cluster has 0" in line, line
    assert "Traceback" not in out.stderr and not (tmp_path / "runs" / "rs").exists()
    assert took < 120, f"took {took:.1f} s"


def test_a_reservation_the_cluster_can_never_meet_is_refused(local_ray, tmp_path, tiny_config):
    """The local instance declares one GPU: two per task could never be scheduled."""
    cfg = validate(sweep_cfg(tiny_config, resources={"gpus": 2}))
    with pytest.raises(ConfigError) as info:
        run_sweep(cfg, runs_dir=tmp_path, log=open(os.devnull, "w"), executor="ray")
    assert info.value.path == "sweep.resources.gpus"
    assert "reserves 2 GPU, and the Ray cluster has 1" in info.value.message
    assert not (tmp_path / "rs").exists()
