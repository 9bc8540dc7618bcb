"""``hycam compare NAME=PATH ... [--output DIR]``: paired comparisons of test runs on the same examples.

Why paired: two runs tested on the same examples differ partly because one is better and partly because of which
examples happen to be in the test set; comparing them example by example removes the second part, so a paired
comparison detects much smaller differences than two separate means with their spreads.

Each ``NAME=PATH`` is a group: ``PATH`` is a ``hycam test`` run directory, its ``results.json`` or its
``examples.jsonl`` (the per-example file ``hycam test`` writes next to ``results.json``); a group of runs over
seeds is several ``NAME=PATH`` with the same name, or a glob (``hycam=runs/hycam/seed*``). The first name is the
reference; every other group is compared with it, per task and macro (the mean over tasks), for the loss,
``task_score`` and ``rougeL`` (``--metrics`` picks others the examples carry: ``exact_match``, ``rouge1``, ...;
fewer metrics, fewer comparisons for Holm to pay for), as ``other - reference``. The statistics are in :mod:`hycam_pl.metrics.paired`.
Runs whose examples differ are refused: a paired comparison needs the same examples in every run.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hycam_pl.io import write_text_atomically, write_with_handle
from hycam_pl.metrics.paired import (
    CONFIDENCE,
    RESAMPLES,
    GroupValues,
    holm,
    paired_difference,
    paired_test,
)
from hycam_pl.metrics.results import EXAMPLES_JSONL, RESULTS_JSON, format_value
from hycam_pl.metrics.task_metrics import MACRO

LOSS = "loss"
DEFAULT_METRICS = (LOSS, "task_score", "rougeL")
# Fields of an examples.jsonl line that are not scores.
RECORD_FIELDS = {"task", "id", "loss_sum", "num_tokens", "prediction", "reference", "prompt", "target"}
COMPARISON_MD, COMPARISON_JSON, FOREST_PNG = "comparison.md", "comparison.json", "forest.png"
ALPHA = 1 - CONFIDENCE
MAX_LINE_BYTES = 1 << 20  # an examples.jsonl line is a few hundred bytes; refuse absurd ones unread


class ComparisonError(ValueError):
    """Bad input to a comparison; the message names the file, line or run (one ``error:`` line)."""


@dataclass
class Run:
    """One run's per-example results: ``(task, id) -> record`` in file order."""

    path: Path
    records: dict[tuple[str, str], dict[str, Any]]


@dataclass(frozen=True)
class Row:
    """One compared pair, task (or macro) and metric."""

    other: str
    reference: str
    task: str
    metric: str
    examples: int
    reference_mean: float
    other_mean: float
    difference: float
    ci_low: float
    ci_high: float
    detectable: float
    test: str
    p: float
    p_holm: float = math.nan

    @property
    def pair(self) -> str:
        return f"{self.other} vs {self.reference}"


# ------------------------------------------------------------------------------------------------ reading
def examples_file(path: str | Path) -> Path:
    """The ``examples.jsonl`` a ``PATH`` means: the file itself, the one beside a ``results.json``, or the one
    in a run directory."""
    path = Path(path)
    if path.is_dir():
        path = path / EXAMPLES_JSONL
    elif path.name == RESULTS_JSON:
        path = path.with_name(EXAMPLES_JSONL)
    if not path.is_file():
        raise ComparisonError(
            f"{path}: no such file (hycam test writes {EXAMPLES_JSONL} next to {RESULTS_JSON} in its run directory)"
        )
    return path


def expand(pattern: str) -> list[Path]:
    """A path, or every match of a glob (sorted); a glob matching nothing is an error."""
    if not glob.has_magic(pattern):
        return [examples_file(pattern)]
    matches = sorted(glob.glob(pattern))
    if not matches:
        raise ComparisonError(f"{pattern}: the pattern matches no file or directory")
    return [examples_file(match) for match in matches]


