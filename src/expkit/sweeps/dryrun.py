"""`expkit run SWEEP --dry-run`: every trial's model built and checked (no data, no training), the trial
table, and what the run would really do (which trials form vectorised groups, where everything trains)."""

from __future__ import annotations

import sys
from pathlib import Path

from ..config import ExperimentConfig
from .trials import expand_sweep
from .work import preflight


def dry_run(cfg: ExperimentConfig, out=None, *, device: str = "auto", jobs: int | None = None,
            executor: str | None = None) -> list[dict]:
    """Build and check every trial's model and print the trial table and the execution plan."""
    from ..backend import current
    from ..models import count_params, output_shape
    from .driver import execution_lines
    from .vectorize.plan import dry_run_groups, model_shape

    out = out or sys.stdout  # looked up per call, so a redirected stdout is honoured
    if cfg.sweep.space:
        return _dry_run_search(cfg, out)
    trials = expand_sweep(cfg)

    def measure(model):
        return count_params(model)[0], str(output_shape(model)), model_shape(model)

    measured = preflight(trials, measure=measure)
    rows = [{"trial": i, "id": t.id, "values": t.label(), "seed": t.seed, "params": measured[t.id][0],
             "output": measured[t.id][1], **({"fold": t.fold} if t.fold is not None else {})}
            for i, t in enumerate(trials, 1)]
    folds = cfg.sweep.folds is not None
    on_cpu = device == "cpu" or not current().gpus()
    groups, group_lines = dry_run_groups(cfg, trials, {k: v[2] for k, v in measured.items()}, on_cpu=on_cpu)
    for r in rows:
        r["group"] = groups[r["id"]]
    width = max(len(r["values"]) for r in rows)
    fold_head = f"  {'fold':>4}" if folds else ""
    print(f"{'#':>3}  {'id':10}  {'values':{width}}  {'seed':>4}{fold_head}  {'group':>5}  {'params':>10}  output", file=out)
    for r in rows:
        fold = f"  {r['fold']:>4}" if folds else ""
        print(f"{r['trial']:>3}  {r['id']:10}  {r['values']:{width}}  {r['seed']:>4}{fold}  {r['group']:>5}  "
              f"{r['params']:>10,}  {r['output']}", file=out)
    print(f"{len(rows)} trials; every model built.", file=out)
    for line in group_lines:
        print(line, file=out)
    grouped = sum(1 for r in rows if r["group"] != "-")
    for line in execution_lines(cfg, trials, jobs=jobs, executor=executor, grouped=grouped):
        print(line, file=out)
    return rows


def _dry_run_search(cfg: ExperimentConfig, out) -> list[dict]:
    """A search has no trial list before it runs: the space and the budget, and the model of one
    configuration (the space's lowest values, or first choices) built and checked."""
    from ..models import count_params
    from .search import Search
    from .trials import configuration_trials

    search = Search(cfg, Path("."))
    for line in search.describe():
        print(line, file=out)
    corner = {k: (d.choices[0] if d.kind == "choice" else d.low) for k, d in search.space.items()}
    trials = configuration_trials(cfg, corner)[:1]
    measured = preflight(trials, measure=lambda model: count_params(model)[0])
    print(f"one configuration ({trials[0].label()}) built: {measured[trials[0].id]:,} parameters; nothing trained",
          file=out)
    return [{"trial": 1, "id": trials[0].id, "values": trials[0].label(), "seed": trials[0].seed,
             "params": measured[trials[0].id]}]
