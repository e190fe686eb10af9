"""`expkit claims`: a claims file judged on runs (report/claims.py)."""

import subprocess
import sys

import pytest
import yaml
from scipy import stats

from expkit.errors import ConfigError
from expkit.report.claims import HOLDS, NOT_SHOWN, REVERSED, check_claims, load_claims
from test_report import REPO, write_run

GOOD = [0.85, 0.86, 0.84]   # best_val_accuracy of `good` over seeds 0, 1, 2
BAD = [0.80, 0.82, 0.79]


def study(root):
    """good and bad over three seeds each; `single` once: runs whose verdicts are known."""
    paths = []
    for name, accs in (("good", GOOD), ("bad", BAD), ("single", [0.9])):
        for seed, acc in enumerate(accs):
            paths.append(write_run(root / "runs" / name / f"seed{seed}", name=name, seed=seed,
                                   best=(acc, acc, 1 - acc, 1 - acc)))
    return paths


def claims_file(path, claims, **top):
    path.write_text(yaml.safe_dump({"source": "a test", **top, "claims": claims}, sort_keys=False))
    return path


THREE = [
    {"claim": "good beats bad", "a": "good", "b": "bad", "metric": "best_val_accuracy", "direction": "higher"},
    {"claim": "bad has the lower loss", "a": "bad", "b": "good", "metric": "best_val_loss", "direction": "lower",
     "must_hold": True},
    {"claim": "single beats good", "a": "single", "b": "good", "metric": "best_val_accuracy", "direction": "higher"},
]


def test_a_true_a_reversed_and_an_untestable_claim(tmp_path):
    paths = study(tmp_path)
    verdicts = check_claims(claims_file(tmp_path / "claims.yaml", THREE), paths)
    assert [v.verdict for v in verdicts] == [HOLDS, REVERSED, NOT_SHOWN]
    first = verdicts[0].test
    paired = stats.ttest_rel(GOOD, BAD)  # the same seeds on both sides: the paired test
    assert first["test"] == "paired" and first["p_value"] == pytest.approx(paired.pvalue)
    assert first["ci_low"] == pytest.approx(paired.confidence_interval(0.95).low)
    assert verdicts[2].test["note"] == "one seed: no test"
    assert [v.failed for v in verdicts] == [False, True, False]


def test_min_effect_and_a_published_number(tmp_path):
    paths = study(tmp_path)
    (tmp_path / "ref.csv").write_text("# published\nrun,status,best_val_accuracy\ngood,published,0.80\n")
    claims = [dict(THREE[0], min_effect=0.2),  # +0.0467 is real, but not 0.2 of it
              {"claim": "ours beat the paper", "a": "good", "b": "good (published)", "metric": "best_val_accuracy",
               "direction": "higher"}]
    verdicts = check_claims(claims_file(tmp_path / "claims.yaml", claims, reference=["ref.csv"]), paths)
    assert [v.verdict for v in verdicts] == [NOT_SHOWN, HOLDS]
    assert verdicts[1].test["test"] == "one-sample"
    assert verdicts[1].test["p_value"] == pytest.approx(stats.ttest_1samp(GOOD, 0.80).pvalue)


def test_cli_verdicts_and_exit_status(tmp_path):
    paths = [str(p) for p in study(tmp_path)]
    cmd = [sys.executable, "-m", "expkit", "claims"]
    failing = subprocess.run(cmd + [str(claims_file(tmp_path / "c.yaml", THREE)), *paths], capture_output=True,
                             text=True, cwd=REPO)
    assert failing.returncode == 1, failing.stderr
    lines = failing.stdout.splitlines()
    assert lines[2].startswith('| 1 | holds | "good beats bad" | good - bad | best_val_accuracy | higher | +0.0467 | [')
    assert lines[3].startswith('| 2 | **reversed** (must hold) | "bad has the lower loss" |')
    assert "| one seed: no test |  |  | 1 vs 3 |" in lines[4]
    assert lines[-2:] == ["3 claim(s) (intervals at 95%): 1 holds, 1 reversed, 1 not shown",
                          "must_hold: 1 claim(s) failed: #2 (reversed)"]
    passing = subprocess.run(cmd + [str(claims_file(tmp_path / "ok.yaml", [THREE[0], THREE[2]])), *paths],
                             capture_output=True, text=True, cwd=REPO)
    assert passing.returncode == 0, passing.stderr
    bad = claims_file(tmp_path / "bad.yaml", [dict(THREE[0], metric="val_acc")])
    mistake = subprocess.run(cmd + [str(bad), *paths], capture_output=True, text=True, cwd=REPO)
    assert mistake.returncode == 2 and mistake.stdout == ""
    assert mistake.stderr.startswith(f"expkit: error: {bad}: claims[0].metric: unknown metric 'val_acc'")
    assert "Traceback" not in mistake.stderr


