"""backend/: choosing the Keras backend before Keras is imported, and real tiny runs on JAX.

Keras fixes its backend when it is imported, so a run on another backend than this test process's
(tests/conftest.py: EXPKIT_TEST_BACKEND, default tensorflow) happens in a fresh interpreter.
"""

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from expkit.backend import (BACKEND_NAMES, activate, can_run_here, compile_cache_env, cpu_model_name, default_backend,
                            loaded_backend)
from expkit.config import validate
from expkit.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
HAS_JAX = importlib.util.find_spec("jax") is not None
needs_jax = pytest.mark.skipif(not HAS_JAX, reason="JAX is not installed (pip install 'expkit[jax]')")


def cli(*args, backend_env: str | None = None):
    """The expkit command in a fresh interpreter; KERAS_BACKEND as given (None: unset)."""
    env = {k: v for k, v in os.environ.items() if k not in ("KERAS_BACKEND", "EXPKIT_TEST_BACKEND")}
    if backend_env:
        env["KERAS_BACKEND"] = backend_env
    env["PYTHONPATH"] = str(REPO / "src")
    return subprocess.run([sys.executable, "-m", "expkit.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)


def python(code: str, backend_env: str | None = None):
    env = {k: v for k, v in os.environ.items() if k not in ("KERAS_BACKEND", "EXPKIT_TEST_BACKEND")}
    if backend_env:
        env["KERAS_BACKEND"] = backend_env
    env["PYTHONPATH"] = str(REPO / "src")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def jax_sees_a_gpu() -> bool:
    code = "import jax; print(any(d.platform != 'cpu' for d in jax.devices()))"
    return python(code, backend_env="jax").strip() == "True"


@pytest.fixture
def tiny_file(tmp_path, tiny_config):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({**tiny_config, "train": {**tiny_config["train"], "epochs": 2}}))
    return path


@pytest.fixture(scope="module")
def jax_run(tmp_path_factory):
    """One real tiny run on JAX through `expkit run --backend jax` (KERAS_BACKEND unset)."""
    if not HAS_JAX:
        pytest.skip("JAX is not installed")
    tmp = tmp_path_factory.mktemp("jax_run")
    config = {"name": "tiny", "seed": 3, "data": {"dataset": "synthetic", "options": {
        "n_train": 120, "n_test": 40, "shape": [8, 8], "classes": 3}},
        "model": {"layers": [{"flatten": {}}, {"dense": {"units": 16, "activation": "relu"}},
                             {"dense": {"units": 3, "activation": "softmax"}}]},
        "train": {"optimizer": "adam", "learning_rate": 0.01, "epochs": 2, "batch_size": 16, "verbose": 0}}
    (tmp / "tiny.yaml").write_text(yaml.safe_dump(config))
    out = cli("run", tmp / "tiny.yaml", "--backend", "jax", "--runs-dir", tmp / "runs")
    assert out.returncode == 0, out.stderr[-3000:]
    return Path(out.stdout.strip().splitlines()[-1])


# --- choosing the backend: config, environment, command line -------------------------------------


def test_backend_default_comes_from_keras_backend(tiny_config, monkeypatch):
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    assert default_backend() == "tensorflow" and validate(tiny_config).backend == "tensorflow"
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    assert validate(tiny_config).backend == "jax"
    assert validate({**tiny_config, "backend": "torch"}).backend == "torch"  # the config's own key wins
    assert validate(tiny_config).to_dict()["backend"] == "jax"  # config.yaml records what ran


def test_unknown_backends_are_config_errors(tiny_config, monkeypatch):
    with pytest.raises(ConfigError) as info:
        validate({**tiny_config, "backend": "theano"})
    assert info.value.path == "backend" and "'jax'" in info.value.message and "theano" in info.value.message
    monkeypatch.setenv("KERAS_BACKEND", "numpy")
    with pytest.raises(ConfigError) as info:
        validate(tiny_config)
    assert info.value.path == "backend" and "$KERAS_BACKEND is 'numpy'" in info.value.message


def test_backend_flag_is_validated_like_the_config(tiny_file):
    out = cli("config", tiny_file, "--set", "backend=jax")
    assert out.returncode == 0 and "backend: jax" in out.stdout
    out = cli("run", tiny_file, "--backend", "mxnet")
    assert out.returncode == 2 and "invalid choice: 'mxnet'" in out.stderr


# --- one backend per process -----------------------------------------------------------------------


def test_activating_another_backend_after_keras_was_imported_is_a_clear_error(tiny_config, tmp_path):
    import keras

    here = keras.backend.backend()
    other = next(b for b in BACKEND_NAMES if b != here)
    assert loaded_backend() == here and can_run_here(here) and not can_run_here(other)
    activate(here)  # the backend already running: nothing to do
    with pytest.raises(ConfigError) as info:
        activate(other)
    assert info.value.path == "backend"
    assert f"already imported Keras with the '{here}' backend" in info.value.message and "new process" in info.value.message

    import expkit

    with pytest.raises(ConfigError, match=f"'{here}' backend"):
        expkit.run({**tiny_config, "backend": other}, runs_dir=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()  # refused before anything was written


def test_tf_data_without_tensorflow_is_one_clear_error(tiny_config, monkeypatch):
    import expkit.backend as backend_mod
    import expkit.backend.base as base_mod

    real = base_mod.installed
    monkeypatch.setattr(base_mod, "installed", lambda module: module != "tensorflow" and real(module))
    cfg = validate({**tiny_config, "train": {**tiny_config["train"], "input_pipeline": "tf_data"}})
    with pytest.raises(ConfigError) as info:
        backend_mod.current().check_config(cfg)
    assert info.value.path == "train.input_pipeline" and "TensorFlow is not installed" in info.value.message


def test_cpu_model_name_is_read():
    name = cpu_model_name()
    assert name and name != "unknown"


# --- real runs on JAX ------------------------------------------------------------------------------


@needs_jax
def test_run_on_jax_records_the_backend_and_its_version(jax_run):
    record = json.loads((jax_run / "results.json").read_text())
    assert record["status"] == "done" and record["backend"] == "jax"
    assert record["versions"]["jax"][:1].isdigit() and record["versions"]["jaxlib"][:1].isdigit()
    assert "tensorflow" not in record["versions"] and record["versions"]["keras"].startswith("3.")
    assert record["device"].startswith(("CPU (", "GPU (")) and record["device"] != "CPU (unknown)"
    assert record["inter_op_threads"] is None  # JAX has no such knob
    assert record["jit_compile"] is True and record["steps_per_execution"] >= 1
    assert yaml.safe_load((jax_run / "config.yaml").read_text())["backend"] == "jax"
    assert 0.0 <= record["best"]["val_accuracy"] <= 1.0 and record["epochs_run"] == 2


@needs_jax
def test_tables_show_the_backend_when_it_differs(jax_run, tiny_file, tmp_path):
    if importlib.util.find_spec("tensorflow") is None:
        pytest.skip("TensorFlow is not installed")
    out = cli("run", tiny_file, "--backend", "tensorflow", "--runs-dir", tmp_path / "runs")
    assert out.returncode == 0, out.stderr[-3000:]
    tf_run = Path(out.stdout.strip().splitlines()[-1])
    assert json.loads((tf_run / "results.json").read_text())["backend"] == "tensorflow"
    import expkit

    table = expkit.table([jax_run, tf_run], only_changed=True)
    assert list(table["backend"]) == ["jax", "tensorflow"]
    assert "backend" not in expkit.table([jax_run], only_changed=True).columns


@needs_jax
def test_the_config_key_chooses_jax_without_the_flag(tiny_file, tmp_path):
    config = yaml.safe_load(tiny_file.read_text())
    tiny_file.write_text(yaml.safe_dump({**config, "backend": "jax", "train": {**config["train"], "epochs": 1}}))
    out = cli("run", tiny_file, "--runs-dir", tmp_path / "runs", backend_env="tensorflow")
    assert out.returncode == 0, out.stderr[-3000:]
    folder = Path(out.stdout.strip().splitlines()[-1])
    assert json.loads((folder / "results.json").read_text())["backend"] == "jax"


@needs_jax
def test_device_gpu_without_a_gpu_is_one_line_exit_2(tiny_file, tmp_path):
    if jax_sees_a_gpu():
        pytest.skip("JAX sees a GPU here")
    out = cli("run", tiny_file, "--backend", "jax", "--device", "gpu", "--runs-dir", tmp_path / "runs")
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "--device gpu: JAX sees no GPU" in out.stderr and "cpu:0" in out.stderr
    assert not (tmp_path / "runs").exists()


@needs_jax
@pytest.mark.parametrize("command", ["run", "summary"])
def test_explicit_inter_op_threads_on_jax_is_exit_2(tiny_file, tmp_path, command):
    extra = ["--runs-dir", tmp_path / "runs"] if command == "run" else []
    out = cli(command, tiny_file, "--backend", "jax", "--set", "train.inter_op_threads=2", *extra)
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert "train.inter_op_threads: JAX has no inter-op thread setting" in out.stderr
    assert not (tmp_path / "runs").exists()


@needs_jax
def test_the_same_seed_on_jax_gives_the_same_metrics_twice(tiny_config, tmp_path):
    """Two runs of one config in one process on JAX (CPU XLA is deterministic): identical numbers."""
    config = {**tiny_config, "backend": "jax", "train": {**tiny_config["train"], "steps_per_execution": 3}}
    code = f"""
import json, expkit
cfg = {config!r}
runs = [expkit.run(cfg, runs_dir={str(tmp_path / "runs")!r}, device="cpu") for _ in range(2)]
print(json.dumps([[run.record.backend, run.history.drop(columns="epoch_seconds").to_dict("list"), run.record.test]
                  for run in runs]))
"""
    (a_backend, a, a_test), (b_backend, b, b_test) = json.loads(python(code).strip().splitlines()[-1])
    assert a_backend == b_backend == "jax"
    assert a == b and a_test == b_test
    assert len(a["loss"]) == 3


on_jax = pytest.mark.skipif(os.environ.get("KERAS_BACKEND") != "jax", reason="the test run is not on JAX")
DENSE = [{"flatten": {}}, {"dropout": 0.2}, {"dense": {"units": 3, "activation": "softmax"}}]
CONV = [{"conv2d": {"filters": 4, "kernel_size": 3, "activation": "relu"}}, {"batch_normalization": {}},
        {"flatten": {}}, {"dense": {"units": 3, "activation": "softmax"}}]


@on_jax
@pytest.mark.parametrize("layers, convolutions_on_cpu", [(DENSE, False), (CONV, True)])
def test_jax_fuses_several_steps_into_one_call_with_the_same_metrics(layers, convolutions_on_cpu, monkeypatch):
    """On JAX, steps_per_execution runs its steps in one compiled loop: same numbers as step by step.

    Convolutions are fused on GPUs only (slow inside a loop on XLA's CPU backend); forced here to check their math."""
    import keras

    import expkit.backend.jax as jax_backend
    from expkit.runner import prepare
    from expkit.train import train

    fuse = jax_backend.fuse_jax_train_steps
    monkeypatch.setattr(jax_backend, "fuse_jax_train_steps",
                        lambda model, steps: fuse(model, steps, convolutions_on_cpu=convolutions_on_cpu))

    def fit(spe):
        cfg = validate({"name": "f", "seed": 5, "backend": "jax",
                        "data": {"dataset": "synthetic", "options": {"n_train": 100, "n_test": 20, "shape": [6, 6], "classes": 3}},
                        "model": {"layers": layers},
                        "train": {"epochs": 2, "batch_size": 8, "verbose": 0, "steps_per_execution": spe}})
        keras.utils.set_random_seed(cfg.seed)
        dataset, model = prepare(cfg)
        result = train(cfg, dataset, model)
        fused = "make_train_function" in vars(model)  # replaced on the instance by backend.fuse_jax_train_steps
        keras.backend.clear_session()
        return result, fused

    (plain, plain_fused), (fast, fast_fused) = fit(1), fit(5)  # 12 batches a epoch: groups of 5, 5, 2 (last short)
    assert (plain_fused, fast_fused) == (False, True)
    for a, b in zip(plain.history, fast.history, strict=True):
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), key
    assert plain.test == pytest.approx(fast.test, rel=1e-5)


@on_jax
def test_jax_keeps_keras_loop_for_convolutions_on_a_cpu():
    import keras

    from expkit.backend import Jax, fuse_jax_train_steps
    from expkit.models import build_model

    if Jax().gpus():
        pytest.skip("JAX runs on a GPU here")
    cfg = validate({"name": "c", "backend": "jax", "model": {"layers": CONV}})
    model = build_model(cfg, (6, 6, 1), 3)
    model.compile(optimizer="sgd", loss="categorical_crossentropy", steps_per_execution=4)
    assert fuse_jax_train_steps(model, 4) is False and "make_train_function" not in vars(model)
    keras.backend.clear_session()


# --- PyTorch, where it is installed ----------------------------------------------------------------


def test_torch_run_records_one_step_per_call(tiny_file, tmp_path):
    pytest.importorskip("torch")
    out = cli("run", tiny_file, "--backend", "torch", "--device", "cpu", "--runs-dir", tmp_path / "runs")
    assert out.returncode == 0, out.stderr[-3000:]
    record = json.loads((Path(out.stdout.strip().splitlines()[-1]) / "results.json").read_text())
    assert record["backend"] == "torch" and record["steps_per_execution"] == 1 and "torch" in record["versions"]
    out = cli("run", tiny_file, "--backend", "torch", "--set", "train.steps_per_execution=4",
                 "--runs-dir", tmp_path / "runs2")
    assert out.returncode == 2 and "train.steps_per_execution" in out.stderr


def test_torch_missing_is_one_clear_error(tiny_file, tmp_path):
    if importlib.util.find_spec("torch") is not None:
        pytest.skip("torch is installed here")
    out = cli("run", tiny_file, "--backend", "torch", "--runs-dir", tmp_path / "runs")
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert "backend: the 'torch' backend needs torch, which is not installed" in out.stderr


# --- the persistent compilation cache (JAX) -------------------------------------------------------


def test_compile_cache_goes_under_the_user_cache_folder_unless_told_otherwise(tmp_path):
    env = compile_cache_env({"XDG_CACHE_HOME": str(tmp_path)})
    assert env["JAX_COMPILATION_CACHE_DIR"] == str(tmp_path / "expkit" / "xla")
    assert int(env["JAX_COMPILATION_CACHE_MAX_SIZE"]) > 0  # bounded, with JAX's locked eviction
    assert compile_cache_env({"EXPKIT_COMPILE_CACHE": str(tmp_path / "c")})["JAX_COMPILATION_CACHE_DIR"] == str(tmp_path / "c")
    assert compile_cache_env({"EXPKIT_COMPILE_CACHE": "off"}) == {}
    assert compile_cache_env({"JAX_COMPILATION_CACHE_DIR": "/elsewhere"}) == {}  # the user's own setting stands


@needs_jax
def test_a_rerun_on_jax_loads_its_programs_from_the_compile_cache_with_the_same_results(tiny_file, tmp_path, monkeypatch):
    cache = tmp_path / "xla"
    monkeypatch.setenv("EXPKIT_COMPILE_CACHE", str(cache))
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")  # every program, however quick
    histories, entries = [], []
    for i in range(2):
        out = cli("run", tiny_file, "--backend", "jax", "--runs-dir", tmp_path / f"runs{i}")
        assert out.returncode == 0, out.stderr[-3000:]
        folder = Path(out.stdout.strip().splitlines()[-1])
        histories.append([{k: v for k, v in row.items() if k != "epoch_seconds"}
                          for row in csv.DictReader((folder / "metrics.csv").open())])
        entries.append(sorted(p.name for p in cache.glob("*-cache")))
    assert any(name.startswith("jit_train_step") or "train" in name for name in entries[0]), entries[0]
    assert entries[1] == entries[0]  # the rerun compiled nothing new: every program came from the cache
    assert histories[1] == histories[0] and len(histories[0]) == 2
