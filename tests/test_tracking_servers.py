"""The trackers as their users read them: a real `mlflow server` and a real `tensorboard`, each on a
free port of 127.0.0.1, started by the test (bounded in time) and stopped in the fixture's teardown."""

import json
import re
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

from expkit import api

pytest.importorskip("mlflow")
pytest.importorskip("tensorboard")
BIN = Path(sys.executable).parent
START_SECONDS = 60


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def server(argv, url, cwd, log):
    """Start `argv`, wait (at most START_SECONDS) until `url` answers, and stop it afterwards."""
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_SECONDS
        while True:
            if proc.poll() is not None:
                pytest.fail(f"{argv[0]} exited with {proc.returncode}:\n{Path(log).read_text()[-2000:]}")
            try:
                urllib.request.urlopen(url, timeout=2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"{argv[0]} did not answer {url} in {START_SECONDS} s:\n{Path(log).read_text()[-2000:]}")
                time.sleep(0.3)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def sweep_config(grid):
    """A tiny model on the shipped Fashion-MNIST sample, two epochs a trial."""
    return {"name": "served", "seed": 5, "data": {"dataset": "fashion_mnist_sample"},
            "model": {"layers": [{"flatten": {}}, {"dense": {"units": 8, "activation": "relu"}},
                                 {"dense": {"units": 10, "activation": "softmax"}}]},
            "train": {"optimizer": "adam", "learning_rate": 0.01, "epochs": 2, "batch_size": 64, "verbose": 0},
            "sweep": {"grid": grid}}


def results(trial_path: Path) -> dict:
    return json.loads((trial_path / "results.json").read_text())


def test_an_mlflow_server_holds_the_sweep_and_its_page_shows_the_runs(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from test_html_report import CHROMIUM, chromium

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
            "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}"]
    with server(argv, f"{url}/health", tmp_path, tmp_path / "mlflow.log"):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        cfg = {**sweep_config({"train.learning_rate": [0.01, 0.003]}), "track": ["mlflow"]}
        sweep = api.sweep(cfg, runs_dir=tmp_path / "runs")
        client = MlflowClient(tracking_uri=url)
        experiment = client.get_experiment_by_name("served")
        runs = client.search_runs([experiment.experiment_id])
        (parent,) = [r for r in runs if r.data.tags.get("expkit.kind") == "sweep"]
        children = {r.data.params["train.learning_rate"]: r for r in runs if r is not parent}
        assert sorted(children) == ["0.003", "0.01"] and parent.info.status == "FINISHED"
        for trial in sweep.trials:
            child = children[str(trial.config.train.learning_rate)]
            assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
            assert child.info.status == "FINISHED" and child.data.params["train.epochs"] == "2"
            assert child.data.params["data.dataset"] == "fashion_mnist_sample"
            record = results(trial.path)
            assert child.data.metrics["test_accuracy"] == pytest.approx(record["test"]["accuracy"])
            history = client.get_metric_history(child.info.run_id, "val_accuracy")
            assert [m.step for m in history] == [1, 2]
            assert [m.value for m in history] == pytest.approx(list(trial.history["val_accuracy"]))
        assert {"results.csv", "manifest.json"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}

        if CHROMIUM is None:
            pytest.skip("no Chromium here (apt-get install chromium)")
        dom, _ = chromium(tmp_path, f"{url}/#/experiments/{experiment.experiment_id}/runs", "--dump-dom",
                          "--virtual-time-budget=30000")
        # the runs table lists the sweep's parent run by name, linked to its page; its child runs sit
        # collapsed under it (the table shows them when the row is expanded)
        link = f'href="#/experiments/{experiment.experiment_id}/runs/{parent.info.run_id}"'
        assert parent.info.run_name == "served"
        assert re.search(re.escape(link) + r'[^>]*><span[^>]*>served<', dom), dom[-3000:]
        # each child run's own page: named by the trial's values, its parent the sweep's run (linked), and
        # the test accuracy expkit recorded in its metrics table
        for trial in sweep.trials:
            child = children[str(trial.config.train.learning_rate)]
            dom, _ = chromium(tmp_path, f"{url}/#/experiments/{experiment.experiment_id}/runs/{child.info.run_id}",
                              "--dump-dom", "--virtual-time-budget=30000")
            assert child.info.run_name == f"train.learning_rate={trial.config.train.learning_rate} seed=5"
            assert child.info.run_name in dom, dom[-3000:]
            assert re.search(r'data-testid="key-value-Parent run".*?' + re.escape(link) + r'>served</a>', dom), dom[-3000:]
            shown = re.search(r'>test_accuracy</a>.*?title="([0-9.eE+-]+)"', dom)
            assert shown and float(shown.group(1)) == pytest.approx(results(trial.path)["test"]["accuracy"])


def post(url, body):
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json", "X-XSRF-Protected": "1"})
    with urllib.request.urlopen(request, timeout=20) as response:
        return json.loads(response.read())


