"""Trials side by side on this machine (`expkit run SWEEP --jobs N`): real driver and worker processes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from expkit.backend import share_env
from expkit.progress import Counts, SweepProgress, format_seconds
from expkit.sweeps.procs import threads_per_worker
from procs import alive, children

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO / "src")}
TIMING = ["fit_seconds", "fit_seconds_std", "path"]
TIMEOUT = 600


def cli(*args):
    return [sys.executable, "-m", "expkit.cli", *map(str, args)]


def sweep_file(tmp_path, tiny_config, name="par", epochs=2, n_train=120, seeds=(0, 1), train=None, **sweep):
    data = {**tiny_config["data"], "options": {**tiny_config["data"]["options"], "n_train": n_train}}
    cfg = {**tiny_config, "name": name, "data": data,
           "train": {**tiny_config["train"], "epochs": epochs, **(train or {})},
           # one trial per process here: the JAX vectorisation of sweep.vectorize is another subject
           "sweep": {"grid": {"train.learning_rate": [0.1, 0.01, 0.001]}, "seeds": list(seeds), "vectorize": False,
                     **sweep}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def table(sweep_dir):
    return pd.read_csv(sweep_dir / "results.csv").drop(columns=TIMING)


def test_two_jobs_equal_one_job(tmp_path, tiny_config):
    """Six trials, two at a time in two worker processes: the table `--jobs 1` writes."""
    path = sweep_file(tmp_path, tiny_config)
    proc = subprocess.Popen(cli("run", path, "--runs-dir", tmp_path / "two", "--jobs", "2"), env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, err[-3000:]
    assert out.strip().splitlines()[-1] == str(tmp_path / "two" / "par")  # stdout ends with the sweep's path
    sweep_dir = tmp_path / "two" / "par"
    trials = json.loads((sweep_dir / "manifest.json").read_text())["trials"]
    assert len(trials) == 6 and all(t["status"] == "done" for t in trials)
    pids = {json.loads((sweep_dir / t["id"] / "results.json").read_text())["pid"] for t in trials}
    assert len(pids) == 2 and proc.pid not in pids  # two workers trained, the driver none
    assert "sweep par: 6 done" in err and "6/6 done, 0 running, 0 failed, 0 queued" in err
    alone = subprocess.run(cli("run", path, "--runs-dir", tmp_path / "one", "--jobs", "1"), env=ENV,
                           capture_output=True, text=True, timeout=TIMEOUT)
    assert alone.returncode == 0, alone.stderr[-3000:]
    pd.testing.assert_frame_equal(table(sweep_dir), table(tmp_path / "one" / "par"))


def test_sigterm_stops_every_worker_and_a_rerun_completes(tmp_path, tiny_config):
    path = sweep_file(tmp_path, tiny_config, name="term", epochs=25, n_train=1000, seeds=(0,),
                      train={"batch_size": 8, "steps_per_execution": 1},
                      grid={"train.learning_rate": [0.1, 0.01, 0.001, 0.0001]})
    runs = tmp_path / "runs"
    proc = subprocess.Popen(cli("run", path, "--runs-dir", runs, "--jobs", "2"), env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    training: list[Path] = []
    while time.time() < deadline and len(training) < 2 and proc.poll() is None:
        training = [m.parent for m in runs.glob("term/*/metrics.csv") if len(m.read_text().splitlines()) >= 2]
        time.sleep(0.2)
    assert len(training) == 2, "two trials never trained side by side"
    workers = [p for p in children(proc.pid) if "spawn_main" in Path(f"/proc/{p}/cmdline").read_text()]
    assert len(workers) >= 2
    assert "libtensorflow" not in Path(f"/proc/{proc.pid}/maps").read_text()  # the driver loads no backend
    sent = time.time()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    print(f"SIGTERM to exit: {time.time() - sent:.2f} s")
    assert proc.returncode == 143, err[-3000:]
    assert "Traceback" not in err and "interrupted" in err
    assert not [p for p in workers if alive(p)], "a worker outlived its driver"
    for folder in training:  # each worker recorded its own trial, with the epochs it finished
        assert (folder / "results.json").exists(), f"{folder.name} has no record; the driver said:\n{err[-3000:]}"
        record = json.loads((folder / "results.json").read_text())
        assert record["status"] == "interrupted" and record["epochs_run"] >= 1
        assert json.loads((folder / "status.json").read_text())["status"] == "interrupted"
        assert record["pid"] in workers
    statuses = [t["status"] for t in json.loads((runs / "term" / "manifest.json").read_text())["trials"]]
    assert sorted(statuses) == ["interrupted", "interrupted", "pending", "pending"]

    again = subprocess.run(cli("run", path, "--runs-dir", runs, "--jobs", "2"), env=ENV, capture_output=True,
                           text=True, timeout=TIMEOUT)
    assert again.returncode == 0, again.stderr[-3000:]
    trials = json.loads((runs / "term" / "manifest.json").read_text())["trials"]
    assert [t["status"] for t in trials] == ["done"] * 4
    for folder in training:
        assert json.loads((folder / "results.json").read_text())["epochs_run"] == 25


def test_a_sweep_over_backends_runs_each_in_its_own_process(tmp_path, tiny_config):
    """`backend` swept: one worker per backend (KERAS_BACKEND set before Keras starts), one table."""
    pytest.importorskip("jax")
    path = sweep_file(tmp_path, tiny_config, name="be", seeds=(0,), grid={"backend": ["tensorflow", "jax"]})
    out = subprocess.run(cli("run", path, "--runs-dir", tmp_path, "--jobs", "1"), env=ENV, capture_output=True,
                         text=True, timeout=TIMEOUT)
    assert out.returncode == 0, out.stderr[-3000:]
    trials = json.loads((tmp_path / "be" / "manifest.json").read_text())["trials"]
    records = {t["values"]["backend"]: json.loads((tmp_path / "be" / t["id"] / "results.json").read_text())
               for t in trials}
    assert set(records) == {"tensorflow", "jax"} and all(r["status"] == "done" for r in records.values())
    assert "jax" in records["jax"]["versions"] and records["jax"]["pid"] != records["tensorflow"]["pid"]
    assert sorted(pd.read_csv(tmp_path / "be" / "results.csv")["backend"]) == ["jax", "tensorflow"]


def test_thread_share_and_memory_share_environment():
    assert threads_per_worker(2, cores=2) == 1 and threads_per_worker(3, cores=8) == 2
    assert threads_per_worker(4, cores=2) == 1  # never none
    env = share_env(2, environ={})
    assert env["TF_NUM_INTRAOP_THREADS"] == env["OMP_NUM_THREADS"] == "2" and "XLA_FLAGS" not in env
    env = share_env(1, 0.5, environ={"XLA_FLAGS": "--xla_dump_to=/tmp/x"})
    assert env["XLA_FLAGS"].startswith("--xla_dump_to=/tmp/x ")  # the user's flags kept
    assert "xla_cpu_multi_thread_eigen=false" in env["XLA_FLAGS"]
    assert env["XLA_PYTHON_CLIENT_MEM_FRACTION"] == env["EXPKIT_GPU_MEMORY_FRACTION"] == "0.450"
    assert "XLA_PYTHON_CLIENT_MEM_FRACTION" not in share_env(1, 1.0, environ={})


class FakeStream:
    def __init__(self, tty):
        self.text, self._tty = "", tty

    def write(self, text):
        self.text += text

    def flush(self):
        pass

    def isatty(self):
        return self._tty


def test_progress_line_counts_and_time_left():
    now = [0.0]
    stream = FakeStream(tty=False)
    progress = SweepProgress("lr", stream, clock=lambda: now[0])
    progress.update(Counts(done=0, running=2, failed=0, queued=8), finished_here=0, force=True)
    assert stream.text.splitlines()[-1] == "lr: 0/10 done, 2 running, 0 failed, 8 queued; 0:00 elapsed, ~? left"
    now[0] = 30.0
    progress.update(Counts(done=2, running=2, failed=1, queued=5), finished_here=3)
    # 3 trials in 30 s, 7 to go: 70 s
    assert stream.text.splitlines()[-1] == "lr: 2/10 done, 2 running, 1 failed, 5 queued; 0:30 elapsed, ~1:10 left"
    lines = len(stream.text.splitlines())
    progress.update(Counts(done=2, running=3, failed=1, queued=4), finished_here=3)
    assert len(stream.text.splitlines()) == lines  # plain output: a line only when a trial ends
    assert format_seconds(3725) == "1:02:05"


def test_progress_redraws_in_place_on_a_terminal():
    stream = FakeStream(tty=True)
    progress = SweepProgress("lr", stream, clock=lambda: 0.0)
    progress.update(Counts(queued=3), force=True)
    progress.log("[1/3] lr=0.1 seed=0 (abc): training")
    progress.close()
    assert stream.text.startswith("\r\x1b[K" + "lr: 0/3 done")
    assert "\r\x1b[K[1/3] lr=0.1 seed=0 (abc): training\n\r\x1b[Klr: 0/3 done" in stream.text
    assert stream.text.endswith("\n")


def test_a_two_job_sweep_prints_no_cuda_start_up_lines(tmp_path):
    """The sweep's process imports Keras while it plans vectorised groups (the seeds' learning-rate sweep does):
    TensorFlow's start-up lines (`failed call to cuInit` without a GPU) are held back there as in a plain run."""
    out = subprocess.run(cli("run", REPO / "configs" / "sweep_lr.yaml", "--runs-dir", tmp_path, "--jobs", "2",
                             "--set", "data.dataset=fashion_mnist_sample", "--set", "train.epochs=1"),
                         env=ENV, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "sweep sweep_lr: 10 done" in out.stderr
    for noise in ("cuInit", "absl::InitializeLog", "I0000", "cudart_stub"):
        assert noise not in out.stderr
