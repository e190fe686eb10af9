"""examples/quickstart.ipynb, executed top to bottom with nbclient on a real IPython kernel: this
venv's Python, importing this checkout's expkit, in a kernelspec written to a temporary folder."""

import json
import os
import sys
from pathlib import Path

import pytest

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")
pytest.importorskip("ipykernel")
REPO = Path(__file__).resolve().parents[1]


def text(cell) -> str:
    parts = []
    for out in cell.outputs:
        parts.append(out.get("text", ""))
        parts.extend(str(v) for k, v in out.get("data", {}).items() if k.startswith("text/"))
    return "\n".join(parts)


def test_the_quickstart_notebook_runs_and_shows_history_table_and_plot(tmp_path, monkeypatch):
    spec = tmp_path / "jupyter" / "kernels" / "expkit-test"
    spec.mkdir(parents=True)
    env = {"PYTHONPATH": str(REPO / "src"), "EXPKIT_OFFLINE": "1", "KERAS_BACKEND": os.environ["KERAS_BACKEND"],
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "expkit test", "language": "python", "env": env}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))  # where jupyter_client finds kernelspecs
    nb = nbformat.read(REPO / "examples" / "quickstart.ipynb", as_version=4)
    nbclient.NotebookClient(nb, kernel_name="expkit-test", timeout=120,
                            resources={"metadata": {"path": str(tmp_path)}}).execute()

    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(o.get("output_type") != "error" for c in code for o in c.outputs)
    assert sys.executable in text(code[0])  # the kernel is this venv's Python
    run_dir = next((tmp_path / "runs" / "quickstart_nb").iterdir())
    history = (run_dir / "metrics.csv").read_text().splitlines()
    assert "done 3 epochs" in text(code[1])
    last_val = history[-1].split(",")[history[0].split(",").index("val_accuracy")]
    assert f"{float(last_val):.6f}"[:5] in text(code[1])  # the history table holds the recorded numbers
    table = text(code[2])
    assert "<table" in table and all(f"{lr}" in table for lr in ("0.03", "0.01", "0.001"))
    (image,) = [o for o in code[3].outputs if "image/png" in o.get("data", {})]
    assert len(image["data"]["image/png"]) > 1000
