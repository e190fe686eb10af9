import math

import pytest

from expkit.errors import ConfigError
from expkit.report.plots import plot_bars, plot_curves, plot_overlay, plot_sweep, use_log_scale
from expkit.report import collect_runs, comparison_table
from test_report import metric_rows, write_run, write_sweep

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > 10_000  # axes, lines and text, not an empty canvas
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


LRS = [10.0, 1.0, 0.1, 0.01, 0.001, 0.0001]


@pytest.fixture
def lr_sweep(tmp_path):
    trials = []
    for i, lr in enumerate(LRS):
        for seed in (0, 1):
            diverged = lr >= 10
            acc = 0.1 if diverged else 0.85 - 0.05 * abs(math.log10(lr) + 2) + 0.01 * seed
            loss = math.nan if diverged else 0.4 + 0.1 * abs(math.log10(lr) + 2)
            trials.append((f"t{i}{seed}", {"train.learning_rate": lr}, seed, {
                "best": (acc, acc, loss, loss), "status": "diverged" if diverged else "done",
                "fit_seconds": 10.0 + i, "metrics": metric_rows([loss + 0.3, loss + 0.1, loss], [acc - 0.1, acc, acc])}))
    return write_sweep(tmp_path, trials)


@pytest.mark.parametrize("values, log", [
    ([10.0, 1.0, 0.5, 0.1, 0.01, 1e-7], True),
    ([0.001, 0.1], True),
    ([0.001, 0.099], False),
    ([16, 32, 64, 128], False),
    ([0.0, 0.01, 1.0], False),       # zero has no place on a log axis
    ([-1.0, 10.0, 1000.0], False),
    ([0.001, float("nan"), 1.0], True),
    ([], False),
])
def test_log_axis_decision(values, log):
    assert use_log_scale(values) is log


def test_plot_curves(tmp_path):
    run = write_run(tmp_path / "r", best=(0.8, 0.8, 0.5, 0.5), metrics=metric_rows([1.0, 0.7, 0.5], [0.6, 0.7, 0.8]))
    out = plot_curves(run / "metrics.csv", tmp_path / "out" / "curves.png", "cnn1")
    assert out == tmp_path / "out" / "curves.png"
    assert_png(out)


def test_plot_curves_needs_the_file(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        plot_curves(tmp_path / "metrics.csv", tmp_path / "curves.png", "x")


def test_plot_sweep_with_error_bars_and_a_diverged_trial(lr_sweep, tmp_path):
    table = comparison_table(collect_runs([lr_sweep]))
    assert table["best_val_accuracy_std"].notna().any()
    assert_png(plot_sweep(table, "train.learning_rate", tmp_path / "sweep.png"))


def test_plot_sweep_refuses_a_missing_or_text_key(lr_sweep, tmp_path):
    table = comparison_table(collect_runs([lr_sweep]))
    with pytest.raises(ConfigError, match="no column 'train.batch_size'"):
        plot_sweep(table, "train.batch_size", tmp_path / "x.png")
    table["train.learning_rate"] = "adam"
    with pytest.raises(ConfigError, match="needs a numeric key"):
        plot_sweep(table, "train.learning_rate", tmp_path / "x.png")


def test_plot_overlay(lr_sweep, tmp_path):
    dirs = [(lr_sweep / f"t{i}0", f"lr={lr}") for i, lr in enumerate(LRS)] + [(lr_sweep / "pending", "pending")]
    assert_png(plot_overlay(dirs, tmp_path / "overlay.png"))
    with pytest.raises(ConfigError, match="no run logged 'val_acc'.*val_accuracy"):
        plot_overlay(dirs, tmp_path / "overlay.png", metric="val_acc")


def test_plot_bars(lr_sweep, tmp_path):
    table = comparison_table(collect_runs([lr_sweep]), baseline="sweep_lr[learning_rate=0.01]")
    assert_png(plot_bars(table, tmp_path / "bars.png"))
    assert_png(plot_bars(table, tmp_path / "loss.png", metric="best_val_loss"))


def test_published_bars_are_grey_and_hatched_beside_ours(tmp_path):
    """A `--reference` row is drawn in its own grey (with a legend), not in our runs' blue."""
    import numpy as np
    import pandas as pd
    from matplotlib.image import imread

    def grey_pixels(png):
        rgb = imread(png)[..., :3]
        return int((np.abs(rgb - 0.75).max(axis=-1) < 0.02).sum())

    ours = {"run": "cnn1", "status": "done", "best_val_accuracy": 0.90}
    published = {"run": "cnn1 (published)", "status": "published", "best_val_accuracy": 0.88}
    assert_png(plot_bars(pd.DataFrame([ours, published]), tmp_path / "with.png"))
    assert_png(plot_bars(pd.DataFrame([ours, {**published, "status": "done"}]), tmp_path / "without.png"))
    with_, without = grey_pixels(tmp_path / "with.png"), grey_pixels(tmp_path / "without.png")
    assert with_ > 20 * without, (with_, without)


def test_a_sweep_on_two_datasets_draws_a_line_per_dataset(tmp_path):
    """The same rates on two datasets in one folder zig-zagged as one line; `series` draws one line
    (its own colour, a legend entry) per dataset."""
    import numpy as np
    import pandas as pd
    from matplotlib.image import imread

    rows = [{"run": f"s[lr={lr}]", "status": "done", "train.learning_rate": lr, "data.dataset": data,
             "best_val_accuracy": acc, "best_val_loss": 1 - acc, "fit_seconds": 3.0}
            for data, base in (("fashion_mnist", 0.8), ("fashion_mnist_sample", 0.6))
            for lr, acc in ((0.1, base), (0.01, base + 0.05), (0.001, base - 0.1))]

    def orange_pixels(png):  # tab:orange, the colour cycle's second line
        rgb = imread(png)[..., :3]
        return int((np.abs(rgb - np.array([1.0, 0.498, 0.055])).max(axis=-1) < 0.05).sum())

    table = pd.DataFrame(rows)
    one = plot_sweep(table, "train.learning_rate", tmp_path / "one.png")
    two = plot_sweep(table, "train.learning_rate", tmp_path / "two.png", series=["data.dataset"])
    assert_png(two)
    assert orange_pixels(two) > 20 * max(1, orange_pixels(one))