def read_run(path: Path) -> Run:
    """Parse an ``examples.jsonl``; a malformed line is an error naming the file and the line."""
    records: dict[tuple[str, str], dict[str, Any]] = {}
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            where = f"{path}:{number}"
            if len(raw) > MAX_LINE_BYTES:
                raise ComparisonError(f"{where}: line longer than {MAX_LINE_BYTES} bytes")
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except ValueError as error:
                raise ComparisonError(f"{where}: not JSON ({error})") from None
            if not isinstance(record, dict):
                raise ComparisonError(f"{where}: expected a JSON object per line")
            task, example = record.get("task"), record.get("id")
            if not isinstance(task, str) or not task:
                raise ComparisonError(f"{where}: 'task' must be a non-empty string")
            if not isinstance(example, (str, int)) or isinstance(example, bool):
                raise ComparisonError(f"{where}: 'id' must be a string or an integer")
            for key in ("loss_sum", "num_tokens"):
                value = record.get(key)
                if not _number(value) or not math.isfinite(value) or value < 0:
                    raise ComparisonError(f"{where}: {key!r} must be a finite number >= 0, got {value!r}")
            key = (task, str(example))
            if key in records:
                raise ComparisonError(f"{where}: example {task}/{example} appears twice")
            records[key] = record
    if not records:
        raise ComparisonError(f"{path}: no examples")
    return Run(path, records)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float))  # bool counts: exact_match may be written as true/false


def load_groups(groups: Mapping[str, Sequence[str | Path]]) -> dict[str, list[Run]]:
    """Read every group's runs and check they all hold the same examples."""
    loaded = {
        name: [read_run(p) for pattern in paths for p in expand(str(pattern))]
        for name, paths in groups.items()
    }
    check_same_examples(loaded)
    return loaded


def check_same_examples(groups: Mapping[str, Sequence[Run]]) -> None:
    runs = [(name, run) for name, members in groups.items() for run in members]
    first_name, first = runs[0]
    for name, run in runs[1:]:
        if run.records.keys() != first.records.keys():
            missing = [k for k in first.records if k not in run.records]
            extra = [k for k in run.records if k not in first.records]
            example = "/".join((missing or extra)[0])
            raise ComparisonError(
                f"the runs' example ids differ: {run.path} ({name}) has {len(extra)} example(s) that "
                f"{first.path} ({first_name}) has not and lacks {len(missing)} of its (e.g. {example}); "
                "a paired comparison needs the same test examples in every run"
            )


def metric_names(groups: Mapping[str, Sequence[Run]]) -> list[str]:
    """The loss, then every score found in the records, in order of first appearance (other fields, text or
    anything not a number, are not scores)."""
    names: dict[str, None] = {LOSS: None}
    for members in groups.values():
        for run in members:
            for record in run.records.values():
                names.update(
                    (k, None)
                    for k, v in record.items()
                    if k not in RECORD_FIELDS and v is not None and _number(v)
                )
    return list(names)


def tasks_in_order(groups: Mapping[str, Sequence[Run]]) -> list[str]:
    first = next(iter(groups.values()))[0]
    return list(dict.fromkeys(task for task, _ in first.records))


def group_values(members: Sequence[Run], task: str, metric: str) -> GroupValues | None:
    """``(runs, examples)`` values and weights of ``metric`` on ``task``; None if no example has it. Scores
    exist on the generated examples only: every run must score the same examples."""
    first = members[0]
    keys = [k for k in first.records if k[0] == task]
    if metric != LOSS:
        keys = [k for k in keys if _number(first.records[k].get(metric))]
        if not keys:
            return None
        for run in members[1:]:
            scored = [k for k in run.records if k[0] == task and _number(run.records[k].get(metric))]
            if set(scored) != set(keys):
                raise ComparisonError(
                    f"{run.path} and {first.path} score {metric!r} on different examples of task {task!r}"
                )
    values = np.empty((len(members), len(keys)))
    weights = np.ones_like(values)
    for r, run in enumerate(members):
        for e, key in enumerate(keys):
            record = run.records[key]
            if metric == LOSS:
                tokens = float(record["num_tokens"])
                weights[r, e] = tokens
                values[r, e] = record["loss_sum"] / tokens if tokens > 0 else math.nan
            else:
                values[r, e] = float(record[metric])
    return GroupValues(values, weights)


def check_scored_alike(reference: Sequence[Run], other: Sequence[Run], task: str, metric: str) -> None:
    keys_reference = {
        k for k in reference[0].records if k[0] == task and _number(reference[0].records[k].get(metric))
    }
    keys_other = {k for k in other[0].records if k[0] == task and _number(other[0].records[k].get(metric))}
    if keys_reference != keys_other:
        raise ComparisonError(
            f"{other[0].path} and {reference[0].path} score {metric!r} on different examples of task {task!r}"
        )


