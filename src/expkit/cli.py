"""The `expkit` command. Thin subcommands; TensorFlow is imported only by those that train or build."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from .errors import ConfigError, RunWriteError
from .stopping import Terminated, interrupt_on_sigint, on_sigterm


def _load(args):
    from .config import load_config

    backend = getattr(args, "backend", None)  # --backend: an override, validated like --set backend=...
    track = _tracks(getattr(args, "track", None))  # --track: an override of `track`, validated like it
    return load_config(args.config, [*(args.set or []), *([f"backend={backend}"] if backend else []),
                                     *([("track", track)] if track is not None else [])])


def _tracks(values: list[str] | None) -> list[str] | None:
    """--track tensorboard,mlflow (repeatable) -> the names; `none` turns the config's trackers off."""
    if values is None:
        return None
    names = [n.strip() for v in values for n in v.split(",") if n.strip()]
    return [] if names == ["none"] else names


def cmd_resume(args) -> int:
    from . import api

    if args.config or args.set or getattr(args, "backend", None):
        raise ConfigError("--resume continues a run with the config in its folder: give no config file, "
                          "--set or --backend")
    run = api.resume(args.resume, device=args.device, track=_tracks(args.track))
    _print_run(run)
    return 0


def _print_run(run) -> None:
    record = run.record
    test = record.test or {}
    print(f"{record.name}: {record.status}; best val_accuracy {record.best['val_accuracy']:.4f}, "
          f"test accuracy {test.get('accuracy', float('nan')):.4f}, {record.fit_seconds:.1f} s", file=sys.stderr)
    print(run.path)


def cmd_run(args) -> int:
    from . import api
    from .backend import activate
    from .repro import config_source

    if args.resume:
        return cmd_resume(args)
    if args.config is None:
        raise ConfigError("expkit run needs a config file (or --resume RUN_DIR to continue an interrupted run)")
    cfg = _load(args)
    executor = args.executor or (cfg.sweep.executor if cfg.sweep is not None else None)
    if args.address is not None and executor != "ray":
        raise ConfigError("--address names a Ray cluster: it needs --executor ray (or sweep.executor: ray)")
    if args.dry_run:
        activate(cfg.backend, device=args.device)
        if cfg.sweep is None:
            return cmd_summary(args, cfg)
        from .sweeps.dryrun import dry_run

        dry_run(cfg, device=args.device, jobs=args.jobs, executor=args.executor)
        return 0
    if cfg.sweep is not None:
        with config_source(args.config):
            result = api.sweep(cfg, runs_dir=args.runs_dir, device=args.device, fail_fast=args.fail_fast,
                               log=sys.stderr, jobs=args.jobs, executor=args.executor, address=args.address)
        summary = ", ".join(f"{n} {s}" for s, n in sorted(result.counts.items()))
        print(f"sweep {cfg.name}: {summary}; table in {result.path / 'results.md'}", file=sys.stderr)
        if cfg.sweep.space and (best := result.best) is not None:
            objective = cfg.sweep.search.objective
            print(f"best: {best['run']} ({objective} {best[objective]:.4f})", file=sys.stderr)
        print(result.path)
        unfinished = set(result.counts) - {"done", "diverged", "pruned"}
        return 1 if unfinished else 0
    with config_source(args.config):
        run = api.run(cfg, runs_dir=args.runs_dir, device=args.device)
    _print_run(run)
    return 0


def cmd_summary(args, cfg=None) -> int:
    from .backend import activate

    cfg = cfg or _load(args)
    activate(cfg.backend)  # KERAS_BACKEND is set before anything imports Keras
    from .models import summary_text
    from .runner import prepare

    _, model = prepare(cfg, load_data=False)
    sys.stdout.write(summary_text(model))
    return 0


def cmd_config(args) -> int:
    import yaml

    from .files import ConfigDumper

    cfg = _load(args)
    sys.stdout.write(yaml.dump(cfg.to_dict(), Dumper=ConfigDumper, sort_keys=False, default_flow_style=None, width=100))
    return 0


def cmd_schema(args) -> int:
    import json

    from .config import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0


def cmd_datasets(args) -> int:
    from .data import DATASETS

    for name in DATASETS.names():
        print(name)
    return 0


