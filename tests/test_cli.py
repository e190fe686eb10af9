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
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("this machine has a GPU")
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config))
    assert main(["run", str(path), "--device", "gpu", "--runs-dir", str(tmp_path / "runs")]) == 2
    assert "no GPU" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