# ------------------------------------------------------------------------------------------------ comparing
def compare_groups(
    groups: Mapping[str, Sequence[Run]],
    metrics: Sequence[str] | None = None,
    *,
    resamples: int = RESAMPLES,
    pairs: Sequence[tuple[str, str]] | None = None,
) -> list[Row]:
    """Every ``(other, reference)`` pair (default: each group after the first against the first), per task
    and macro, per metric; Holm-adjusted over all the rows returned."""
    names = list(groups)
    if len(names) < 2 and pairs is None:
        raise ComparisonError("give at least two groups to compare (NAME=PATH NAME=PATH ...)")
    pairs = list(pairs) if pairs is not None else [(other, names[0]) for other in names[1:]]
    if not metrics:
        present = metric_names(groups)
        metrics = [m for m in DEFAULT_METRICS if m in present] or present
    metrics = list(metrics)
    tasks = tasks_in_order(groups)
    rows: list[Row] = []
    for other, reference in pairs:
        for metric in metrics:
            per_task: list[tuple[str, tuple[GroupValues, GroupValues]]] = []
            for task in tasks:
                if metric != LOSS:
                    check_scored_alike(groups[reference], groups[other], task, metric)
                values_reference = group_values(groups[reference], task, metric)
                values_other = group_values(groups[other], task, metric)
                if values_reference is None or values_other is None:
                    continue  # neither group scores this metric on this task
                per_task.append((task, (values_reference, values_other)))
            if not per_task:
                continue
            entries = [(task, [pair]) for task, pair in per_task]
            entries.append((MACRO, [pair for _, pair in per_task]))
            for task, selected in entries:
                found = paired_difference(selected, resamples=resamples)
                p, test = paired_test(selected)
                rows.append(
                    Row(
                        other=other,
                        reference=reference,
                        task=task,
                        metric=metric,
                        examples=sum(r.examples for r, _ in selected),
                        reference_mean=float(np.mean([r.mean() for r, _ in selected])),
                        other_mean=float(np.mean([o.mean() for _, o in selected])),
                        difference=found.difference,
                        ci_low=found.ci_low,
                        ci_high=found.ci_high,
                        detectable=found.detectable,
                        test=test,
                        p=p,
                    )
                )
    adjusted = holm([row.p for row in rows])
    return [Row(**{**asdict(row), "p_holm": value}) for row, value in zip(rows, adjusted, strict=True)]


# ------------------------------------------------------------------------------------------------ reporting
def significant(row: Row) -> bool:
    return math.isfinite(row.p_holm) and row.p_holm < ALPHA


LOWER_IS_BETTER = frozenset({LOSS, "ppl"})


def verdict(row: Row, comparisons: int | None = None) -> str:
    """One sentence that states what this row shows and no more, from the reference's side.

    A difference is claimed only when its Holm-adjusted p is below 0.05, with its interval; otherwise the
    sentence says that no difference is detectable at this size and gives the smallest detectable one, so a
    README that quotes it cannot turn "not detected" into "no difference". Where the interval and the test
    disagree (one excludes 0, the other does not reject), the sentence says so. ``comparisons``: how many rows
    the Holm correction ran over (named in the sentence when given).
    """
    what = f"{row.task} {row.metric}"  # "macro loss", "qa task_score"
    interval = f"[{_signed(row.ci_low)}, {_signed(row.ci_high)}]"
    measured = f"{row.other} - {row.reference} = {_signed(row.difference)} {interval}"
    if not (math.isfinite(row.p_holm) and math.isfinite(row.difference)):
        return f"{row.reference} vs {row.other}, {what}: no test possible ({measured}, p = {_p(row.p)})."
    excludes_zero = row.ci_low > 0 or row.ci_high < 0
    corrected = f"p (Holm{f', {comparisons} comparisons' if comparisons else ''}) = {_p(row.p_holm)}"
    if significant(row):
        lower = row.difference > 0  # the reference's value is below the other's
        better = lower == (row.metric in LOWER_IS_BETTER)
        side = f"{'lower' if lower else 'higher'} ({'better' if better else 'worse'})"
        sentence = (
            f"{row.reference}'s {what} is {side} than {row.other}'s by {format_value(abs(row.difference))}"
        )
        if excludes_zero:
            low, high = sorted((abs(row.ci_low), abs(row.ci_high)))
            sentence += f" [{format_value(low)}, {format_value(high)}]"
        sentence += f", {corrected} ({row.test}, {row.examples} examples)"
        if not excludes_zero:
            sentence += (
                f"; but the 95 % interval of {measured} includes 0: the test and the interval disagree"
            )
        return sentence + "."
    sentence = (
        f"No difference in {what} between {row.reference} and {row.other} is detectable at this size: "
        f"{measured}, {corrected} ({row.test}, {row.examples} examples); the smallest detectable difference is "
        f"{format_value(row.detectable)}"
    )
    if excludes_zero:
        sentence += "; the unadjusted 95 % interval excludes 0, but the corrected test does not reject"
    return sentence + "."


