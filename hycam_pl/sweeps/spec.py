"""Sweep files: what is swept, validated at load, and expanded into trials with one complete config each.

A sweep file is YAML::

    name: experts                              # optional, default: the file's stem
    base: configs/smollm2/hycam.yaml           # one or more hycam configs, merged in order like repeated -c
    output: runs/sweeps/experts                # optional, default: runs/sweeps/<name>
    overrides: {trainer.max_steps: 200}        # optional, dotted keys applied to every trial
    grid:                                      # dotted key -> values; the trials are the cross product
      model.method.num_experts: [0, 1, 2, 4]   # (init_args implied under a class_path)
    variants:                                  # optional named sets of overrides, crossed with the grid
      hycam: {}
      other: {model.method: <name>}            # switching method is one key
    seeds: [0, 1, 2]                           # seed_everything and data.seed of each trial
    metrics: [macro/task_score, macro/loss]    # <task>/<metric> from each trial's results.json
    resources: {cpu: 1, gpu: 0}                # per trial, as Ray Tune schedules them
    max_concurrent: 2                          # optional cap on trials running at once
    plot_x: model.method.num_experts           # optional: the grid key on the plots' x axis
    compare_to: hycam                          # optional: a variant or grid value every other group is paired with
    select: model.learning_rate                # optional: choose this grid key's value per variant on validation
    select_from: runs/sweeps/lr/selection.json # optional: take a key's value per variant from such a selection
    select_variant: hycam                      # optional, with select_from: every trial takes this variant's value

``compare_to`` adds paired statistics (:mod:`hycam_pl.metrics.compare`) to results.md. ``select`` makes the
aggregation write ``selection.json``: per variant, the mean final validation loss (``val/macro/loss``, never a
test number) of each value over the finished seeds and the value with the lowest; ``select_from`` reads such a
file and sets its key in every trial of the variant of the same name (or every trial, for a sweep without
variants), so a tuning sweep's choice is what the comparison sweep runs. ``select_variant`` gives every trial
the value chosen for one variant instead: an ablation of one method (its expert count, say) then runs at that
method's tuned rate, so the ablated option is the only thing that changes between its groups.

Why the configs are merged here rather than passed as several ``-c`` files: every trial needs its own log and
checkpoint directory, and the checkpoint directory sits inside a list (``trainer.callbacks``) that a later
``-c`` file could only replace whole. Each trial therefore gets one complete ``config.yaml`` (also the exact
record of what it ran). Paths in sweep files, like paths in hycam configs, are relative to the working directory.

A trial's seed is its ``seed_everything`` (initialisation, routing noise) and its ``data.seed`` (the training
order), so seeds measure run-to-run variation in both; task splits, and therefore the validation and test
examples, follow each task's own seed and stay the same in every trial, which keeps trials paired. A sweep file
that sets ``data.seed`` itself (in ``overrides``, a variant or the grid) pins it instead.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hycam_pl.methods.legacy import retired_options_error

SWEEP_KEYS = (
    "name",
    "base",
    "output",
    "overrides",
    "grid",
    "variants",
    "seeds",
    "metrics",
    "resources",
    "max_concurrent",
    "plot_x",
    "compare_to",
    "select",
    "select_from",
    "select_variant",
)
# First components a dotted key may start with: the sections of a `hycam fit` config.
CONFIG_SECTIONS = ("seed_everything", "trainer", "model", "data", "ckpt_path", "optimizer", "lr_scheduler")
VARIANT_CONFIGS = "configs"  # reserved key in a variant: extra config files merged after the base configs
GRID_VALUE_KEYS = {"value", "with"}
RESOURCE_KEYS = ("cpu", "gpu")
CHECKPOINT_CLASS = "lightning.pytorch.callbacks.ModelCheckpoint"
LOGGER_CLASS = "lightning.pytorch.loggers.TensorBoardLogger"
DATA_SEED = "data.seed"  # follows each trial's seed unless the sweep file sets it
LOG_NAME = "logs"  # <trial>/logs/version_0/: TensorBoard events, results.json of `hycam test`
LOG_VERSION = 0
TRIALS_DIR = "trials"  # <sweep>/trials/<trial id>/
SELECTION_JSON = "selection.json"
ALL_VARIANTS = "*"  # the selection of a sweep without variants: it applies to every variant of a later sweep
MAX_SELECTION_BYTES = 1 << 20


class SweepError(ValueError):
    """A bad sweep file; the message names the file and the key (one ``error:`` line at the command line)."""


@dataclass(frozen=True)
class Trial:
    """One run of the sweep: a variant, one value per grid key, and a seed."""

    id: str
    variant: str | None
    point: dict[str, Any]  # grid key -> the value as written in the sweep file (for tables and plots)
    seed: int
    config: dict[str, Any]  # the merged hycam config before the per-trial paths are filled in

    @property
    def group(self) -> tuple[Any, ...]:
        """What identifies the grid point across seeds."""
        return (self.variant, *(_hashable(v) for v in self.point.values()))


@dataclass
class SweepSpec:
    path: Path
    name: str
    base: list[Path]
    output: Path
    grid: dict[str, list[Any]]
    variants: dict[str, dict[str, Any]] | None
    seeds: list[int]
    metrics: list[str]
    resources: dict[str, float]
    overrides: dict[str, Any] = field(default_factory=dict)
    max_concurrent: int | None = None
    plot_x: str | None = None
    compare_to: tuple[str | None, Any] | None = None  # (None, variant) or (grid key, value)
    select: str | None = None  # the grid key chosen per variant on validation loss
    select_from: Path | None = None
    selected: dict[str | None, Any] = field(default_factory=dict)  # variant -> value, read from select_from
    selected_key: str | None = None

    def reference_of(self, variant: str | None, point: Mapping[str, Any]) -> tuple[Any, ...] | None:
        """The group (as :attr:`Trial.group`) a group is paired with under ``compare_to``; None for the
        reference groups themselves."""
        if self.compare_to is None:
            return None
        key, value = self.compare_to
        if key is None:
            if variant == value:
                return None
            return (value, *(_hashable(v) for v in point.values()))
        if _slug(point[key]) == _slug(value):
            return None
        return (variant, *(_hashable(value if k == key else v) for k, v in point.items()))

    def trials(self) -> list[Trial]:
        """Every trial, variants outermost, then the grid in file order, then seeds."""
        base = merge_configs(self.base, self.path, "base")
        variants = self.variants if self.variants is not None else {None: {}}
        keys = list(self.grid)
        trials: list[Trial] = []
        labels = {key: _short_key(key, keys) for key in keys}
        for variant, overrides in variants.items():
            variant_base = copy.deepcopy(base)
            extra = overrides.get(VARIANT_CONFIGS, [])
            if extra:
                where = f"variants.{variant}.{VARIANT_CONFIGS}"
                variant_base = deep_merge(variant_base, merge_configs(_paths(extra), self.path, where))
            for combination in itertools.product(*(self.grid[key] for key in keys)):
                point: dict[str, Any] = {}
                config = copy.deepcopy(variant_base)
                _apply_all(config, self.overrides, self.path, "overrides")
                _apply_all(
                    config,
                    {k: v for k, v in overrides.items() if k != VARIANT_CONFIGS},
                    self.path,
                    f"variants.{variant}",
                )
                if self.selected_key is not None:
                    chosen = self.selected[variant if variant in self.selected else ALL_VARIANTS]
                    _apply(config, self.selected_key, chosen, self.path, "select_from")
                for key, entry in zip(keys, combination, strict=True):
                    value, companions = _grid_entry(entry)
                    point[key] = value
                    _apply(config, key, value, self.path, f"grid.{key}")
                    _apply_all(config, companions, self.path, f"grid.{key}")
                pinned = any(
                    _names_key(entries, DATA_SEED)
                    for entries in (self.overrides, overrides, self.grid, *self._companions())
                )
                for seed in self.seeds:
                    parts = ([_slug(variant)] if variant is not None else []) + [
                        f"{labels[key]}={_slug(point[key])}" for key in keys
                    ]
                    trial_id = "-".join([*parts, f"seed={seed}"])
                    if len(trial_id.encode()) > MAX_NAME_BYTES:
                        raise SweepError(
                            f"{self.path}: trial directory name {trial_id[:60]!r}... is {len(trial_id.encode())} "
                            f"bytes, over the file-system limit of {MAX_NAME_BYTES}; shorten the grid values "
                            "(or use variants with short names)"
                        )
                    seeded = copy.deepcopy(config)
                    seeded["seed_everything"] = seed
                    if not pinned:
                        _apply(seeded, DATA_SEED, seed, self.path, "seeds")
                    trials.append(Trial(trial_id, variant, dict(point), seed, seeded))
        seen: dict[str, Trial] = {}
        for trial in trials:
            if trial.id in seen:
                raise SweepError(
                    f"{self.path}: two trials get the same directory name {trial.id!r}; "
                    "make the grid values or variant names distinct"
                )
            seen[trial.id] = trial
        return trials

    def _companions(self) -> list[dict[str, Any]]:
        """The overrides set together with grid values (``{value: V, with: {...}}``)."""
        return [_grid_entry(entry)[1] for values in self.grid.values() for entry in values]

    @property
    def x_key(self) -> str | None:
        """The grid key plotted on the x axis (None: the variants are the x axis)."""
        if self.plot_x is not None:
            return self.plot_x
        return next(iter(self.grid), None)


# ------------------------------------------------------------------------------------------------ loading
MAX_DEPTH = (
    64  # sweep files are a few levels deep; deeper ones would exhaust recursion when configs are merged
)
MAX_NAME_BYTES = 255  # NAME_MAX of common file systems: a trial directory name longer than this cannot exist


def _depth(value: Any) -> int:
    """Nesting depth of a parsed YAML value, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        if level > MAX_DEPTH:
            break
        if isinstance(item, Mapping):
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, level + 1) for v in item)
    return deepest