def cmd_table(args) -> int:
    from .files import write_text_atomic
    from .report import add_differences, collect_runs, comparison_table, format_table, with_reference

    if args.reference_differences and not args.reference:
        raise ConfigError("--reference-differences compares with published rows: give them with --reference FILE")
    notes: list[str] = []
    runs = collect_runs([Path(p) for p in args.paths], notes=notes)
    for note in notes:
        print(note, file=sys.stderr)
    table = comparison_table(runs, only_changed=args.only_changed,
                             baseline=args.baseline)
    for reference in args.reference or []:
        left_out: list[str] = []
        table = with_reference(table, reference, differences=args.reference_differences, every=args.reference_all,
                               left_out=left_out)
        if left_out:
            print(f"--reference {reference}: {len(left_out)} published row(s) stand beside none of this table's rows "
                  f"and are left out ({', '.join(left_out)}); --reference-all shows them", file=sys.stderr)
    if args.difference:
        table = add_differences(table, args.difference)
    if args.per_class:
        from .report.perclass import parse_scores, per_class_columns

        table = per_class_columns(table, parse_scores(args.per_class))
    text = format_table(table, args.format)
    tests_text = ""
    if args.compare or args.compare_all:
        from .report.stats import format_tests, table_tests

        tests = table_tests(runs, table, compare=args.compare, compare_all=args.compare_all, baseline=args.baseline,
                            test=args.test)
        tests_text = format_tests(tests, args.format)
        if args.output and args.format == "csv":  # its own file: the table's CSV stays one table for `expkit diff`
            tests_path = Path(args.output).with_suffix(".tests.csv")
            write_text_atomic(tests_path, tests_text)
            print(f"tests: {tests_path}", file=sys.stderr)
            tests_text = ""
    if tests_text:
        text += "\n" + tests_text
    if args.output:
        write_text_atomic(args.output, text)
        if args.format == "csv":  # what the runs were made with, for `expkit diff` (report/provenance.py)
            from .report.provenance import write_sidecar

            write_sidecar(args.output, table.to_dict("records"))
    else:
        sys.stdout.write(text)
    if args.plot:
        from .report.plots import plot_bars

        plot_bars(table, args.plot, metric=args.metric)
    return 0


def cmd_export(args) -> int:
    from .tracking.export import export

    export(args.tracker, [Path(p) for p in args.paths], sys.stderr)
    return 0


def cmd_report(args) -> int:
    import time

    from .report.html import write_html_report

    out = Path(args.output)
    if out.is_dir():
        raise ConfigError(f"-o {out}: is a folder; name the report's file (e.g. {out / 'report.html'})")
    blocker = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise ConfigError(f"-o {out}: {blocker} is a file, not a folder")
    began = time.perf_counter()
    path = write_html_report([Path(p) for p in args.paths], args.output, baseline=args.baseline, title=args.title,
                             compare=args.compare, compare_all=args.compare_all, test=args.test)
    print(f"report: {path} ({path.stat().st_size / 1e6:.1f} MB, {time.perf_counter() - began:.1f} s)", file=sys.stderr)
    print(path)
    return 0


def cmd_diff(args) -> int:
    from .diff import diff_tables

    result = diff_tables(args.old, args.new, fail_on_worse=args.fail_on_worse, tolerance=args.tolerance,
                         allow_removed=args.allow_removed, significance=args.significance)
    sys.stdout.write(result.text if result.text.endswith("\n") else result.text + "\n")
    return 1 if result.worse else 0


