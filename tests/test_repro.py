"""The reproducibility record in results.json (code, machine, data files, command), and `expkit diff`
saying when two tables come from different versions, data or code."""

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from expkit.cli import main
from expkit.repro import data_fingerprint, git_state, reading_files


def npz_config(tmp_path, name="npz_run", seed=0):
    return {"name": name, "seed": seed, "data": {"dataset": "npz", "path": str(tmp_path / "data.npz")},
            "model": {"layers": [{"flatten": {}}, {"dense": {"units": 3, "activation": "softmax"}}]},
            "train": {"optimizer": "adam", "epochs": 1, "batch_size": 16, "verbose": 0}}


def write_npz(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    np.savez(path, x_train=rng.integers(0, 255, (60, 4, 4), dtype=np.uint8), y_train=np.arange(60) % 3,
             x_test=rng.integers(0, 255, (12, 4, 4), dtype=np.uint8), y_test=np.arange(12) % 3)


def record(folder) -> dict:
    return json.loads((Path(folder) / "results.json").read_text())


def run(tmp_path, config: dict, *args) -> Path:
    path = tmp_path / f"{config['name']}.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["run", str(path), "--runs-dir", str(tmp_path / "runs"), *args]) == 0
    return max((tmp_path / "runs" / config["name"]).iterdir())


def test_the_record_names_the_data_files_and_their_hash(tmp_path, capsys):
    write_npz(tmp_path / "data.npz", 0)
    folder = run(tmp_path, npz_config(tmp_path))
    rec = record(folder)
    digest = hashlib.sha256((tmp_path / "data.npz").read_bytes()).hexdigest()
    assert rec["data_files"] == [{"path": str(tmp_path / "data.npz"), "bytes": (tmp_path / "data.npz").stat().st_size,
                                  "sha256": digest}]
    assert rec["data_sha256"] == hashlib.sha256(f"{digest}  data.npz\n".encode()).hexdigest()
    assert rec["command"] == f"expkit run {tmp_path / 'npz_run.yaml'} --runs-dir {tmp_path / 'runs'}"
    assert rec["cpu"] and rec["gpu"] is None and rec["backend"] == "tensorflow"
    assert rec["versions"]["numpy"] == np.__version__ and rec["git"] is None  # tmp_path is in no repository


def test_the_shipped_sample_is_hashed_too(tmp_path):
    config = npz_config(tmp_path, name="sample")
    config["data"] = {"dataset": "fashion_mnist_sample", "limit": 100}
    config["model"]["layers"][1]["dense"]["units"] = 10
    rec = record(run(tmp_path, config))
    (entry,) = rec["data_files"]
    assert entry["path"].endswith("fashion_mnist_sample.npz")
    assert entry["sha256"] == hashlib.sha256(Path(entry["path"]).read_bytes()).hexdigest()


def test_files_read_while_recording_are_the_ones_opened_for_reading(tmp_path):
    a, b, c = tmp_path / "a.bin", tmp_path / "b.bin", tmp_path / "c.py"
    a.write_bytes(b"1"), b.write_bytes(b"2"), c.write_text("")
    with reading_files() as files:
        a.read_bytes()
        (tmp_path / "written.bin").write_bytes(b"x")  # written, not read
        c.read_text()  # code, not data
        a.read_bytes()
    b.read_bytes()  # after the block
    assert files == [str(a)]
    assert data_fingerprint([])[0] is None
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    shutil.copy(a, moved / "a.bin")
    assert data_fingerprint([str(moved / "a.bin")])[0] == data_fingerprint([str(a)])[0]  # content and name, not place


@pytest.mark.skipif(shutil.which("git") is None, reason="no git")
def test_the_config_files_repository_gives_commit_and_dirty_flag(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], check=True)
    write_npz(tmp_path / "data.npz", 0)
    (repo / "exp.yaml").write_text(yaml.safe_dump(npz_config(tmp_path, name="exp")))
    subprocess.run([*git, "add", "exp.yaml"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "x"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    assert git_state(repo / "exp.yaml") == {"commit": head, "dirty": False}
    assert main(["run", str(repo / "exp.yaml"), "--runs-dir", str(repo / "runs")]) == 0  # untracked runs/: clean
    assert record(max((repo / "runs" / "exp").iterdir()))["git"] == {"commit": head, "dirty": False}
    (repo / "exp.yaml").write_text((repo / "exp.yaml").read_text() + "\n# edited\n")
    assert git_state(repo / "exp.yaml") == {"commit": head, "dirty": True}


def sweep_config(tmp_path, name):
    config = npz_config(tmp_path, name=name)
    config["sweep"] = {"grid": {"train.learning_rate": [0.01, 0.001]}}
    return config


def test_diff_says_when_the_tables_come_from_different_data_or_versions(tmp_path, capsys):
    write_npz(tmp_path / "data.npz", 0)
    config = sweep_config(tmp_path, "sw")
    (tmp_path / "sw.yaml").write_text(yaml.safe_dump(config))
    assert main(["run", str(tmp_path / "sw.yaml"), "--runs-dir", str(tmp_path / "old")]) == 0
    assert main(["run", str(tmp_path / "sw.yaml"), "--runs-dir", str(tmp_path / "same")]) == 0
    write_npz(tmp_path / "data.npz", 1)  # the data file changes
    assert main(["run", str(tmp_path / "sw.yaml"), "--runs-dir", str(tmp_path / "new")]) == 0
    capsys.readouterr()

    old, same, new = (tmp_path / d / "sw" / "results.csv" for d in ("old", "same", "new"))
    assert main(["diff", str(old), str(same)]) == 0
    assert "the tables come from" not in capsys.readouterr().out  # same data and versions: nothing said
    assert main(["diff", str(old), str(new)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("the tables come from different data: sha256 ")
    assert "versions" not in out and "code" not in out
    # and under each row whose runs trained on the other data, which hashes those were
    shas = {d: {json.loads(p.read_text())["data_sha256"][:12] for p in (tmp_path / d / "sw").glob("*/results.json")}
            for d in ("old", "new")}
    (a,), (b,) = shas["old"], shas["new"]
    data_lines = [line for line in out.splitlines() if line.lstrip().startswith("data ")]
    assert len(data_lines) == 2 and all(line.split() == ["data", "sha256", a, "->", b, "(trained", "on", "other",
                                                         "data)"] for line in data_lines)
    assert out.count("~ sw[") == 2

    # a table copied away from its runs keeps its provenance in the sidecar `expkit table -o` writes
    copied = tmp_path / "baseline"
    copied.mkdir()
    assert main(["table", str(tmp_path / "old" / "sw"), "--format", "csv"]) == 0
    printed = capsys.readouterr().out
    assert main(["table", str(tmp_path / "old" / "sw"), "--format", "csv", "-o", str(copied / "results.csv")]) == 0
    assert (copied / "results.csv").read_text() == printed  # the table itself is as it was
    assert (copied / "results.provenance.json").is_file()
    for trial in (tmp_path / "new" / "sw").glob("*/results.json"):  # as if run with another Keras
        data = json.loads(trial.read_text())
        data["versions"]["keras"] = "9.9.9"
        trial.write_text(json.dumps(data))
    capsys.readouterr()
    assert main(["diff", str(copied / "results.csv"), str(new)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("the tables come from different versions: keras ")
    assert lines[0].endswith(" -> 9.9.9") and lines[1].startswith("the tables come from different data")
