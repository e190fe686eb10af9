"""The `expkit` command. Thin subcommands; TensorFlow is imported only by those that train or build."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from .errors import ConfigError, RunWriteError


def _load(args):
    from .config import load_config

    return load_config(args.config, args.set or [])


def cmd_run(args) -> int:
    from . import api
    from .backend import import_quietly

    cfg = _load(args)
    if args.dry_run:
        import_quietly()
        if cfg.sweep is None:
            return cmd_summary(args, cfg)
        from .trials import dry_run

        dry_run(cfg)
        return 0
    if cfg.sweep is not None:
        result = api.sweep(cfg, runs_dir=args.runs_dir, device=args.device, fail_fast=args.fail_fast, log=sys.stderr)
        summary = ", ".join(f"{n} {s}" for s, n in sorted(result.counts.items()))
        print(f"sweep {cfg.name}: {summary}; table in {result.path / 'results.md'}", file=sys.stderr)
        print(result.path)
        unfinished = set(result.counts) - {"done", "diverged"}
        return 1 if unfinished else 0
    run = api.run(cfg, runs_dir=args.runs_dir, device=args.device)
    record = run.record
    test = record.test or {}
    print(f"{cfg.name}: {record.status}; best val_accuracy {record.best['val_accuracy']:.4f}, "
          f"test accuracy {test.get('accuracy', float('nan')):.4f}, {record.fit_seconds:.1f} s", file=sys.stderr)
    print(run.path)
    return 0


def cmd_summary(args, cfg=None) -> int:
    from .backend import import_quietly

    cfg = cfg or _load(args)
    import_quietly()
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
    from .report import collect_runs, comparison_table, format_table

    table = comparison_table(collect_runs([Path(p) for p in args.paths]), only_changed=args.only_changed,
                             baseline=args.baseline)
    text = format_table(table, args.format)
    if args.output:
        write_text_atomic(args.output, text)
    else:
        sys.stdout.write(text)
    if args.plot:
        from .plots import plot_bars

        plot_bars(table, args.plot, metric=args.metric)
    return 0


def cmd_diff(args) -> int:
    from .diff import diff_tables

    result = diff_tables(args.old, args.new, fail_on_worse=args.fail_on_worse, tolerance=args.tolerance,
                         allow_removed=args.allow_removed)
    sys.stdout.write(result.text if result.text.endswith("\n") else result.text + "\n")
    return 1 if result.worse else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="expkit", description="Keras experiments from YAML: run, sweep, compare.")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"expkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(p):
        p.add_argument("config", help="experiment YAML file")
        p.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override a key (dotted path, list index as a number; the value is YAML); repeatable")
        return p

    p = with_config(sub.add_parser("run", help="train an experiment or a sweep; prints the run (or sweep) folder last"))
    p.add_argument("--runs-dir", default="runs", help="where run folders go (default: runs/)")
    p.add_argument("--device", choices=["auto", "cpu", "gpu"], default="auto", help="where to train (default: auto)")
    p.add_argument("--dry-run", action="store_true", help="validate and build every model; no training")
    p.add_argument("--fail-fast", action="store_true", help="sweeps: stop at the first failed trial")
    p.set_defaults(func=cmd_run)

    p = with_config(sub.add_parser("summary", help="validate and build the model, print its Keras summary (no data, no training)"))
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
    p.add_argument("--output", "-o", metavar="FILE", help="write the table here instead of standard output")
    p.add_argument("--plot", metavar="PNG", help="also draw a bar chart of the runs")
    p.add_argument("--metric", default="best_val_accuracy", help="metric of the bar chart (default: best_val_accuracy)")
    p.set_defaults(func=cmd_table)

    p = sub.add_parser("diff", help="what changed between two results.csv tables")
    p.add_argument("old")
    p.add_argument("new")
    p.add_argument("--fail-on-worse", metavar="METRIC", help="exit 1 when METRIC got worse by more than --tolerance")
    p.add_argument("--tolerance", type=float, default=0.0)
    p.add_argument("--allow-removed", action="store_true",
                   help="with --fail-on-worse: rows missing from the new table (or no match at all) do not fail the gate")
    p.set_defaults(func=cmd_diff)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C (the run is recorded as interrupted), exiting 128 + 15."""


def _sigterm(signum, frame):
    raise Terminated


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _sigterm)
    try:
        return args.func(args)
    except ConfigError as exc:
        if getattr(args, "config", None):
            exc = exc.with_file(args.config)
        print(f"expkit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print("expkit: interrupted; finished work is kept, the run folder is marked 'interrupted'", file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130
    except RunWriteError as exc:
        print(f"expkit: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
