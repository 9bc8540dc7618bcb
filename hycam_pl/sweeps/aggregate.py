"""Read the trials' marker files back and write what a person reads: results.csv, results.md, one plot per
metric, and TensorBoard's HParams view. Everything here is derived from the trial directories, so it can be
rebuilt at any time (``hycam sweep ... --aggregate-only``) and is rewritten after every sweep run.

Means and standard deviations are over the finished seeds of a grid point; the standard deviation is the
sample one (``ddof=1``, :func:`statistics.stdev`) and is undefined (shown as ``–``) with a single seed.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import shutil
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hycam_pl.callbacks.record import VALIDATION_LOSS
from hycam_pl.io import write_text_atomically, write_with_handle
from hycam_pl.metrics.compare import (
    COMPARISON_JSON,
    EXAMPLES_JSONL,
    FOREST_PNG,
    METHOD_NOTE,
    ComparisonError,
    Run,
    check_same_examples,
    compare_groups,
    comparison_payload,
    format_table,
    format_verdicts,
    metric_names,
    read_run,
    write_forest,
)
from hycam_pl.metrics.paired import RESAMPLES
from hycam_pl.metrics.results import format_value
from hycam_pl.sweeps.spec import (
    ALL_VARIANTS,
    LOG_NAME,
    LOG_VERSION,
    SELECTION_JSON,
    TRIALS_DIR,
    SweepSpec,
    Trial,
)
from hycam_pl.sweeps.trial import FAILED, INTERRUPTED, RESULT, read_json

PROVENANCE_PACKAGES = ("torch", "transformers", "peft")
PROVENANCE_COLUMNS = (
    VALIDATION_LOSS,
    "trainable_params",
    "total_params",
    "effective_options",
    "fit",  # scratch | resumed
    "fit_from_step",
    "commit",
    "modified",
    *PROVENANCE_PACKAGES,
)
RESULTS_CSV = "results.csv"
RESULTS_MD = "results.md"
HPARAMS_DIR = "hparams"
TIMES = ("fit_s", "test_s")
MISSING = "–"


@dataclass
class TrialRecord:
    """A trial and what its directory says about it."""

    trial: Trial
    status: str  # done | failed | interrupted (runs again) | pending
    metrics: dict[str, float | None] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    stage: str | None = None
    exit_code: int | None = None
    provenance: dict[str, Any] = field(default_factory=dict)  # result.json's record of how the trial ran

    @property
    def validation_loss(self) -> float | None:
        value = (self.provenance.get("validation") or {}).get(VALIDATION_LOSS)
        return float(value) if _is_number(value) and math.isfinite(value) else None


@dataclass
class GroupStats:
    """One grid point (variant + grid values) over its seeds."""

    variant: str | None
    point: dict[str, Any]
    seeds: int  # trials in the group
    finished: int  # of them done
    mean: dict[str, float | None]
    std: dict[str, float | None]  # sample std (ddof=1); None with fewer than 2 values
    count: dict[str, int]  # values that entered each metric's statistics


def read_record(trial: Trial, trial_dir: Path) -> TrialRecord:
    result = read_json(trial_dir / RESULT)
    if result is not None and result.get("status") == "done":
        return TrialRecord(
            trial,
            "done",
            metrics=dict(result.get("metrics", {})),
            seconds={k: result[k] for k in TIMES if k in result},
            provenance={k: v for k, v in result.items() if k not in ("status", "metrics", *TIMES)},
        )
    for name, status in (
        (FAILED, "failed"),
        (INTERRUPTED, "interrupted"),
    ):  # a failure outranks an interruption
        ended = read_json(trial_dir / name)
        if ended is not None:
            return TrialRecord(
                trial,
                status,
                seconds={k: ended[k] for k in TIMES if k in ended},
                error=ended.get("error") if status == "failed" else None,
                stage=ended.get("stage"),
                exit_code=ended.get("exit_code"),
            )
    return TrialRecord(trial, "pending")


def group_stats(records: Iterable[TrialRecord], metrics: list[str]) -> list[GroupStats]:
    """Mean and sample standard deviation of each metric per grid point, over the finished seeds."""
    groups: dict[tuple[Any, ...], list[TrialRecord]] = {}
    for record in records:
        groups.setdefault(record.trial.group, []).append(record)
    stats = []
    for members in groups.values():
        first = members[0].trial
        done = [m for m in members if m.status == "done"]
        mean: dict[str, float | None] = {}
        std: dict[str, float | None] = {}
        count: dict[str, int] = {}
        for metric in metrics:
            values = [float(v) for m in done if _is_number(v := m.metrics.get(metric)) and math.isfinite(v)]
            count[metric] = len(values)
            mean[metric] = statistics.fmean(values) if values else None
            std[metric] = statistics.stdev(values) if len(values) >= 2 else None
        stats.append(GroupStats(first.variant, first.point, len(members), len(done), mean, std, count))
    return stats


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# ------------------------------------------------------------------------------------------------ tables
def _grid_columns(spec: SweepSpec) -> list[str]:
    return (["variant"] if spec.variants is not None else []) + list(spec.grid)


def _cell(value: Any) -> str:
    if value is None:
        return MISSING
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return format_value(value)
    return str(value)


def _point_cells(spec: SweepSpec, variant: str | None, point: Mapping[str, Any]) -> list[str]:
    cells = [variant or ""] if spec.variants is not None else []
    return cells + [_label(point[key]) for key in spec.grid]


def _label(value: Any) -> str:
    return value if isinstance(value, str) else str(value).replace("None", "null")


def provenance_cells(record: TrialRecord) -> list[Any]:
    """The :data:`PROVENANCE_COLUMNS` of a trial (empty where its result.json predates them)."""
    info = record.provenance
    parameters = info.get("parameters") or {}
    fit = info.get("fit") or {}
    code = info.get("code") or {}
    versions = info.get("versions") or {}
    options = info.get("effective_options")
    return [
        _csv_number(record.validation_loss),
        parameters.get("trainable", ""),
        parameters.get("total", ""),
        json.dumps(options, sort_keys=True, separators=(",", ":")) if options is not None else "",
        "" if not fit else ("resumed" if fit.get("resumed") else "scratch"),
        fit.get("from_step", ""),
        code.get("commit") or "",
        "" if code.get("modified") is None else str(bool(code["modified"])).lower(),
        *(versions.get(name) or "" for name in PROVENANCE_PACKAGES),
    ]


def write_csv(spec: SweepSpec, records: list[TrialRecord], path: Path) -> Path:
    """One row per trial: its grid values, seed, status, every reported metric, times, how it ran (validation
    loss, parameter counts, effective options, scratch or resumed, code and library versions), and any error."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(
        ["trial", *_grid_columns(spec), "seed", "status", *spec.metrics, *TIMES, *PROVENANCE_COLUMNS, "error"]
    )
    for record in records:
        trial = record.trial
        writer.writerow(
            [
                trial.id,
                *_point_cells(spec, trial.variant, trial.point),
                trial.seed,
                record.status,
                *(_csv_number(record.metrics.get(m)) for m in spec.metrics),
                *(record.seconds.get(t, "") for t in TIMES),
                *provenance_cells(record),
                record.error or "",
            ]
        )
    return write_text_atomically(path, buffer.getvalue())