def test_tensorboard_serves_the_sweeps_hparams(tmp_path):
    cfg = {**sweep_config({"train.learning_rate": [0.01, 0.003], "train.batch_size": [32, 64]}),
           "track": ["tensorboard"]}
    sweep = api.sweep(cfg, runs_dir=tmp_path / "runs")
    assert len(sweep.trials) == 4
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [str(BIN / "tensorboard"), "--logdir", str(sweep.path), "--host", "127.0.0.1", "--port", str(port),
            "--reload_interval", "1"]
    with server(argv, f"{url}/data/logdir", tmp_path, tmp_path / "tensorboard.log"):
        deadline = time.monotonic() + 30
        while True:  # the first load of the event files happens after the server answers
            experiment = post(f"{url}/data/plugin/hparams/experiment", {"experimentName": ""})
            if len(experiment.get("hparamInfos", [])) >= 3 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        infos = {h["name"]: h for h in experiment["hparamInfos"]}
        assert sorted(infos) == ["seed", "train.batch_size", "train.learning_rate"]
        assert sorted(infos["train.learning_rate"]["domainDiscrete"]) == pytest.approx([0.003, 0.01])
        assert sorted(infos["train.batch_size"]["domainDiscrete"]) == [32, 64]
        metric_names = {(m["name"].get("group", ""), m["name"]["tag"]) for m in experiment["metricInfos"]}
        assert ("validation", "epoch_accuracy") in metric_names

        groups = post(f"{url}/data/plugin/hparams/session_groups", {
            "experimentName": "", "startIndex": 0, "sliceSize": 100,
            "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"],
            "colParams": [{"hparam": name} for name in infos]
                         + [{"metric": {"group": "validation", "tag": "epoch_accuracy"}},
                            {"metric": {"group": "train", "tag": "epoch_loss"}}]})
        served = {}
        for group in groups["sessionGroups"]:
            hparams = group["hparams"]
            (session,) = group["sessions"]
            assert session["status"] == "STATUS_SUCCESS"
            values = {(m["name"].get("group", ""), m["name"]["tag"]): m["value"] for m in session["metricValues"]}
            served[(hparams["train.learning_rate"], hparams["train.batch_size"])] = values
        assert len(served) == 4
        # the runs list, as its left-hand pane shows it: each trial's curves named by its values, not only its id
        with urllib.request.urlopen(f"{url}/data/runs", timeout=20) as response:
            runs = set(json.loads(response.read()))
        for trial in sweep.trials:
            train = trial.config.train
            name = (f"{trial.path.name}/tensorboard/train.learning_rate={train.learning_rate} "
                    f"train.batch_size={train.batch_size} seed={trial.config.seed}")
            assert {f"{name}/train", f"{name}/validation"} <= runs
        for trial in sweep.trials:
            train = trial.config.train
            (values,) = [v for (lr, bs), v in served.items()
                         if lr == pytest.approx(train.learning_rate) and bs == train.batch_size]
            last = trial.history.iloc[-1]
            assert values[("validation", "epoch_accuracy")] == pytest.approx(float(last["val_accuracy"]), rel=1e-5)
            assert values[("train", "epoch_loss")] == pytest.approx(float(last["loss"]), rel=1e-5)


def test_the_readmes_mlflow_ui_serves_the_default_store(tmp_path, monkeypatch):
    """A run tracked into the default store (`runs/../mlflow.db`, its files in `mlartifacts/`), then the
    README's `mlflow ui --backend-store-uri sqlite:///mlflow.db` started from that folder: its REST API
    lists the run with expkit's numbers, and the run's results.json downloads through it."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = {**sweep_config({}), "track": ["mlflow"]}
    del cfg["sweep"]
    run = api.run(cfg, runs_dir=tmp_path / "runs")
    assert (tmp_path / "mlflow.db").is_file()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [str(BIN / "mlflow"), "ui", "--backend-store-uri", "sqlite:///mlflow.db", "--host", "127.0.0.1",
            "--port", str(port), "--workers", "1"]
    with server(argv, f"{url}/health", tmp_path, tmp_path / "mlflow-ui.log"):
        with urllib.request.urlopen(f"{url}/api/2.0/mlflow/experiments/get-by-name?experiment_name=served",
                                    timeout=20) as response:
            experiment = json.loads(response.read())["experiment"]
        (found,) = post(f"{url}/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment["experiment_id"]]})["runs"]
        assert found["info"]["run_name"] == run.path.name and found["info"]["status"] == "FINISHED"
        metrics = {m["key"]: m["value"] for m in found["data"]["metrics"]}
        assert metrics["test_accuracy"] == pytest.approx(results(run.path)["test"]["accuracy"])
        with urllib.request.urlopen(f"{url}/get-artifact?path=results.json&run_uuid={found['info']['run_id']}",
                                    timeout=20) as response:
            assert json.loads(response.read()) == results(run.path)