def format_verdicts(rows: Sequence[Row], task: str = MACRO) -> str:
    """The verdict of every row of one task (macro by default), one Markdown bullet each."""
    return "\n".join(f"- {verdict(row, len(rows))}" for row in rows if row.task == task)


def format_table(rows: Sequence[Row]) -> str:
    """A Markdown table, one line per pair, task and metric; ``*`` marks Holm-adjusted p < 0.05."""
    lines = [
        "| comparison | task | metric | n | reference | other | difference [95% CI] | p | p (Holm) | detectable |",
        "|:---|:---|:---|---:|---:|---:|:---|---:|---:|---:|",
    ]
    for row in rows:
        task = f"**{row.task}**" if row.task == MACRO else row.task
        interval = f"{_signed(row.difference)} [{_signed(row.ci_low)}, {_signed(row.ci_high)}]"
        mark = " *" if significant(row) else ""
        lines.append(
            f"| {row.pair} | {task} | {row.metric} | {row.examples} | {format_value(row.reference_mean)} | "
            f"{format_value(row.other_mean)} | {interval} | {_p(row.p)} ({row.test}) | {_p(row.p_holm)}{mark} | "
            f"{format_value(row.detectable)} |"
        )
    return "\n".join(lines)


def _signed(value: float) -> str:
    text = format_value(value)
    return text if text.startswith("-") or not math.isfinite(value) else f"+{text}"


def _p(value: float) -> str:
    if not math.isfinite(value):
        return "nan"
    return f"{value:.2e}" if value < 1e-3 else f"{value:.4f}"


METHOD_NOTE = (
    "Differences are `other - reference` (for the loss, lower is better). 95 % intervals: paired BCa bootstrap "
    "(scipy.stats.bootstrap) resampling examples within each task and, for groups of several runs, each "
    "group's runs. p: exact McNemar (binomial sign test on discordant answers) for binary scores of single "
    "runs, otherwise Wilcoxon signed-rank on per-example differences (per-token losses for the loss); p (Holm): "
    "adjusted over every row of this table; * marks p (Holm) < 0.05. detectable: the smallest true difference a "
    "5 % test would detect with 80 % power at this size ((z_0.975 + z_0.8) x the bootstrap standard error); "
    "a difference below it is undetectable here, not shown to be absent."
)


def format_markdown(
    rows: Sequence[Row], groups: Mapping[str, Sequence[Any]], title: str = "Comparison"
) -> str:
    lines = [f"# {title}", ""]
    for name, members in groups.items():
        paths = ", ".join(f"`{getattr(m, 'path', m)}`" for m in members)
        lines.append(f"- **{name}** ({len(members)} run{'s' if len(members) != 1 else ''}): {paths}")
    lines += ["", METHOD_NOTE, "", "## Verdicts (macro)", "", format_verdicts(rows), "", "## All rows", ""]
    lines += [format_table(rows)]
    return "\n".join(lines) + "\n"


def comparison_payload(
    rows: Sequence[Row], groups: Mapping[str, Sequence[Any]], resamples: int
) -> dict[str, Any]:
    """``comparison.json``: per pair, task and metric the difference, interval and p-values."""
    pairs: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
    for row in rows:
        pairs.setdefault(row.pair, {}).setdefault(row.task, {})[row.metric] = {
            "difference": _json(row.difference),
            "ci_low": _json(row.ci_low),
            "ci_high": _json(row.ci_high),
            "p": _json(row.p),
            "p_holm": _json(row.p_holm),
            "test": row.test,
            "examples": row.examples,
            "reference_mean": _json(row.reference_mean),
            "other_mean": _json(row.other_mean),
            "detectable": _json(row.detectable),
            "verdict": verdict(row, len(rows)),
        }
    return {
        "reference": rows[0].reference if rows else None,
        "groups": {name: [str(getattr(m, "path", m)) for m in members] for name, members in groups.items()},
        "confidence_level": CONFIDENCE,
        "resamples": resamples,
        "pairs": pairs,
    }


