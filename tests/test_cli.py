"""The command line: exit codes, one-line errors, output contract, start-up without TensorFlow."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from expkit.cli import main

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args, cwd=None):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.run([sys.executable, "-m", "expkit.cli", *map(str, args)], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("cmd", [["--help"], ["table", "--help"], ["diff", "--help"]])
def test_light_commands_do_not_import_tensorflow(cmd):
    code = ("import sys; from expkit.cli import main\n"
            f"try: main({cmd!r})\nexcept SystemExit: pass\n"
            "print('tensorflow' in sys.modules, 'keras' in sys.modules)")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip().splitlines()[-1] == "False False"


@pytest.mark.parametrize("content, where", [
    ({"model": {"layers": [{"dense": 10}]}, "train": {"epocs": 3}}, "train.epocs: unknown key; did you mean 'epochs'?"),
    ({"model": {"layers": [{"dense": 10}]}, "train": {"batch_size": "big"}}, "train.batch_size"),
    ("model:\n  layers: [\n", "malformed YAML: line"),
    ({"model": {"layers": [{"dense": {"units": 3}}]}, "data": {"dataset": "fashion_minst"}}, "did you mean 'fashion_mnist'"),
])
def test_bad_config_exits_2_with_one_line(tmp_path, content, where):
    path = tmp_path / "bad.yaml"
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    out = run_cli("run", path, "--runs-dir", tmp_path / "runs")
    assert out.returncode == 2
    lines = [l for l in out.stderr.splitlines() if l.strip()]
    assert lines[-1].startswith(f"expkit: error: {path}:") and where in lines[-1]
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "runs").exists()


def test_impossible_model_exits_2_naming_the_layer(tmp_path):
    cfg = {"data": {"dataset": "fashion_mnist_sample"},
           "model": {"layers": [{"conv2d": {"filters": 4, "kernel_size": 3, "strides": 4}}] * 3
                     + [{"flatten": {}}, {"dense": {"units": 10, "activation": "softmax"}}]}}
    path = tmp_path / "shrink.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = run_cli("summary", path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"{path}: model.layers[2].conv2d:" in out.stderr


def test_missing_file_and_bad_override(tmp_path, capsys):
    assert main(["config", str(tmp_path / "nope.yaml")]) == 2
    assert "file not found" in capsys.readouterr().err
    good = tmp_path / "g.yaml"
    good.write_text(yaml.safe_dump({"model": {"layers": [{"dense": 10}]}}))
    assert main(["config", str(good), "--set", "train.epochs"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err


def test_config_prints_every_default(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"model": {"layers": [{"dense": 10}]}}))
    assert main(["config", str(path), "--set", "train.epochs=4"]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["name"] == "c" and resolved["train"]["epochs"] == 4
    assert resolved["data"]["validation_split"] is None and resolved["train"]["precision"] == "float32"


def test_summary_prints_param_count_without_data(capsys):
    assert main(["summary", str(REPO / "configs" / "cnn2.yaml")]) == 0
    assert "Total params: 798,154" in capsys.readouterr().out


def test_run_prints_the_folder_last(tmp_path, tiny_config):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config))
    out = run_cli("run", path, "--runs-dir", tmp_path / "runs", "--set", "train.epochs=1", "--device", "cpu")
    assert out.returncode == 0, out.stderr
    last = Path(out.stdout.strip().splitlines()[-1])
    assert last.parent == tmp_path / "runs" / "tiny" and (last / "results.json").exists()


def test_gpu_asked_for_and_absent(tmp_path, tiny_config, capsys):
    from expkit.backend import current

    if current().gpus():  # the test run's backend (EXPKIT_TEST_BACKEND)
        pytest.skip("this machine has a GPU")
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config))
    assert main(["run", str(path), "--device", "gpu", "--runs-dir", str(tmp_path / "runs")]) == 2
    assert "no GPU" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


# --- every user mistake: one line naming file and key, exit 2, nothing written ---------------------

SYNTHETIC = {"dataset": "synthetic", "options": {"n_train": 60, "n_test": 20, "shape": [8, 8], "classes": 3}}


def _tiny_run_config(sections: dict) -> dict:
    from expkit.config import deep_merge

    base = {"data": SYNTHETIC, "train": {"epochs": 1, "verbose": 0},
            "model": {"layers": [{"flatten": {}}, {"dense": {"units": 3, "activation": "softmax"}}]}}
    return deep_merge(base, sections)


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("sections, extra, where", [
    ({"train": {"optimizer": "adamm"}}, [], "train.optimizer: unknown optimizer 'adamm'; did you mean 'adam'?"),
    ({"train": {"optimizer": {"name": "adamm"}}}, [], "train.optimizer.name: unknown optimizer 'adamm'"),
    ({"train": {"optimizer": {"name": "sgd", "momentun": 0.9}}}, [], "train.optimizer: Keras rejected the optimizer"),
    ({"train": {"loss": "categorical_crossentropi"}}, [], "train.loss: unknown loss 'categorical_crossentropi'"),
    ({"train": {"optimizer": "adamm"}}, ["--dry-run"], "train.optimizer: unknown optimizer 'adamm'"),
    ({"train": {"metrics": ["acuracy"]}}, [], "train.metrics[0]: unknown metric 'acuracy'; did you mean 'accuracy'?"),
    ({"data": {"labels": "integer"}}, [], "train.loss: categorical_crossentropy does not fit integer labels"),
    ({"data": {"labels": "one_hot"}, "train": {"loss": "sparse_categorical_crossentropy"}}, [],
     "train.loss: sparse_categorical_crossentropy does not fit one-hot labels"),
    ({"train": {"loss": "binary_crossentropy"}}, [], "train.loss: binary_crossentropy does not fit integer labels"),
    ({"train": {"early_stopping": {"monitor": "val_acc"}}}, [],
     "train.early_stopping.monitor: 'val_acc' is not a metric this run logs; did you mean 'val_accuracy'?"),
    ({"train": {"schedule": {"type": "plateau", "monitor": "val_acc"}}}, [], "train.schedule.monitor: 'val_acc' is not"),
    ({"name": "a/../../b"}, [], "name: must be a plain folder name"),
    ({"model": {"layers": [{"reshape": [7, 7, 1]}, {"flatten": {}}, {"dense": 3}]}}, [],
     "model.layers[0].reshape: Keras rejected this layer: The total size of the tensor must be unchanged"),
], ids=["optimizer", "optimizer-mapping", "optimizer-argument", "loss", "optimizer-dry-run", "metric",
        "integer-labels-categorical-loss", "one-hot-labels-sparse-loss", "binary-loss-3-classes",
        "early-stopping-monitor", "plateau-monitor", "name-with-slash", "reshape-size"])
def test_run_mistake_is_one_line_before_anything_is_written(tmp_path, capsys, sections, extra, where):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_tiny_run_config(sections)))
    runs = tmp_path / "runs"
    assert main(["run", str(path), "--runs-dir", str(runs), "--device", "cpu", *extra]) == 2
    line = _one_error_line(capsys)
    assert line.startswith(f"expkit: error: {path}: {where}"), line
    assert not runs.exists()


def test_runs_dir_that_is_a_file(tmp_path, capsys):
    path = tmp_path / "ok.yaml"
    path.write_text(yaml.safe_dump(_tiny_run_config({})))
    runs = tmp_path / "runs"
    runs.write_text("not a folder")
    assert main(["run", str(path), "--runs-dir", str(runs)]) == 2
    assert _one_error_line(capsys).startswith(f"expkit: error: {runs}: is a file; --runs-dir needs a folder")
    assert runs.read_text() == "not a folder"


def _bad_manifest(tmp_path):
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "manifest.json").write_text('{"trials": [1, 2]}')
    return ["table", str(tmp_path / "sweep")], f"{tmp_path / 'sweep' / 'manifest.json'}: expected a mapping with a 'trials' list"


def _diff_missing(tmp_path):
    (tmp_path / "new.csv").write_text("run,best_val_accuracy\na,0.5\n")
    return ["diff", str(tmp_path / "old.csv"), str(tmp_path / "new.csv")], f"{tmp_path / 'old.csv'}: file not found"


def _diff_not_a_table(tmp_path):
    for name in ("old.csv", "new.csv"):
        (tmp_path / name).write_text("x,y\n1,2\n")
    return ["diff", str(tmp_path / "old.csv"), str(tmp_path / "new.csv")], f"{tmp_path / 'old.csv'}: not an expkit table"


def _diff_unknown_metric(tmp_path):
    for name, value in (("old.csv", 0.5), ("new.csv", 0.4)):
        (tmp_path / name).write_text(f"run,best_val_accuracy\na,{value}\n")
    return (["diff", str(tmp_path / "old.csv"), str(tmp_path / "new.csv"), "--fail-on-worse", "best_val_acc"],
            "--fail-on-worse: unknown metric 'best_val_acc' (metrics in both tables: best_val_accuracy)")


# A damaged results.json is not a mistake in the command but a record to report: test_report.py
# checks that it becomes a 'damaged' row with a warning.
@pytest.mark.parametrize("setup", [_bad_manifest, _diff_missing, _diff_not_a_table, _diff_unknown_metric],
                         ids=["table-trials-not-mappings", "diff-missing-file",
                              "diff-not-expkit-table", "diff-unknown-metric"])
def test_table_and_diff_mistakes_are_one_line(tmp_path, capsys, setup):
    argv, where = setup(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    assert main(argv) == 2
    line = _one_error_line(capsys)
    assert line.startswith(f"expkit: error: {where}"), line
    assert sorted(tmp_path.rglob("*")) == before


def test_sweep_then_table_then_diff_from_the_command_line(tmp_path, tiny_config, capsys):
    """The documented loop end to end: run a sweep, tabulate it, diff the table, gate on a metric."""
    import csv

    cfg = {**tiny_config, "name": "lr", "train": {**tiny_config["train"], "epochs": 1},
           "sweep": {"grid": {"train.learning_rate": [0.05, 0.005]}}}
    path = tmp_path / "lr.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path), "--runs-dir", str(tmp_path / "runs")]) == 0
    sweep_dir = tmp_path / "runs" / "lr"
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(sweep_dir)

    table = tmp_path / "table.csv"
    assert main(["table", str(sweep_dir), "--format", "csv", "-o", str(table)]) == 0
    rows = list(csv.DictReader(table.open()))
    assert [r["train.learning_rate"] for r in rows] == ["0.05", "0.005"] and {r["status"] for r in rows} == {"done"}

    assert main(["diff", str(table), str(sweep_dir / "results.csv"), "--fail-on-worse", "best_val_accuracy"]) == 0
    assert capsys.readouterr().out == "no change (2 rows match)\n"

    rows[0]["best_val_accuracy"] = f"{float(rows[0]['best_val_accuracy']) - 0.05:.4f}"
    worse = tmp_path / "worse.csv"
    with worse.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    args = ["diff", str(table), str(worse), "--fail-on-worse", "best_val_accuracy"]
    assert main([*args, "--tolerance", "0.01"]) == 1
    assert "worse: best_val_accuracy got worse by more than 0.01" in capsys.readouterr().out
    assert main([*args, "--tolerance", "0.1"]) == 0


def _spawn_cli(*args):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.Popen([sys.executable, "-m", "expkit.cli", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("sig, code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_interrupt_before_any_run_folder_says_what_was_stopped(tmp_path, sig, code):
    import signal
    import time

    fifo = tmp_path / "blocks.yaml"
    os.mkfifo(fifo)  # reading it waits for a writer: the command is busy before any run folder exists
    proc = _spawn_cli("config", fifo)
    try:
        time.sleep(3)
        proc.send_signal(getattr(signal, sig))
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == code and "Traceback" not in err, err
    assert err.strip() == "expkit: interrupted: 'expkit config' stopped before writing any run folder"


@pytest.mark.skipif(not Path("/proc/self/wchan").exists(), reason="needs Linux's /proc/PID/wchan")
def test_a_sweep_stopped_before_its_first_trial_names_no_folder(tmp_path, tiny_config):
    """The sweep's data file is a FIFO, so the sweep waits in its check before any trial: Ctrl-C then says
    nothing was written (no 'run folder is marked' sentence), and nothing was."""
    import signal
    import time

    fifo = tmp_path / "data.npz"
    os.mkfifo(fifo)
    config = {**tiny_config, "name": "sw", "data": {"dataset": "npz", "path": str(fifo)},
              "sweep": {"grid": {"train.learning_rate": [0.1, 0.01]}}}
    path = tmp_path / "sw.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = _spawn_cli("run", path, "--runs-dir", tmp_path / "runs")
    try:
        wchan, deadline = Path(f"/proc/{proc.pid}/wchan"), time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:  # until it waits in open() of the FIFO
            if wchan.exists() and "partner" in wchan.read_text():
                break
            time.sleep(0.2)
        assert "partner" in wchan.read_text(), "the sweep never reached its data file"
        start = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        took = time.monotonic() - start
    finally:
        proc.kill()
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert err.strip() == "expkit: interrupted: 'expkit run' stopped before writing any run folder"
    assert not (tmp_path / "runs").exists() and took < 20, took


def test_interrupted_run_names_its_folder_and_the_resume_command(tmp_path, tiny_config):
    import signal
    import time

    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config))
    runs = tmp_path / "runs"
    proc = _spawn_cli("run", path, "--runs-dir", runs, "--set", "train.epochs=100000", "--device", "cpu")
    try:
        deadline = time.monotonic() + 120
        while not list(runs.glob("tiny/*/metrics.csv")) and time.monotonic() < deadline:
            time.sleep(0.2)
        (folder,) = [p.parent for p in runs.glob("tiny/*/metrics.csv")]
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    last = err.strip().splitlines()[-1]
    assert last == (f"expkit: interrupted; finished work is kept, the run folder {folder.absolute()} is marked "
                    f"'interrupted'; continue it with: expkit run --resume {folder.absolute()}"), last
    assert '"interrupted"' in (folder / "status.json").read_text()


def test_address_without_ray_executor_is_refused(tmp_path, capsys):
    path = tmp_path / "ok.yaml"
    path.write_text(yaml.safe_dump(_tiny_run_config({})))
    assert main(["run", str(path), "--runs-dir", str(tmp_path / "runs"), "--address", "ray://head:10001"]) == 2
    assert _one_error_line(capsys).endswith("--address names a Ray cluster: it needs --executor ray "
                                            "(or sweep.executor: ray)")
    assert not (tmp_path / "runs").exists()


def test_report_output_under_a_file_or_naming_a_folder_is_one_line(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    assert main(["report", str(tmp_path), "-o", str(afile / "report.html")]) == 2
    assert _one_error_line(capsys) == f"expkit: error: -o {afile / 'report.html'}: {afile} is a file, not a folder"
    assert afile.read_text() == "keep me"
    folder = tmp_path / "out"
    folder.mkdir()
    assert main(["report", str(tmp_path), "-o", str(folder)]) == 2
    assert _one_error_line(capsys).startswith(f"expkit: error: -o {folder}: is a folder")
    assert list(folder.iterdir()) == []


def test_diff_nan_tolerance_exits_2(tmp_path, capsys):
    table = tmp_path / "t.csv"
    table.write_text("name,best_val_accuracy\na,0.9\n")
    assert main(["diff", str(table), str(table), "--fail-on-worse", "best_val_accuracy", "--tolerance", "nan"]) == 2
    assert "--tolerance must be a finite number >= 0, found nan" in _one_error_line(capsys)
