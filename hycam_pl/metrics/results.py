"""Results files for a run: ``results.json`` for machines, ``results.md`` for people, and ``examples.jsonl``
(one line per test example, see :mod:`hycam_pl.metrics.per_example`; non-finite numbers there are ``null``).

All are written atomically (temporary file in the same directory, then ``os.replace``), so a
crash or a concurrent reader never sees half a file. Rows are tasks in the given order with
``"macro"`` last; columns are metrics in a fixed preferred order, then any others by first use.
A metric that is not applicable to a task (value ``None``) is ``null`` in JSON and ``n/a`` in the
table; a metric a task does not report at all is ``–``; a non-finite value is ``nan``/``inf`` in
the table and ``null`` in JSON (strict JSON has no such numbers).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hycam_pl.io import write_text_atomically
from hycam_pl.metrics.task_metrics import MACRO

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
EXAMPLES_JSONL = "examples.jsonl"
# A section beside the tasks: the routing specialisation (``task_nmi``, mean over layers, and
# ``task_nmi/layer_<i>``; see ``hycam_pl.metrics.routing.task_expert_nmi``), shown below the task table.
ROUTING_SECTION = "routing"
PREFERRED_COLUMNS: tuple[str, ...] = (
    "loss",
    "ppl",
    "sacrebleu",
    "rouge1",
    "rouge2",
    "rougeL",
    "exact_match",
    "task_score",
)
MISSING = "–"
NOT_APPLICABLE = "n/a"


def write_results(
    results: Mapping[str, Mapping[str, float | None]], run_dir: str | os.PathLike
) -> tuple[Path, Path]:
    """Write ``results.json`` and ``results.md`` into ``run_dir`` (created if needed); return both paths.

    JSON keeps the nested ``{task: {metric: value}}`` shape; not-applicable values, NaN and
    infinities become ``null`` (``results.md`` tells them apart).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    serialisable = {
        task: {metric: _json_number(value) for metric, value in values.items()}
        for task, values in results.items()
    }
    json_path = write_text_atomically(
        run_dir / RESULTS_JSON, json.dumps(serialisable, indent=2, allow_nan=False) + "\n"
    )
    md_path = write_text_atomically(run_dir / RESULTS_MD, format_results_table(results) + "\n")
    return json_path, md_path


def write_examples(rows: Sequence[Mapping[str, Any]], run_dir: str | os.PathLike) -> Path:
    """Write ``examples.jsonl`` into ``run_dir`` atomically (readers see the whole file or none)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(_finite_values(row), ensure_ascii=False, allow_nan=False) + "\n" for row in rows]
    return write_text_atomically(run_dir / EXAMPLES_JSONL, "".join(lines))


def read_examples(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of an ``examples.jsonl`` file."""
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _finite_values(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}


def format_results_table(results: Mapping[str, Mapping[str, float | None]]) -> str:
    """A Markdown table: one row per task then ``macro``, one column per metric; then the routing section, if
    any, as one line."""
    routing = results.get(ROUTING_SECTION)
    results = {task: values for task, values in results.items() if task != ROUTING_SECTION}
    rows = [task for task in results if task != MACRO] + ([MACRO] if MACRO in results else [])
    columns = results_columns(results)
    lines = [
        "| " + " | ".join(["task", *columns]) + " |",
        "|" + "|".join([":---", *(["---:"] * len(columns))]) + "|",
    ]
    for task in rows:
        cells = [format_value(results[task][c]) if c in results[task] else MISSING for c in columns]
        lines.append("| " + " | ".join([f"**{task}**" if task == MACRO else task, *cells]) + " |")
    if routing:
        layers = ", ".join(
            f"{name.rsplit('_', 1)[-1]}: {format_value(value)}"
            for name, value in routing.items()
            if name.startswith("task_nmi/layer_")
        )
        lines += [
            "",
            f"Routing specialisation (task NMI, 0 = routing ignores the task, 1 = each task has an expert of its "
            f"own): {format_value(routing.get('task_nmi'))}, mean over layers; per layer {layers}",
        ]
    return "\n".join(lines)


def results_columns(results: Mapping[str, Mapping[str, float | None]]) -> list[str]:
    """Metric names present in ``results``: preferred ones in their fixed order, others after."""
    present: dict[str, None] = {}
    for values in results.values():
        present.update(dict.fromkeys(values))
    return [c for c in PREFERRED_COLUMNS if c in present] + [c for c in present if c not in PREFERRED_COLUMNS]


def format_value(value: float | int | None) -> str:
    """Four decimals for scores and losses, two for large values (perplexities), scientific at extremes.

    ``None`` (a metric not applicable to the task) is ``n/a``.
    """
    if value is None:
        return NOT_APPLICABLE
    if isinstance(value, bool) or isinstance(value, int):
        return str(int(value))
    value = float(value)
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    magnitude = abs(value)
    if magnitude >= 1e6 or 0 < magnitude < 1e-4:
        return f"{value:.3e}"
    if magnitude >= 100:
        return f"{value:.2f}"
    return f"{value:.4f}"


def flatten_results(results: Mapping[str, Mapping[str, float | None]], prefix: str = "") -> dict[str, float]:
    """``{f"{prefix}{task}/{metric}": value}``, e.g. for ``LightningModule.log_dict``.

    Not-applicable values (``None``) are left out: there is no number to log.
    """
    return {
        f"{prefix}{task}/{metric}": value
        for task, values in results.items()
        for metric, value in values.items()
        if value is not None
    }


def _json_number(value: float | int | None) -> float | int | None:
    if value is None or isinstance(value, int):
        return value
    value = float(value)
    return value if math.isfinite(value) else None