def _json(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def write_forest(rows: Sequence[Row], path: Path, title: str = "") -> Path:
    """One panel per metric; one row per task and macro (one marker per compared pair), the difference with
    its 95 % interval, a line at zero."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = list(dict.fromkeys(row.metric for row in rows))
    pairs = list(dict.fromkeys(row.pair for row in rows))
    tasks = list(dict.fromkeys(row.task for row in rows if row.task != MACRO)) + [MACRO]
    height = 0.9 + 0.35 * len(tasks) * max(1, len(pairs)) ** 0.5
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics) + 1.2, height), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for index, pair in enumerate(pairs):
            offset = (index - (len(pairs) - 1) / 2) * 0.7 / max(1, len(pairs))
            chosen = [r for r in rows if r.metric == metric and r.pair == pair]
            ys = [len(tasks) - 1 - tasks.index(r.task) + offset for r in chosen]
            xs = [r.difference for r in chosen]
            errors = [
                [max(0.0, r.difference - r.ci_low) for r in chosen],
                [max(0.0, r.ci_high - r.difference) for r in chosen],
            ]
            ax.errorbar(xs, ys, xerr=errors, fmt="o", capsize=3, label=pair if metric == metrics[0] else None)
        ax.axvline(0.0, color="grey", linewidth=0.8)
        ax.set_yticks(range(len(tasks)), list(reversed(tasks)))
        ax.set_ylim(-0.6, len(tasks) - 0.4)
        ax.set_title(metric, fontsize="medium")
        ax.set_xlabel("difference (other - reference)")
        ax.grid(axis="x", alpha=0.3)
    if len(pairs) > 1 or title:
        fig.legend(loc="upper center", ncol=min(4, len(pairs)), fontsize="small", frameon=False)
    fig.suptitle(title or "95 % paired bootstrap intervals", fontsize="medium", y=0.02, va="bottom")
    fig.tight_layout(rect=(0, 0.05, 1, 0.92 if len(pairs) > 1 else 1))
    write_with_handle(path, lambda handle: fig.savefig(handle, dpi=110, format="png"))
    plt.close(fig)
    return path


def write_outputs(
    rows: Sequence[Row], groups: Mapping[str, Sequence[Any]], directory: Path, resamples: int
) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    payload = comparison_payload(rows, groups, resamples)
    return [
        write_text_atomically(directory / COMPARISON_MD, format_markdown(rows, groups)),
        write_text_atomically(
            directory / COMPARISON_JSON, json.dumps(payload, indent=2, allow_nan=False) + "\n"
        ),
        write_forest(rows, directory / FOREST_PNG),
    ]


# ------------------------------------------------------------------------------------------------ command
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hycam compare", description=__doc__.split("\n")[0].split(": ", 1)[-1])
    p.add_argument(
        "runs",
        nargs="+",
        metavar="NAME=PATH",
        help="a test run directory, its results.json or examples.jsonl, or a glob; repeat a NAME for seeds; "
        "the first NAME is the reference",
    )
    p.add_argument(
        "--metrics",
        help=f"comma-separated metrics, any the examples carry (default: {','.join(DEFAULT_METRICS)})",
    )
    p.add_argument("--output", help="write comparison.md, comparison.json and forest.png into this directory")
    p.add_argument(
        "--resamples", type=int, default=RESAMPLES, help=f"bootstrap resamples (default {RESAMPLES})"
    )
    return p


def parse_groups(items: Sequence[str]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ComparisonError(f"expected NAME=PATH, got {item!r}")
        groups.setdefault(name, []).append(path)
    return groups


def main(argv: Sequence[str] | None = None) -> int:
    options = parser().parse_args(argv)
    try:
        if options.resamples < 100:
            raise ComparisonError(f"--resamples {options.resamples}: use at least 100")
        groups = load_groups(parse_groups(options.runs))
        metrics = [m for m in options.metrics.split(",") if m] if options.metrics else None
        if metrics:
            known = metric_names(groups)
            unknown = [m for m in metrics if m not in known]
            if unknown:
                raise ComparisonError(
                    f"--metrics: {unknown} not in the examples (they have {', '.join(known)})"
                )
        rows = compare_groups(groups, metrics, resamples=options.resamples)
    except (ComparisonError, OSError) as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    print(format_table(rows))
    print(f"\nVerdicts (macro):\n{format_verdicts(rows)}")
    if options.output:
        written = write_outputs(rows, groups, Path(options.output), options.resamples)
        print(f"wrote {', '.join(str(p) for p in written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