def _csv_number(value: Any) -> Any:
    return "" if value is None else value


def mean_std(mean: float | None, std: float | None, count: int) -> str:
    if mean is None:
        return MISSING
    if std is None:
        return f"{format_value(mean)} (n={count})"
    return f"{format_value(mean)} ± {format_value(std)}"


def format_markdown(
    spec: SweepSpec, records: list[TrialRecord], stats: list[GroupStats], plots: list[Path]
) -> str:
    done = sum(r.status == "done" for r in records)
    failed = [r for r in records if r.status == "failed"]
    pending = sum(r.status in ("pending", "interrupted") for r in records)
    bases = ", ".join(f"`{b}`" for b in spec.base)
    lines = [
        f"# Sweep `{spec.name}`",
        "",
        f"Sweep file `{spec.path}`, base config(s) {bases}; {len(records)} trials: {done} done, "
        f"{len(failed)} failed, {pending} not run yet. Seeds: {', '.join(map(str, spec.seeds))}.",
        "",
        "## Per grid point",
        "",
        "Mean ± standard deviation over the finished seeds; the standard deviation is the sample one "
        "(ddof=1). With one finished seed only the value and n=1 are shown.",
        "",
    ]
    header = [*_grid_columns(spec), "done", *spec.metrics]
    lines += [
        "| " + " | ".join(header) + " |",
        "|" + "|".join([":---"] * len(_grid_columns(spec)) + ["---:"] * (1 + len(spec.metrics))) + "|",
    ]
    for group in stats:
        cells = [
            *_point_cells(spec, group.variant, group.point),
            f"{group.finished}/{group.seeds}",
            *(mean_std(group.mean[m], group.std[m], group.count[m]) for m in spec.metrics),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Trials", ""]
    header = ["trial", "seed", "status", *spec.metrics, *TIMES]
    lines += [
        "| " + " | ".join(header) + " |",
        "|:---|---:|:---|" + "---:|" * (len(spec.metrics) + len(TIMES)),
    ]
    for record in records:
        cells = [
            f"`{record.trial.id}`",
            str(record.trial.seed),
            record.status,
            *(_cell(record.metrics.get(m)) if record.status == "done" else MISSING for m in spec.metrics),
            *(f"{record.seconds[t]:.1f}" if t in record.seconds else MISSING for t in TIMES),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if failed:
        lines += ["", "## Failed trials", ""]
        for record in failed:
            lines.append(
                f"- `{record.trial.id}`: `hycam {record.stage}` exited with {record.exit_code}: "
                f"{(record.error or '').replace('|', '/')} (see `trials/{record.trial.id}/{record.stage}.stderr.log`)"
            )
    if plots:
        lines += ["", "## Plots", ""]
        lines += [f"![{p.stem}]({p.name})" for p in plots]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------- plots
def plot_file(metric: str) -> str:
    return "plot_" + re.sub(r"[^A-Za-z0-9_.-]+", "_", metric) + ".png"


def write_plots(spec: SweepSpec, stats: list[GroupStats], directory: Path) -> list[Path]:
    """One PNG per metric against the swept value, error bars = sample std over seeds; one line per variant
    (and per value of any other grid key). Without a grid the variants are the x axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x_key = spec.x_key
    paths = []
    for metric in spec.metrics:
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        if x_key is None:
            names = [g.variant or "" for g in stats]
            xs = list(range(len(stats)))
            ax.errorbar(
                xs,
                [_nan(g.mean[metric]) for g in stats],
                yerr=[_zero(g.std[metric]) for g in stats],
                fmt="o",
                capsize=4,
            )
            ax.set_xticks(xs, names, rotation=30, ha="right")
            ax.set_xlabel("variant")
        else:
            # Evenly spaced in sweep-file order: K = 0, 1, 2, 4, 8 stays readable (a numeric axis would not).
            values = list(dict.fromkeys(_hashable_label(g.point[x_key]) for g in stats))
            position = {v: i for i, v in enumerate(values)}
            lines: dict[str, list[GroupStats]] = {}
            others = [k for k in spec.grid if k != x_key]
            for group in stats:
                label = ", ".join(
                    [
                        *([group.variant] if group.variant is not None else []),
                        *(f"{k.split('.')[-1]}={_label(group.point[k])}" for k in others),
                    ]
                )
                lines.setdefault(label, []).append(group)
            for index, (label, groups) in enumerate(lines.items()):
                dodge = (index - (len(lines) - 1) / 2) * 0.06  # keeps overlapping error bars apart
                xs = [position[_hashable_label(g.point[x_key])] + dodge for g in groups]
                ax.errorbar(
                    xs,
                    [_nan(g.mean[metric]) for g in groups],
                    yerr=[_zero(g.std[metric]) for g in groups],
                    marker="o",
                    capsize=4,
                    label=label or None,
                )
            ax.set_xticks(list(position.values()), [_label(v) for v in values])
            ax.set_xlabel(x_key)
            if any(lines):
                ax.legend(fontsize="small")
        ax.set_ylabel(metric)
        ax.set_title(f"{spec.name}: {metric} (mean ± sample std over seeds)", fontsize="medium")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = directory / plot_file(metric)
        write_with_handle(path, lambda handle, fig=fig: fig.savefig(handle, dpi=110, format="png"))
        plt.close(fig)
        paths.append(path)
    return paths


def _hashable_label(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool)) else _label(value)


def _nan(value: float | None) -> float:
    return math.nan if value is None else value


def _zero(value: float | None) -> float:
    return 0.0 if value is None else value


# ---------------------------------------------------------------------------------------------- hparams
def hparam_values(spec: SweepSpec, trial: Trial) -> dict[str, Any]:
    """What TensorBoard's HParams view shows per trial: variant, grid values, seed (plain types only)."""
    values: dict[str, Any] = {}
    if spec.variants is not None:
        values["variant"] = trial.variant
    for key, value in trial.point.items():
        values[key] = value if isinstance(value, (str, int, float, bool)) else _label(value)
    values["seed"] = trial.seed
    return values


def write_hparams(spec: SweepSpec, records: list[TrialRecord], directory: Path) -> Path:
    """``<sweep>/hparams/<trial>/``: one TensorBoard run per finished trial with its hparams and final
    metrics, rebuilt from scratch each time (so reruns never duplicate entries)."""
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams

    root = directory / HPARAMS_DIR
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    done = [r for r in records if r.status == "done"]
    all_values = [hparam_values(spec, r.trial) for r in done]
    domains: dict[str, list[Any]] = {}
    for key in all_values[0] if all_values else []:
        seen = list(dict.fromkeys(v[key] for v in all_values))
        if len({type(v) for v in seen}) == 1 and isinstance(seen[0], (str, bool, int)):
            domains[key] = seen
    for record, values in zip(done, all_values, strict=True):
        metrics = {
            m: float(v) for m in spec.metrics if _is_number(v := record.metrics.get(m)) and math.isfinite(v)
        }
        metrics.update({f"time/{t}": float(record.seconds[t]) for t in TIMES if t in record.seconds})
        experiment, start, end = hparams(values, metrics, domains)
        with SummaryWriter(log_dir=str(root / record.trial.id)) as writer:
            writer.file_writer.add_summary(experiment)
            writer.file_writer.add_summary(start)
            writer.file_writer.add_summary(end)
            for name, value in metrics.items():
                writer.add_scalar(name, value)
    return root


# ----------------------------------------------------------------------------------------- compare_to
def group_label(spec: SweepSpec, variant: str | None, point: Mapping[str, Any]) -> str:
    """A group's name in comparisons: the variant and the grid values (``hycam, num_experts=4``)."""
    parts = [variant] if variant is not None else []
    parts += [f"{key.split('.')[-1]}={_label(point[key])}" for key in spec.grid]
    return ", ".join(parts) or "all"


def examples_path(directory: Path, trial: Trial) -> Path:
    return directory / TRIALS_DIR / trial.id / LOG_NAME / f"version_{LOG_VERSION}" / EXAMPLES_JSONL


def comparison_section(
    spec: SweepSpec, records: list[TrialRecord], directory: Path, resamples: int = RESAMPLES
) -> list[str]:
    """results.md's paired comparisons with ``compare_to`` (the same statistics as ``hycam compare``), and
    comparison.json / forest.png beside it. Groups without per-example results are named, never guessed."""
    if spec.compare_to is None:
        return []
    key, value = spec.compare_to
    what = f"variant `{value}`" if key is None else f"`{key}` = {_label(value)}"
    lines = ["", f"## Paired comparisons with {what}", ""]
    members: dict[tuple[Any, ...], list[TrialRecord]] = {}
    for record in records:
        members.setdefault(record.trial.group, []).append(record)
    labels = {g: group_label(spec, m[0].trial.variant, m[0].trial.point) for g, m in members.items()}
    wanted = [(g, spec.reference_of(m[0].trial.variant, m[0].trial.point)) for g, m in members.items()]
    pairs = [(g, r) for g, r in wanted if r is not None and r in members]
    notes: list[str] = []
    groups: dict[str, list[Run]] = {}
    usable: list[tuple[str, str]] = []
    for other, reference in pairs:
        runs: dict[str, list[Run]] = {}
        for group in (reference, other):
            done = [r for r in members[group] if r.status == "done"]
            missing = [r.trial.id for r in done if not examples_path(directory, r.trial).is_file()]
            if not done or missing:
                notes.append(
                    f"- {labels[other]} vs {labels[reference]}: not compared, "
                    + (
                        f"no per-example results (`{EXAMPLES_JSONL}`) for {', '.join(missing)}"
                        if done
                        else f"no finished trial of {labels[group]}"
                    )
                )
                break
            try:
                runs[labels[group]] = groups.get(labels[group]) or [
                    read_run(examples_path(directory, r.trial)) for r in done
                ]
            except ComparisonError as error:
                notes.append(f"- {labels[other]} vs {labels[reference]}: not compared, {error}")
                break
        else:
            groups.update(runs)
            usable.append((labels[other], labels[reference]))
    rows = []
    if usable:
        try:
            check_same_examples(groups)
            chosen = list(dict.fromkeys(m.split("/", 1)[1] for m in spec.metrics))
            present = metric_names(groups)
            metrics = [m for m in chosen if m in present] or present
            rows = compare_groups(groups, metrics, resamples=resamples, pairs=usable)
        except ComparisonError as error:
            notes.append(f"- not compared: {error}")
    if rows:
        lines += [METHOD_NOTE, "", "Verdicts (macro):", "", format_verdicts(rows), "", format_table(rows)]
        payload = comparison_payload(rows, groups, resamples)
        write_text_atomically(
            directory / COMPARISON_JSON, json.dumps(payload, indent=2, allow_nan=False) + "\n"
        )
        write_forest(rows, directory / FOREST_PNG, title=f"{spec.name}: paired differences, 95 % intervals")
        lines += ["", f"![paired differences]({FOREST_PNG})"]
    elif not notes:
        notes.append("- no group to compare yet")
    return lines + ([""] if notes and rows else []) + notes


# ------------------------------------------------------------------------------------------- selection
def selection(spec: SweepSpec, records: list[TrialRecord]) -> dict[str, Any] | None:
    """``select``: per variant, each value's final validation loss (mean over finished seeds, and per seed)
    and the value with the lowest mean; never a test metric. A failed trial (e.g. a rate that diverged) counts
    as finished without a loss, so its value cannot be chosen; ``complete`` is false while a trial has not run
    yet or a finished one has no validation loss (a later sweep refuses such a selection)."""
    if spec.select is None:
        return None
    variants: dict[str, dict[str, Any]] = {}
    for variant in spec.variants or [None]:
        name = variant if variant is not None else ALL_VARIANTS
        entries = []
        complete = True
        for entry in spec.grid[spec.select]:
            value = entry["value"] if isinstance(entry, Mapping) and "value" in entry else entry
            trials = [
                r for r in records if r.trial.variant == variant and r.trial.point[spec.select] == value
            ]
            losses = {str(r.trial.seed): r.validation_loss for r in trials if r.status in ("done", "failed")}
            done = [r for r in trials if r.status == "done"]
            complete &= bool(trials) and len(losses) == len(trials)
            complete &= all(r.validation_loss is not None for r in done)
            finite = [r.validation_loss for r in done if r.validation_loss is not None]
            entries.append(
                {
                    "value": value,
                    "validation_loss": statistics.fmean(finite) if finite else None,
                    "per_seed": losses,
                    "failed_seeds": [r.trial.seed for r in trials if r.status == "failed"],
                }
            )
        scored = [e for e in entries if e["validation_loss"] is not None]
        chosen = min(scored, key=lambda e: e["validation_loss"])["value"] if scored else None
        variants[name] = {"values": entries, "chosen": chosen, "complete": complete and chosen is not None}
    return {
        "sweep": spec.name,
        "key": spec.select,
        "metric": VALIDATION_LOSS,
        "rule": "lowest mean final validation loss over the finished seeds",
        "variants": variants,
    }


def selection_section(spec: SweepSpec, chosen: dict[str, Any] | None) -> list[str]:
    lines: list[str] = []
    if chosen is not None:
        lines += [
            "",
            f"## Selection of `{chosen['key']}` on validation loss",
            "",
            f"Per variant, the value with the lowest mean final `{VALIDATION_LOSS}` over the finished seeds (test "
            f"numbers play no part); written to `{SELECTION_JSON}` for a later sweep's `select_from`.",
            "",
            "| variant | "
            + " | ".join(_label(v["value"]) for v in next(iter(chosen["variants"].values()))["values"])
            + " | chosen |",
            "|:---|" + "---:|" * (len(next(iter(chosen["variants"].values()))["values"]) + 1),
        ]
        for name, entry in chosen["variants"].items():
            cells = [_cell(v["validation_loss"]) for v in entry["values"]]
            mark = "" if entry["complete"] else " (incomplete)"
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {_cell(entry['chosen'])}{mark} |")
    if spec.selected_key is not None:
        values = ", ".join(f"{name}: {_label(v)}" for name, v in spec.selected.items())
        lines += ["", f"`{spec.selected_key}` per variant from `{spec.select_from}`: {values}."]
    return lines


# ---------------------------------------------------------------------------------------------- all of it
def aggregate(spec: SweepSpec, records: list[TrialRecord], directory: Path) -> dict[str, Any]:
    """Write every summary file into ``directory``; return their paths and the per-group statistics."""
    directory.mkdir(parents=True, exist_ok=True)
    stats = group_stats(records, spec.metrics)
    csv_path = write_csv(spec, records, directory / RESULTS_CSV)
    plots = write_plots(spec, stats, directory) if any(r.status == "done" for r in records) else []
    chosen = selection(spec, records)
    if chosen is not None:
        write_text_atomically(
            directory / SELECTION_JSON, json.dumps(chosen, indent=2, allow_nan=False) + "\n"
        )
    extra = selection_section(spec, chosen) + comparison_section(spec, records, directory)
    markdown = format_markdown(spec, records, stats, plots)
    if extra:
        markdown = markdown.rstrip("\n") + "\n" + "\n".join(extra) + "\n"
    md_path = write_text_atomically(directory / RESULTS_MD, markdown)
    hparams_dir = write_hparams(spec, records, directory)
    return {
        "csv": csv_path,
        "md": md_path,
        "plots": plots,
        "hparams": hparams_dir,
        "stats": stats,
        "selection": chosen,
    }