def load_sweep(path: str | Path, output: str | Path | None = None) -> SweepSpec:
    """Read and validate a sweep file; every problem is a :class:`SweepError` naming the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"sweep file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise SweepError(f"{path}: not valid YAML: {error}") from None
    except UnicodeDecodeError as error:
        raise SweepError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    except RecursionError:
        raise SweepError(f"{path}: nested too deeply to be a sweep file") from None
    if _depth(raw) > MAX_DEPTH:
        raise SweepError(
            f"{path}: nested more than {MAX_DEPTH} levels deep; a sweep file is a few levels deep"
        )
    if not isinstance(raw, Mapping):
        raise SweepError(f"{path}: a sweep file must be a mapping of {', '.join(SWEEP_KEYS)}")
    unknown = [key for key in raw if key not in SWEEP_KEYS]
    if unknown:
        raise SweepError(f"{path}: unknown key(s) {unknown}; allowed: {', '.join(SWEEP_KEYS)}")

    def fail(key: str, message: str) -> SweepError:
        return SweepError(f"{path}: {key}: {message}")

    name = raw.get("name", path.stem)
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise fail("name", f"{name!r} must be a non-empty name of letters, digits, '_', '.', '-'")

    if "base" not in raw:
        raise fail("base", "missing; name the hycam config file(s) every trial starts from")
    base = raw["base"]
    base_list = [base] if isinstance(base, str) else base
    if not isinstance(base_list, list) or not base_list or not all(isinstance(b, str) for b in base_list):
        raise fail("base", "must be a config file path or a non-empty list of them")
    for file in base_list:
        if not Path(file).is_file():
            raise fail("base", f"config file not found: {file} (paths are relative to the working directory)")

    overrides = _dotted_mapping(raw.get("overrides", {}), fail, "overrides")

    grid_raw = raw.get("grid", {})
    if not isinstance(grid_raw, Mapping):
        raise fail("grid", "must be a mapping of dotted config keys to lists of values")
    grid: dict[str, list[Any]] = {}
    for key, values in grid_raw.items():
        _check_dotted(key, fail, "grid")
        if not isinstance(values, list) or not values:
            raise fail(f"grid.{key}", "must be a non-empty list of values")
        for entry in values:
            if isinstance(entry, Mapping) and set(entry) & GRID_VALUE_KEYS:
                if "value" not in entry or set(entry) - GRID_VALUE_KEYS:
                    raise fail(
                        f"grid.{key}",
                        f"{dict(entry)!r}: a value with companions is {{value: V, with: {{...}}}}",
                    )
                _dotted_mapping(entry.get("with", {}), fail, f"grid.{key}.with")
        slugs = [_slug(_grid_entry(v)[0]) for v in values]
        if len(set(slugs)) != len(slugs):
            raise fail(f"grid.{key}", f"values {values!r} are not distinct")
        grid[key] = list(values)

    variants_raw = raw.get("variants")
    variants: dict[str, dict[str, Any]] | None = None
    if variants_raw is not None:
        if not isinstance(variants_raw, Mapping) or not variants_raw:
            raise fail("variants", "must be a non-empty mapping of names to sets of overrides")
        variants = {}
        for variant, overrides_v in variants_raw.items():
            if not isinstance(variant, str) or not re.fullmatch(r"[A-Za-z0-9_.+-]+", variant):
                raise fail("variants", f"{variant!r} must be a name of letters, digits, '_', '.', '+', '-'")
            overrides_v = {} if overrides_v is None else overrides_v
            if not isinstance(overrides_v, Mapping):
                raise fail(f"variants.{variant}", "must be a mapping of dotted config keys to values")
            extra = overrides_v.get(VARIANT_CONFIGS, [])
            for file in _paths(extra) if isinstance(extra, (str, list)) else [None]:
                if not isinstance(file, str):
                    raise fail(
                        f"variants.{variant}.{VARIANT_CONFIGS}", "must be a config file path or a list"
                    )
                if not Path(file).is_file():
                    raise fail(f"variants.{variant}.{VARIANT_CONFIGS}", f"config file not found: {file}")
            rest = {k: v for k, v in overrides_v.items() if k != VARIANT_CONFIGS}
            variants[variant] = {**_dotted_mapping(rest, fail, f"variants.{variant}")}
            if extra:
                variants[variant][VARIANT_CONFIGS] = _paths(extra)
    if not grid and variants is None:
        raise fail("grid", "empty: give at least one grid key with values, or variants")

    seeds = raw.get("seeds", [0])
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
        or len(set(seeds)) != len(seeds)
    ):
        raise fail("seeds", f"{seeds!r} must be a non-empty list of distinct integers >= 0")

    metrics = raw.get("metrics")
    if (
        not isinstance(metrics, list)
        or not metrics
        or not all(isinstance(m, str) and re.fullmatch(r"[^/\s]+/[^/\s]+", m) for m in metrics)
    ):
        raise fail(
            "metrics", f"{metrics!r} must be a non-empty list of '<task>/<metric>', e.g. macro/task_score"
        )

    resources_raw = raw.get("resources", {})
    if not isinstance(resources_raw, Mapping) or set(resources_raw) - set(RESOURCE_KEYS):
        raise fail("resources", f"{resources_raw!r} must be a mapping with keys {', '.join(RESOURCE_KEYS)}")
    resources = {"cpu": 1.0, "gpu": 0.0}
    for key, value in resources_raw.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            raise fail(f"resources.{key}", f"{value!r} must be a number >= 0")
        resources[key] = float(value)
    if resources["cpu"] <= 0:
        raise fail("resources.cpu", "must be > 0")

    max_concurrent = raw.get("max_concurrent")
    if max_concurrent is not None and (
        not isinstance(max_concurrent, int) or isinstance(max_concurrent, bool) or max_concurrent < 1
    ):
        raise fail("max_concurrent", f"{max_concurrent!r} must be an integer >= 1")

    plot_x = raw.get("plot_x")
    if plot_x is not None and plot_x not in grid:
        raise fail("plot_x", f"{plot_x!r} is not a grid key ({', '.join(grid) or 'no grid'})")

    compare_to = _compare_to(raw, grid, variants, fail)
    select = raw.get("select")
    if select is not None and (select not in grid or len(grid) != 1):
        raise fail(
            "select",
            f"{select!r} must be the sweep's only grid key (one selection per variant; grid: {', '.join(grid) or 'none'})",
        )
    select_from = raw.get("select_from")
    select_variant = raw.get("select_variant")
    if select_variant is not None and (select_from is None or not isinstance(select_variant, str)):
        raise fail("select_variant", f"{select_variant!r} must be a variant name of the select_from file")
    selected_key, selected = None, {}
    if select_from is not None:
        if not isinstance(select_from, str) or not select_from:
            raise fail("select_from", f"{select_from!r} must be the path of a selection.json")
        selected_key, selected = read_selection(Path(select_from), fail)
        if select_variant is not None:
            if select_variant not in selected:
                raise fail(
                    "select_variant",
                    f"{select_variant!r} has no selection in {select_from} (it has {', '.join(map(str, selected))})",
                )
            selected = {ALL_VARIANTS: selected[select_variant]}  # every trial, whatever its variant's name
        if selected_key in grid:
            raise fail(
                "select_from", f"{selected_key} is also a grid key here; a value cannot come from both"
            )
        for variant in variants or [None]:
            name = variant if variant in selected else ALL_VARIANTS
            if name not in selected:
                raise fail(
                    "select_from",
                    f"{select_from} has no selection for variant {variant!r} (it has {', '.join(map(str, selected))})",
                )
            if selected[name] is None:
                raise fail(
                    "select_from",
                    f"{select_from}: the selection for variant {select_variant or name!r} is incomplete (a trial has not finished, "
                    "or has no validation loss); rerun that sweep first",
                )

    out = raw.get("output", f"runs/sweeps/{name}") if output is None else output
    if not isinstance(out, (str, Path)) or not str(out):
        raise fail("output", f"{out!r} must be a directory path")

    spec = SweepSpec(
        path=path,
        name=name,
        base=[Path(b) for b in base_list],
        output=Path(out),
        grid=grid,
        variants=variants,
        seeds=list(seeds),
        metrics=list(metrics),
        resources=resources,
        overrides=overrides,
        max_concurrent=max_concurrent,
        plot_x=plot_x,
        compare_to=compare_to,
        select=select,
        select_from=Path(select_from) if select_from is not None else None,
        selected=selected,
        selected_key=selected_key,
    )
    for trial in spec.trials():  # every override must apply to the merged configs
        retired = retired_options_error(trial.config.get("model"), f"{path}: trial {trial.id}")
        if retired:
            raise SweepError(retired)
        try:
            trial_config(trial.config, spec.output / trial.id)
        except SweepError as error:
            raise SweepError(f"{path}: trial {trial.id}: {error}") from None
    return spec


def _compare_to(
    raw: Mapping[str, Any], grid: Mapping[str, list[Any]], variants: Mapping[str, Any] | None, fail: Any
) -> tuple[str | None, Any] | None:
    """``compare_to``: a variant name, or a value of exactly one grid key."""
    if "compare_to" not in raw:
        return None
    value = raw["compare_to"]
    if variants is not None and isinstance(value, str) and value in variants:
        return None, value
    keys = [
        key for key, values in grid.items() if any(_slug(_grid_entry(v)[0]) == _slug(value) for v in values)
    ]
    if len(keys) == 1:
        return keys[0], next(
            _grid_entry(v)[0] for v in grid[keys[0]] if _slug(_grid_entry(v)[0]) == _slug(value)
        )
    if len(keys) > 1:
        raise fail("compare_to", f"{value!r} is a value of several grid keys ({', '.join(keys)})")
    raise fail(
        "compare_to",
        f"{value!r} is neither a variant ({', '.join(variants or []) or 'none'}) nor a grid value",
    )


def read_selection(path: Path, fail: Any) -> tuple[str, dict[str | None, Any]]:
    """A ``selection.json`` written by a sweep with ``select``: its key and the chosen value per variant.
    Only a complete selection (every value of every variant finished) is used."""
    if not path.is_file():
        raise fail("select_from", f"file not found: {path}")
    if path.stat().st_size > MAX_SELECTION_BYTES:
        raise fail("select_from", f"{path} is larger than {MAX_SELECTION_BYTES} bytes; not a selection")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise fail("select_from", f"{path}: not JSON: {error}") from None
    key = data.get("key") if isinstance(data, dict) else None
    variants = data.get("variants") if isinstance(data, dict) else None
    if not isinstance(key, str) or not isinstance(variants, dict) or not variants:
        raise fail("select_from", f"{path} is not a selection (needs 'key' and 'variants')")
    selected: dict[str | None, Any] = {}
    for name, entry in variants.items():
        if not isinstance(entry, dict) or "chosen" not in entry:
            raise fail("select_from", f"{path}: variant {name!r} has no 'chosen' value")
        # an incomplete selection is kept as None: refused only if a variant of this sweep needs it
        selected[name] = entry["chosen"] if entry.get("complete", False) else None
    return key, selected


def _dotted_mapping(value: Any, fail: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise fail(where, "must be a mapping of dotted config keys to values")
    for key in value:
        _check_dotted(key, fail, where)
    return dict(value)


def _check_dotted(key: Any, fail: Any, where: str) -> None:
    if not isinstance(key, str) or not key or any(not part for part in key.split(".")):
        raise fail(where, f"{key!r} is not a dotted config key like model.method.num_experts")
    if key.split(".")[0] not in CONFIG_SECTIONS:
        raise fail(
            f"{where}.{key}",
            f"unknown config section {key.split('.')[0]!r}; one of {', '.join(CONFIG_SECTIONS)}",
        )


def _names_key(overrides: Mapping[str, Any], key: str) -> bool:
    """Whether dotted ``overrides`` set ``key``, directly (``data.seed``) or inside a mapping (``data: {seed: ..}``)."""
    for name, value in overrides.items():
        if name == key:
            return True
        rest = key.removeprefix(name + ".")
        if rest != key and isinstance(value, Mapping) and _names_key(value, rest):
            return True
    return False


def _paths(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _grid_entry(entry: Any) -> tuple[Any, dict[str, Any]]:
    """A grid value and the companion overrides set together with it (``{value: V, with: {...}}``)."""
    if isinstance(entry, Mapping) and "value" in entry and set(entry) <= GRID_VALUE_KEYS:
        return entry["value"], dict(entry.get("with") or {})
    return entry, {}


def _short_key(key: str, keys: list[str]) -> str:
    """The last component of a dotted key, unless two grid keys share it."""
    last = key.split(".")[-1]
    return last if sum(k.split(".")[-1] == last for k in keys) == 1 else key


def _slug(value: Any) -> str:
    text = value if isinstance(value, str) else yaml.safe_dump(value, default_flow_style=True).strip()
    text = text.removesuffix("\n...").strip()
    return re.sub(r"[^A-Za-z0-9_.+=-]+", "_", text).strip("_") or "_"


def _hashable(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool, type(None))) else _slug(value)


# ------------------------------------------------------------------------------------ config merging
def merge_configs(files: list[Path] | list[str], sweep_path: Path, where: str) -> dict[str, Any]:
    """The hycam configs merged in order, like repeated ``-c``: mappings merge, anything else is replaced."""
    merged: dict[str, Any] = {}
    for file in files:
        try:
            loaded = yaml.safe_load(Path(file).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as error:
            raise SweepError(f"{sweep_path}: {where}: cannot read config {file}: {error}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, Mapping):
            raise SweepError(f"{sweep_path}: {where}: config {file} is not a mapping")
        merged = deep_merge(merged, loaded)
    return merged


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``update`` over ``base``. Two ``class_path`` specs of different classes do not mix their ``init_args``."""
    result = copy.deepcopy(dict(base))
    for key, value in update.items():
        old = result.get(key)
        if isinstance(old, Mapping) and isinstance(value, Mapping):
            if "class_path" in old and "class_path" in value and old["class_path"] != value["class_path"]:
                result[key] = copy.deepcopy(dict(value))
            else:
                result[key] = deep_merge(old, value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def _apply_all(config: dict[str, Any], overrides: Mapping[str, Any], sweep_path: Path, where: str) -> None:
    for key, value in overrides.items():
        _apply(config, key, value, sweep_path, where)


def _apply(config: dict[str, Any], key: str, value: Any, sweep_path: Path, where: str) -> None:
    """Set dotted ``key`` (list items by index, ``init_args`` implied) to ``value``; mappings merge in."""
    parts = key.split(".")
    node: Any = config
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, dict) and "class_path" in node and part not in ("class_path", "init_args"):
            node = node.setdefault("init_args", {})
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise SweepError(
                    f"{sweep_path}: {where}: {key}: {'.'.join(parts[:i])} is a list of {len(node)}; "
                    f"{part!r} is not an index in it"
                )
            index = int(part)
            if last:
                node[index] = _merged_value(node[index], value)
            else:
                node = node[index]
            continue
        if not isinstance(node, dict):
            raise SweepError(
                f"{sweep_path}: {where}: {key}: {'.'.join(parts[:i])} is {node!r}, not a mapping"
            )
        if last:
            node[part] = _merged_value(node.get(part), value)
        else:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            node = child