def cmd_claims(args) -> int:
    from .report.claims import check_claims, format_verdicts, load_claims

    significance = load_claims(args.claims_file).significance
    verdicts = check_claims(args.claims_file, args.paths, skip_missing=args.skip_missing)
    sys.stdout.write(format_verdicts(verdicts, significance))
    return 1 if any(v.failed for v in verdicts) else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="expkit", description="Keras experiments from YAML: run, sweep, compare.")
    from .version import __version__

    parser.add_argument("--version", action="version", version=f"expkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(p, optional: bool = False):
        p.add_argument("config", nargs="?" if optional else None, help="experiment YAML file")
        p.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override a key (dotted path, list index as a number; the value is YAML); repeatable")
        return p

    p = with_config(sub.add_parser("run", help="train an experiment or a sweep; prints the run (or sweep) folder last"),
                    optional=True)
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue an interrupted run in its folder from its last finished epoch (no config file)")
    p.add_argument("--track", action="append", metavar="NAMES",
                   help="trackers, overriding the config's `track`: tensorboard, mlflow, comma-separated or "
                   "repeated; none for no tracker")
    p.add_argument("--runs-dir", default="runs", help="where run folders go (default: runs/)")
    p.add_argument("--device", choices=["auto", "cpu", "gpu"], default="auto", help="where to train (default: auto)")
    p.add_argument("--backend", choices=["tensorflow", "jax", "torch"],
                   help="Keras backend, overriding the config's `backend` (default: the config's, else $KERAS_BACKEND, else tensorflow)")
    p.add_argument("--dry-run", action="store_true", help="validate and build every model; no training")
    p.add_argument("--fail-fast", action="store_true", help="sweeps: stop at the first failed trial")
    p.add_argument("--jobs", type=int, metavar="N",
                   help="sweeps: train N trials at once in worker processes, each with its share of the cores "
                   "(default: sweep.jobs, 1)")
    p.add_argument("--executor", choices=["local", "ray"],
                   help="sweeps: local (this machine) or ray (each trial a Ray task; default: sweep.executor)")
    p.add_argument("--address", metavar="ADDR",
                   help="with --executor ray: the Ray cluster (default: sweep.address, $RAY_ADDRESS, else a local one)")
    p.set_defaults(func=cmd_run)

    p = with_config(sub.add_parser("summary", help="validate and build the model, print its Keras summary (no data, no training)"))
    p.add_argument("--backend", choices=["tensorflow", "jax", "torch"], help="Keras backend, overriding the config's `backend`")
    p.set_defaults(func=cmd_summary)
    p = with_config(sub.add_parser("config", help="print the resolved config with every default filled in"))
    p.set_defaults(func=cmd_config)
    sub.add_parser("schema", help="print the config's JSON Schema (for editors)").set_defaults(func=cmd_schema)
    sub.add_parser("datasets", help="list the dataset names").set_defaults(func=cmd_datasets)

    p = sub.add_parser("table", help="one comparison table from runs and sweeps")
    p.add_argument("paths", nargs="+", help="run folders, runs/<name> folders or sweep folders")
    p.add_argument("--format", choices=["markdown", "csv", "latex"], default="markdown")
    p.add_argument("--only-changed", action="store_true", help="add the config keys whose values differ between rows")
    p.add_argument("--baseline", metavar="RUN", help="add difference rows against this run (label or path)")
    p.add_argument("--reference", action="append", metavar="CSV",
                   help="add a report's published numbers as rows '<run> (published)' beside ours "
                   "(configs/reference/*.csv); repeatable")
    p.add_argument("--reference-all", action="store_true",
                   help="with --reference: also the published rows that stand beside none of this table's rows")
    p.add_argument("--reference-differences", action="store_true",
                   help="with --reference: add 'Difference (<run> - <run> (published))' for each run that has one")
    p.add_argument("--difference", action="append", metavar="A-B",
                   help="add the row 'Difference (A - B)', A minus B, for two row labels "
                   "(published ones included); repeatable")
    p.add_argument("--compare", nargs=2, action="append", metavar=("A", "B"),
                   help="add tests of A against B per metric: difference of means, 95%% CI, p-value over seeds "
                   "(needs scipy: the `stats` extra); repeatable")
    p.add_argument("--compare-all", action="store_true", help="add tests of every row against --baseline")
    p.add_argument("--test", choices=["auto", "welch", "paired", "bootstrap"], default="auto",
                   help="with --compare: Welch's t-test, the paired t-test over common seeds, or a bootstrap "
                   "interval with a permutation p-value (default auto: paired when the seeds match, else welch)")
    p.add_argument("--per-class", metavar="SCORES", help="add a column per class and score (f1, precision, recall, "
                   "support; comma-separated): the test set's, from results.json")
    p.add_argument("--output", "-o", metavar="FILE", help="write the table here instead of standard output "
                   "(csv: the tests go to FILE's stem + .tests.csv)")
    p.add_argument("--plot", metavar="PNG", help="also draw a bar chart of the runs")
    p.add_argument("--metric", default="best_val_accuracy", help="metric of the bar chart (default: best_val_accuracy)")
    p.set_defaults(func=cmd_table)

    p = sub.add_parser("diff", help="what changed between two results.csv tables")
    p.add_argument("old")
    p.add_argument("new")
    p.add_argument("--fail-on-worse", metavar="METRIC", help="exit 1 when METRIC got worse by more than --tolerance")
    p.add_argument("--tolerance", type=float, default=0.0)
    p.add_argument("--significance", type=float, metavar="LEVEL",
                   help="with --fail-on-worse: fail only on rows worse by Welch's test over their seeds at this "
                   "level (0.05; needs scipy); rows with one seed on a side are judged by --tolerance")
    p.add_argument("--allow-removed", action="store_true",
                   help="with --fail-on-worse: rows missing from the new table (or no match at all) do not fail the gate")
    p.set_defaults(func=cmd_diff)

    p = sub.add_parser("claims", help="a study's claims (claims.yaml) judged on its runs: holds / reversed / not shown; "
                       "exit 1 when a must_hold claim fails")
    p.add_argument("claims_file", metavar="FILE", help="the claims file (claims.yaml)")
    p.add_argument("paths", nargs="+", metavar="RUNS", help="run folders, runs/<name> folders or sweep folders")
    p.add_argument("--skip-missing", action="store_true",
                   help="a claim whose rows have no runs here is 'not run' (a must_hold one fails) instead of an error")
    p.set_defaults(func=cmd_claims)

    p = sub.add_parser("export", help="record existing run folders in TensorBoard or MLflow, as `track` would have")
    p.add_argument("tracker", choices=["tensorboard", "mlflow"])
    p.add_argument("paths", nargs="+", metavar="RUNS", help="run folders, runs/<name> folders, sweep folders or runs/")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("report", help="one self-contained HTML page: the table, the plots, each run's curves and config")
    p.add_argument("paths", nargs="+", metavar="RUNS_OR_SWEEP", help="run folders, runs/<name> folders or sweep folders")
    p.add_argument("--output", "-o", metavar="HTML", default="report.html", help="the page to write (default: report.html)")
    p.add_argument("--baseline", metavar="RUN", help="the run others' configs are compared with (label or path; "
                   "default: the first)")
    p.add_argument("--title", help="the page's title (default: the names of the runs)")
    p.add_argument("--compare", nargs=2, action="append", metavar=("A", "B"),
                   help="add tests of A against B over their seeds, as `expkit table --compare`; repeatable")
    p.add_argument("--compare-all", action="store_true", help="add tests of every row against the baseline")
    p.add_argument("--test", choices=["auto", "welch", "paired", "bootstrap"], default="auto",
                   help="the test of --compare (default auto: paired when the seeds match, else welch)")
    p.set_defaults(func=cmd_report)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        from .repro import command_source, config_source

        # results.json's `command`; Ctrl-C noted like SIGTERM, so that a dropped one is raised again;
        # the config file named for every command, so `summary` and `--dry-run` find user modules beside it
        with command_source(None if argv is None else ["expkit", *argv]), interrupt_on_sigint(), \
                config_source(getattr(args, "config", None)):
            return args.func(args)
    except ConfigError as exc:
        if getattr(args, "config", None):
            exc = exc.with_file(args.config)
        print(f"expkit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(f"expkit: {_interrupted_message(args, exc)}", file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130
    except RunWriteError as exc:
        print(f"expkit: error: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)  # a caller's own (main() called in-process)


def _interrupted_message(args, exc: BaseException) -> str:
    """Say what was stopped: a run or sweep folder only when one was actually marked, with how to go on."""
    kind, folder = getattr(exc, "marked_folder", (None, None))
    if kind == "run":
        return (f"interrupted; finished work is kept, the run folder {folder} is marked 'interrupted'; "
                f"continue it with: expkit run --resume {folder}")
    if kind == "sweep":
        return (f"interrupted; finished trials are kept in the sweep folder {folder}, running ones are marked "
                f"'interrupted'; continue it by running the same command again (finished trials are skipped)")
    return f"interrupted: 'expkit {args.command}' stopped before writing any run folder"


def console() -> None:
    """The `expkit` command. After an interrupt the records are written (each file whole, fsynced),
    so the process ends at once: an interpreter teardown behind a backend op cut short can hang."""
    code = main()
    if code in (130, 143):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    console()
