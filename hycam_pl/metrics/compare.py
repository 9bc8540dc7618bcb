"""Put the per-task results of several runs side by side: ``python -m hycam_pl.metrics.compare``.

Why: the quickstart tests the base model (HyCAM at initialisation is exactly the base) and the adapted model
in two ``hycam test`` runs; this prints one table with, per task, each run's scores next to each other.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from hycam_pl.metrics.results import MISSING, format_value
from hycam_pl.metrics.task_metrics import MACRO

DEFAULT_METRICS = ("loss", "task_score", "rougeL")


def compare_table(
    runs: Mapping[str, Mapping[str, Mapping[str, float | None]]], metrics: Sequence[str] = DEFAULT_METRICS
) -> str:
    """A Markdown table: one row per task (``macro`` last), for each metric one column per run."""
    tasks: dict[str, None] = {}
    for results in runs.values():
        tasks.update(dict.fromkeys(task for task in results if task != MACRO))
    if any(MACRO in results for results in runs.values()):
        tasks[MACRO] = None
    present = [m for m in metrics if any(m in values for r in runs.values() for values in r.values())]
    header = ["task", *(f"{metric} ({name})" for metric in present for name in runs)]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join([":---", *(["---:"] * (len(header) - 1))]) + "|",
    ]
    for task in tasks:
        cells = [
            format_value(runs[name].get(task, {}).get(metric))
            if metric in runs[name].get(task, {})
            else MISSING
            for metric in present
            for name in runs
        ]
        lines.append("| " + " | ".join([f"**{task}**" if task == MACRO else task, *cells]) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hycam_pl.metrics.compare", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "runs", nargs="+", metavar="NAME=RESULTS_JSON", help="e.g. base=runs/x/base/results.json"
    )
    parser.add_argument("--metrics", default=",".join(DEFAULT_METRICS), help="comma-separated metric names")
    parser.add_argument("--output", help="also write the table to this Markdown file")
    args = parser.parse_args(argv)
    runs: dict[str, dict] = {}
    for item in args.runs:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            parser.error(f"expected NAME=RESULTS_JSON, got {item!r}")
        try:
            runs[name] = json.loads(Path(path).read_text())
        except (OSError, ValueError) as error:
            print(f"error: {path}: {error}", file=sys.stderr)
            return 2
    table = compare_table(runs, [m for m in args.metrics.split(",") if m])
    print(table)
    if args.output:
        Path(args.output).write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