def _merged_value(old: Any, value: Any) -> Any:
    if isinstance(old, dict) and isinstance(value, Mapping):
        if "class_path" in old and "class_path" in value and old["class_path"] != value["class_path"]:
            return copy.deepcopy(dict(value))  # another class: the old one's init_args do not apply
        return deep_merge(old, value)
    return copy.deepcopy(value)


# ------------------------------------------------------------------------------------ per-trial config
def trial_config(config: Mapping[str, Any], trial_dir: Path) -> dict[str, Any]:
    """The trial's complete config: logs, checkpoints and the default root inside ``trial_dir``.

    The TensorBoard logger gets a fixed version so that ``fit``, a resumed ``fit`` and ``test`` share one run
    directory; a ``ModelCheckpoint`` with ``save_last`` is required by ``test --ckpt_path last`` and is added
    (saving only ``last.ckpt``) if the config has none.
    """
    config = copy.deepcopy(dict(config))
    trainer = config.setdefault("trainer", {})
    if not isinstance(trainer, dict):
        raise SweepError(f"trainer must be a mapping, got {trainer!r}")
    trainer["default_root_dir"] = str(trial_dir)
    logger = trainer.get("logger")
    if logger in (None, True) or (
        isinstance(logger, dict) and logger.get("class_path", "").endswith("TensorBoardLogger")
    ):
        init = dict(logger.get("init_args", {})) if isinstance(logger, dict) else {}
        init.update(save_dir=str(trial_dir), name=LOG_NAME, version=LOG_VERSION)
        trainer["logger"] = {"class_path": LOGGER_CLASS, "init_args": init}
    else:
        raise SweepError(
            f"trainer.logger={logger!r}: a sweep needs the TensorBoard logger (each trial's results and events "
            "go into its own directory)"
        )
    callbacks = trainer.get("callbacks") or []
    if isinstance(callbacks, dict):
        callbacks = [callbacks]
    callbacks = [copy.deepcopy(c) for c in callbacks]
    checkpoints = [
        c
        for c in callbacks
        if isinstance(c, dict) and str(c.get("class_path", "")).endswith("ModelCheckpoint")
    ]
    if not checkpoints:
        callbacks.append({"class_path": CHECKPOINT_CLASS, "init_args": {"save_top_k": 0}})
        checkpoints = callbacks[-1:]
    for callback in checkpoints:
        init = callback.setdefault("init_args", {})
        init.update(dirpath=str(trial_dir / "checkpoints"), save_last=True)
    trainer["callbacks"] = callbacks
    return config