@pytest.mark.parametrize("edit, where, message", [
    (lambda c: c["claims"][1].update(direction="up"), "claims[1].direction", "Input should be 'higher' or 'lower'"),
    (lambda c: c["claims"][0].update(b="badd"), "claims[0].b", "'badd' names no row of these runs; did you mean 'bad'?"),
    (lambda c: c["claims"][0].update(wrong=1), "claims[0].wrong", "unknown key"),
    (lambda c: c.update(significance=2), "significance", "less than 1"),
    (lambda c: c.update(reference=["nope.csv"]), "reference[0]", "no such file"),
    (lambda c: c["claims"][0].pop("metric"), "claims[0].metric", "required key is missing"),
])
def test_a_bad_claims_file_names_the_key_path(tmp_path, edit, where, message):
    paths = study(tmp_path)
    data = {"claims": [dict(c) for c in THREE]}
    edit(data)
    path = tmp_path / "claims.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as err:
        check_claims(path, paths)
    assert err.value.file == str(path) and err.value.path == where and message in err.value.message


def test_the_seed000_claims_file_is_valid():
    claims = load_claims(REPO / "configs" / "seed000" / "claims.yaml")
    assert len(claims.claims) >= 6 and not any(c.must_hold for c in claims.claims)
    for reference in claims.reference:
        assert (REPO / "configs" / "seed000" / reference).is_file()


def test_claims_on_tiny_trained_runs(tmp_path, tiny_config):
    """Real Keras runs: a model that learns (Adam 0.05) against one that barely moves (learning rate 1e-7), three seeds each."""
    import expkit

    paths = []
    for name, rate in (("learns", 0.05), ("frozen", 1e-7)):
        for seed in (0, 1, 2):
            config = dict(tiny_config, name=name, seed=seed)
            config["data"] = dict(tiny_config["data"], options=dict(tiny_config["data"]["options"], n_train=60, n_test=20))
            config["train"] = dict(tiny_config["train"], learning_rate=rate, epochs=2)
            paths.append(expkit.run(config, runs_dir=tmp_path / "runs").path)
    claims = [{"claim": "training lowers the loss", "a": "learns", "b": "frozen", "metric": "best_loss",
               "direction": "lower", "must_hold": True},
              {"claim": "a frozen model is as good", "a": "frozen", "b": "learns", "metric": "best_loss",
               "direction": "lower"}]
    verdicts = check_claims(claims_file(tmp_path / "claims.yaml", claims), paths)
    assert [(v.verdict, v.test["test"], v.test["seeds"]) for v in verdicts] == [
        (HOLDS, "paired", "3 vs 3"), (REVERSED, "paired", "3 vs 3")]
    assert not any(v.failed for v in verdicts)


def test_skip_missing_marks_claims_of_rows_not_run(tmp_path):
    """A study run in part: without --skip-missing a row no run has is one line naming the claim's key path;
    with it, that claim is 'not run' (counted, its rows named) and a must_hold one still fails the command."""
    paths = [str(p) for p in study(tmp_path)]
    claims = [THREE[0], {"claim": "later beats good", "a": "later", "b": "good", "metric": "best_val_accuracy",
                         "direction": "higher"}]
    path = claims_file(tmp_path / "c.yaml", claims)
    with pytest.raises(ConfigError) as info:
        check_claims(path, paths)
    assert info.value.path == "claims[1].a" and "'later' names no row of these runs" in info.value.message
    verdicts = check_claims(path, paths, skip_missing=True)
    assert [v.verdict for v in verdicts] == [HOLDS, "not run"] and verdicts[1].test["note"] == "no runs of 'later'"
    cmd = [sys.executable, "-m", "expkit", "claims", "--skip-missing"]
    out = subprocess.run(cmd + [str(path), *paths], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[3] == ('| 2 | not run | "later beats good" | later - good | best_val_accuracy | higher |  | '
                        "no runs of 'later' |  |  |  |")
    assert lines[-1] == "2 claim(s) (intervals at 95%): 1 holds, 0 reversed, 0 not shown, 1 not run"
    gate = claims_file(tmp_path / "gate.yaml", [THREE[0], dict(claims[1], must_hold=True)])
    failed = subprocess.run(cmd + [str(gate), *paths], capture_output=True, text=True, cwd=REPO)
    assert failed.returncode == 1 and failed.stdout.splitlines()[-1] == "must_hold: 1 claim(s) failed: #2 (not run)"
