"""A study's conclusions as data: a claims file (`claims.yaml`) checked against its runs (`expkit claims`).

Not to be confused with a sweep's trial claims (runfolder/claims.py, which process trains a trial).
Each claim names two rows of the study's table (`a`, `b`, labels as `expkit table` prints them; `b` may
be a published row `<run> (published)` from the file's `reference` files), a metric, the direction the
report states (`higher`: a's metric is higher than b's) and optionally a minimum effect. Its verdict
comes from the test between the two rows (report/stats.py) at the file's significance level, through
the confidence interval of a - b at 1 - significance:

- `holds`: the interval lies on the claimed side, beyond `min_effect`;
- `reversed`: the interval lies wholly on the other side of 0;
- `not shown`: anything else: the interval holds 0 (or does not clear `min_effect`), or a row has one
  seed (`one seed: no test`).

A claim marked `must_hold` that does not hold makes `expkit claims` exit 1, so CI can gate on a study's
conclusions; a mistake in the file is one ConfigError naming its key path (exit 2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import ConfigError, format_path
from ..registry import did_you_mean
from .formatting import escape_markdown, format_number
from .stats import TESTED, compare_values, format_p, published_rows, seed_values

HOLDS, REVERSED, NOT_SHOWN = "holds", "reversed", "not shown"
NOT_RUN = "not run"  # --skip-missing: a row of the claim has no runs among those given (a study run in part)


class Claim(BaseModel):
    model_config = ConfigDict(extra="forbid")

    claim: str = Field(description="the sentence the report states, quoted")
    a: str = Field(description="the row the claim is about: a label of the study's table")
    b: str = Field(description="the row it is compared with: a label, or '<run> (published)' from `reference`")
    metric: str = Field(description="a metric column with a direction: " + ", ".join(TESTED))
    direction: Literal["higher", "lower"] = Field(description="a's metric is higher (or lower) than b's")
    min_effect: float = Field(0.0, ge=0, allow_inf_nan=False,
                              description="how much higher (or lower) a must be for the claim to hold")
    must_hold: bool = Field(False, description="a claim that does not hold makes `expkit claims` exit 1")
    test: Literal["auto", "welch", "paired", "bootstrap"] | None = Field(
        None, description="this claim's test (default: the file's `test`)")

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        if value not in TESTED:
            raise ValueError(f"unknown metric '{value}'{did_you_mean(value, TESTED)} (known: {', '.join(TESTED)})")
        return value


class ClaimsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str = Field("", description="where the claims come from (a report, a section)")
    significance: float = Field(0.05, gt=0, lt=1, description="the test's level; intervals at 1 - significance")
    test: Literal["auto", "welch", "paired", "bootstrap"] = Field(
        "auto", description="auto: paired when both rows ran the same seeds, else welch")
    reference: list[str] = Field(default_factory=list,
                                 description="published-number files (configs/reference/*.csv), relative to this file")
    claims: list[Claim] = Field(min_length=1, description="the claims, each checked on its own")


@dataclass
class Verdict:
    number: int                  # 1-based, as the file lists them
    claim: Claim
    verdict: str                 # HOLDS, REVERSED, NOT_SHOWN, or NOT_RUN (only with skip_missing)
    test: dict                   # stats.compare_values' row: difference, ci_low, ci_high, p_value, test, seeds, note

    @property
    def failed(self) -> bool:
        return self.claim.must_hold and self.verdict != HOLDS


def load_claims(path: str | Path) -> ClaimsFile:
    """The claims file, validated; a mistake is one ConfigError naming the file and key path."""
    from ..files import read_yaml_file

    data = read_yaml_file(Path(path))
    if not isinstance(data, dict):
        raise ConfigError("expected a mapping with a `claims` list", file=path)
    try:
        return ClaimsFile.model_validate(data)
    except ValidationError as exc:
        raise _key_path_error(exc, path) from None


def _key_path_error(exc: ValidationError, file) -> ConfigError:
    """The first problem pydantic found, as one line naming its key path (config/ does the same for a config;
    its helper is not imported here: config/ imports the trackers, which import report/)."""
    errors = exc.errors()
    err = errors[0]
    loc = list(err["loc"])
    if err["type"] == "extra_forbidden":
        model = Claim if len(loc) > 2 and loc[0] == "claims" else ClaimsFile
        known = list(model.model_fields)
        message = f"unknown key{did_you_mean(loc[-1], known)} (known: {', '.join(known)})"
    elif err["type"] == "missing":
        message = "required key is missing"
    else:
        message = err["msg"].removeprefix("Value error, ")
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    return ConfigError(message + more, file=file, path=format_path(loc))


def check_claims(path: str | Path, runs, *, skip_missing: bool = False) -> list[Verdict]:
    """Each claim of the file at `path` judged on `runs` (run, run-name and sweep folders, as `expkit table` reads).
    A claim naming a row none of the runs has is a ConfigError naming its key path, or with `skip_missing`
    (a study run in part) the verdict `not run`, which fails a must_hold claim."""
    from .collect import collect_runs
    from .reference import with_reference
    from .table import comparison_table, seed_groups

    path = Path(path)
    claims = load_claims(path)
    runs_df = collect_runs([Path(p) for p in runs])
    table = comparison_table(runs_df)
    for i, reference in enumerate(claims.reference):
        file = path.parent / reference
        if not file.is_file():
            raise ConfigError(f"no such file: {file}", file=path, path=f"reference[{i}]")
        table = with_reference(table, file, every=True)
    groups, published = seed_groups(runs_df), published_rows(table)
    verdicts = []
    for number, claim in enumerate(claims.claims, start=1):
        where = f"claims[{number - 1}]"
        missing = []
        for key in ("a", "b"):
            label = getattr(claim, key)
            if label not in groups and not (key == "b" and label in published):
                rows = [*groups, *published] if key == "b" else list(groups)
                if not skip_missing:
                    raise ConfigError(f"'{label}' names no row of these runs{did_you_mean(label, rows)} "
                                      f"(rows: {', '.join(rows)})", file=path, path=f"{where}.{key}")
                missing.append(label)  # the verdict's note names it, so a typo still shows
        if missing:
            nan = float("nan")
            verdicts.append(Verdict(number, claim, NOT_RUN, {
                "difference": nan, "ci_low": nan, "ci_high": nan, "p_value": nan, "test": "",
                "seeds": "", "note": "no runs of " + " and ".join(f"'{m}'" for m in missing)}))
            continue
        values_b = published[claim.b].get(claim.metric) if claim.b in published else seed_values(groups[claim.b], claim.metric)
        test = compare_values(seed_values(groups[claim.a], claim.metric), values_b,
                              test=claim.test or claims.test, confidence=1 - claims.significance)
        verdicts.append(Verdict(number, claim, _verdict(claim, test), test))
    return verdicts


def _verdict(claim: Claim, test: dict) -> str:
    low, high = test["ci_low"], test["ci_high"]
    if math.isnan(low) or math.isnan(high):
        return NOT_SHOWN
    if claim.direction == "lower":
        low, high = -high, -low  # judged as "higher" on b - a
    if low > claim.min_effect:
        return HOLDS
    if high < 0:
        return REVERSED
    return NOT_SHOWN


def format_verdicts(verdicts: list[Verdict], significance_level: float | None = None) -> str:
    """The verdicts as a Markdown table, then one line counting them (and naming the must_hold ones that failed)."""
    header = ["#", "verdict", "claim", "a - b", "metric", "claimed", "difference", "interval", "p", "test", "seeds"]
    rows = [header, ["---:", "---", "---", "---", "---", "---", "---:", "---", "---:", "---", "---:"]]
    for v in verdicts:
        t, m = v.test, v.claim.metric
        claimed = v.claim.direction + (f" by > {v.claim.min_effect:g}" if v.claim.min_effect else "")
        if math.isnan(t["ci_low"]):
            interval, p = t["note"], ""
        else:
            interval = f"[{format_number(m, t['ci_low'], signed=True)}, {format_number(m, t['ci_high'], signed=True)}]"
            p = format_p(t["p_value"])
        verdict = f"**{v.verdict}**" if v.failed else v.verdict
        rows.append([str(v.number), verdict + (" (must hold)" if v.claim.must_hold else ""), f'"{v.claim.claim}"',
                     f"{v.claim.a} - {v.claim.b}", m, claimed,
                     "" if v.verdict == NOT_RUN else format_number(m, t["difference"], signed=True),
                     interval, p, t["test"], t["seeds"]])
    text = "".join("| " + " | ".join(escape_markdown(c) for c in r) + " |\n" for r in rows)
    counts = {kind: sum(v.verdict == kind for v in verdicts) for kind in (HOLDS, REVERSED, NOT_SHOWN, NOT_RUN)}
    if not counts[NOT_RUN]:
        del counts[NOT_RUN]
    level = f" (intervals at {100 * (1 - significance_level):g}%)" if significance_level is not None else ""
    text += f"\n{len(verdicts)} claim(s){level}: " + ", ".join(f"{n} {kind}" for kind, n in counts.items()) + "\n"
    failed = [v for v in verdicts if v.failed]
    if failed:
        text += (f"must_hold: {len(failed)} claim(s) failed: "
                 + ", ".join(f"#{v.number} ({v.verdict})" for v in failed) + "\n")
    return text
