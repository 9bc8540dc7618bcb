"""What a resumed or evaluated run keeps from its checkpoint, and what the user's options change.

Why: LightningCLI's ``--ckpt_path`` re-parses the checkpoint's saved hyper-parameters over the user's
``model.*`` options, and restoring the optimizer and scheduler brings back the old learning rates, so a
changed option silently vanished. Here the user's configuration always wins, with two kinds of options:

- options that define the trained weights (:data:`FIXED_OPTIONS`: the method's class and the options it names
  in ``structure()``, the backbone, its initialisation, and the backbone dtype when training) must equal the
  checkpoint's or the run stops with one ``error:`` line naming the option and both values;
- every other option takes effect; the optimizer's learning rates, weight decay and betas and the scheduler's
  base rates are rewritten after Lightning restored them (:func:`apply_optimizer_options`), and each change is
  logged.

It also resolves ``--ckpt_path last`` across per-run checkpoint directories (``<log dir>/checkpoints``),
gives truncated/missing checkpoints and unwritable output directories a one-line error before any heavy work,
and decides that ``fit --ckpt_path last`` continues the run directory it resumes.
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import re
import socket
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only

from hycam_pl.backbone import config_from_dict
from hycam_pl.methods import DEFAULT_METHOD, resolve_method, upgrade_hparams
from hycam_pl.methods.base import plain
from hycam_pl.training.checkpoints import CKPT_SUFFIX, is_checkpoint_folder, read_checkpoint

log = logging.getLogger(__name__)

LAST_PATTERN = re.compile(r"^last(-(\d+))?$")  # Lightning's ModelCheckpoint names: last.ckpt, last-v1.ckpt
SPECIAL_CKPT_PATHS = ("best", "hpc")
EVAL_STAGES = ("validate", "test", "predict")

# Options outside the method that fix the trained weights (the method says which of its own do: ``structure``).
FIXED_OPTIONS = ("method", "backbone", "init_seed", "dtype")
# Options that only matter while training: not reported as changes when evaluating.
TRAINING_OPTIONS = (
    "learning_rate",
    "weight_decay",
    "betas",
    "warmup_ratio",
    "max_nonfinite_steps",
    "activation_checkpointing",
)
# Not reported: a resumed run's weights come from the checkpoint, whatever adapter it started from.
IGNORED_OPTIONS = ("adapter",)


# ------------------------------------------------------------------------------------- reading checkpoints
def _is_checkpoint(path: Path) -> bool:
    """A checkpoint file, or a checkpoint folder (DeepSpeed, or FSDP2's distributed checkpoint)."""
    return path.is_file() or is_checkpoint_folder(path)


# ------------------------------------------------------------------------- where a run's checkpoints live
def _get(namespace: Any, key: str, default: Any = None) -> Any:
    if namespace is None:
        return default
    if hasattr(namespace, "get"):
        value = namespace.get(key, default)
        return default if value is None else value
    return getattr(namespace, key, default)


def _first_logger(trainer: Any) -> Any:
    """The config of the logger Lightning uses for checkpoint paths (the first), None/False when disabled,
    True for Lightning's default logger."""
    logger = _get(trainer, "logger", True)
    if isinstance(logger, list):
        return logger[0] if logger else False
    return logger


def logger_root(trainer: Any) -> Path | None:
    """``<save_dir>/<name>``: the folder holding this config's run (version) directories, None without a
    logger (or one without a save directory)."""
    logger = _first_logger(trainer)
    if logger is False:
        return None
    default_root = Path(_get(trainer, "default_root_dir", os.getcwd()))
    if (
        logger is True or logger is None
    ):  # Lightning's default: TensorBoardLogger(default_root_dir, "lightning_logs")
        return default_root / "lightning_logs"
    args = _get(logger, "init_args", logger)
    save_dir = _get(args, "save_dir")
    if save_dir is None:
        return None
    name = _get(args, "name", "lightning_logs")
    return Path(save_dir) / str(name) if name else Path(save_dir)


def _checkpoint_callbacks(trainer: Any) -> list[Any]:
    from lightning.pytorch.callbacks import ModelCheckpoint

    found = []
    for callback in _get(trainer, "callbacks", []) or []:
        class_path = _get(callback, "class_path")
        if isinstance(callback, ModelCheckpoint):
            found.append({"dirpath": callback.dirpath})
            continue
        if not isinstance(class_path, str):
            continue
        module_name, _, class_name = class_path.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError, ValueError):
            continue
        if isinstance(cls, type) and issubclass(cls, ModelCheckpoint):
            found.append(plain(_get(callback, "init_args", {})) or {})
    if not found and _get(trainer, "enable_checkpointing", True):
        found.append({})  # Lightning adds a default ModelCheckpoint
    return found


def checkpoint_directories(trainer: Any) -> list[Path]:
    """Where this config's ``ModelCheckpoint``s write: the ``dirpath`` when set, else every
    ``<save_dir>/<name>/<version>/checkpoints`` (one per run), else ``<default_root_dir>/checkpoints`` without
    a logger (Lightning's rule)."""
    directories: list[Path] = []
    root = logger_root(trainer)
    for callback in _checkpoint_callbacks(trainer):
        dirpath = callback.get("dirpath")
        if dirpath:
            directories.append(Path(dirpath))
        elif root is not None:
            if root.is_dir():
                directories.extend(run / "checkpoints" for run in sorted(root.iterdir()) if run.is_dir())
        else:
            directories.append(Path(_get(trainer, "default_root_dir", os.getcwd())) / "checkpoints")
    return directories


def checkpoint_locations(trainer: Any) -> list[str]:
    """Where :func:`find_last_checkpoint` looks, for messages (``<save_dir>/<name>/*/checkpoints`` per run)."""
    root = logger_root(trainer)
    places = []
    for callback in _checkpoint_callbacks(trainer):
        if callback.get("dirpath"):
            places.append(str(callback["dirpath"]))
        elif root is not None:
            places.append(str(root / "*" / "checkpoints"))
        else:
            places.append(str(Path(_get(trainer, "default_root_dir", os.getcwd())) / "checkpoints"))
    return list(dict.fromkeys(places))


def find_last_checkpoint(trainer: Any) -> Path | None:
    """The most recently written ``last*.ckpt`` of any run of this config (Lightning picks by time too)."""
    candidates = [
        p
        for directory in checkpoint_directories(trainer)
        if directory.is_dir()
        for p in directory.glob(f"last*{CKPT_SUFFIX}")
        if LAST_PATTERN.match(p.stem) and _is_checkpoint(p)
    ]
    return max(candidates, key=lambda p: p.stat().st_mtime) if candidates else None


def run_version_of(checkpoint: Path, trainer: Any) -> int | str | None:
    """The logger version (``version_3`` -> 3, a named version -> its name) whose run directory holds
    ``checkpoint`` in its ``checkpoints`` folder, or None when it lies elsewhere."""
    root = logger_root(trainer)
    if root is None or checkpoint.parent.name != "checkpoints":
        return None
    run = checkpoint.parent.parent
    try:
        if run.parent.resolve() != root.resolve():
            return None
    except OSError:
        return None
    match = re.fullmatch(r"version_(\d+)", run.name)
    return int(match.group(1)) if match else run.name


# ------------------------------------------------------------------------------------ output directories
def output_directories(section: Any, subcommand: str) -> list[tuple[str, Path]]:
    """``(option, directory)`` for everything this run will write into."""
    trainer = _get(section, "trainer")
    found: list[tuple[str, Path]] = []
    default_root = _get(trainer, "default_root_dir")
    if default_root:
        found.append(("trainer.default_root_dir", Path(default_root)))
    logger = _first_logger(trainer)
    loggers = _get(trainer, "logger")
    for i, entry in enumerate(loggers if isinstance(loggers, list) else [logger]):
        if entry in (None, True, False):
            continue
        save_dir = _get(_get(entry, "init_args", entry), "save_dir")
        if save_dir:
            option = (
                "trainer.logger.init_args.save_dir"
                if not isinstance(loggers, list)
                else f"trainer.logger.{i}.init_args.save_dir"
            )
            found.append((option, Path(save_dir)))
    if subcommand == "fit":
        for callback in _checkpoint_callbacks(trainer):
            if callback.get("dirpath"):
                found.append(("ModelCheckpoint dirpath", Path(callback["dirpath"])))
    cache_dir = _get(_get(section, "data"), "cache_dir")
    if cache_dir:
        found.append(("data.cache_dir", Path(cache_dir).expanduser()))
    predict_output = _get(_get(section, "model"), "predict_output")
    if subcommand == "predict" and predict_output:
        found.append(("model.predict_output", Path(predict_output).parent))
    return found


def check_writable(option: str, directory: Path) -> None:
    """``directory`` exists and takes a new file, or can be created: probe the nearest existing ancestor with a
    temporary file (permission bits alone say nothing for root; a read-only file system refuses root too).
    Nothing is created: the run directories appear only once the data has been checked."""
    directory = Path(directory)
    existing = directory
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{option}: cannot create {directory}: {existing} is a file, not a directory")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        where = directory if existing == directory else f"{directory} (in {existing})"
        raise ValueError(f"{option}: cannot write to {where}: {error.strerror or error}") from None


def check_output_directories(section: Any, subcommand: str) -> None:
    for option, directory in output_directories(section, subcommand):
        check_writable(option, directory)


# ---------------------------------------------------------------------------------- options vs checkpoint
def _methods(configured: Mapping[str, Any], saved: Mapping[str, Any]) -> tuple[Any, Any]:
    """(checkpoint's method, this run's method), each built from its ``model.method``."""
    return resolve_method(saved.get("method", DEFAULT_METHOD)), resolve_method(
        configured.get("method", DEFAULT_METHOD)
    )


def _method_label(method: Any) -> str:
    return method.spec()["class_path"]


def _same_backbone_value(key: str, saved: dict[str, Any], configured: dict[str, Any]) -> bool:
    """Equal as written, or equal once transformers fills in its defaults (an explicit default is no change)."""
    if saved.get(key) == configured.get(key):
        return True
    try:
        a, b = config_from_dict(saved), config_from_dict(configured)
    except ValueError:
        return False
    return key != "model_type" and getattr(a, key, None) == getattr(b, key, None)


def _normalise_source(value: Any) -> Any:
    if isinstance(value, str) and os.path.exists(value):
        return os.path.realpath(value)
    return value


def option_conflicts(configured: Mapping[str, Any], saved: Mapping[str, Any], subcommand: str) -> list[str]:
    """``model.<option>: checkpoint <a> vs this run <b>`` for each weight-defining option that differs."""
    conflicts: list[str] = []

    def differ(option: str, old: Any, new: Any) -> None:
        conflicts.append(f"model.{option}: checkpoint {old!r} vs this run {new!r}")

    old_method, new_method = _methods(configured, saved)
    if type(old_method) is not type(new_method):
        differ("method", _method_label(old_method), _method_label(new_method))
        return conflicts
    old_backbone, new_backbone = plain(saved.get("backbone")), plain(configured.get("backbone"))
    if isinstance(old_backbone, Mapping) and isinstance(new_backbone, Mapping):
        old_backbone, new_backbone = dict(old_backbone), dict(new_backbone)
        for key in sorted(set(old_backbone) | set(new_backbone)):
            if not _same_backbone_value(key, old_backbone, new_backbone):
                differ(f"backbone.{key}", old_backbone.get(key), new_backbone.get(key))
        if saved.get("init_seed", 0) != configured.get("init_seed", 0):  # the frozen weights of a config dict
            differ("init_seed", saved.get("init_seed", 0), configured.get("init_seed", 0))
    elif _normalise_source(old_backbone) != _normalise_source(new_backbone):
        differ("backbone", old_backbone, new_backbone)
    if subcommand == "fit" and saved.get("dtype", "float32") != configured.get("dtype", "float32"):
        differ("dtype", saved.get("dtype", "float32"), configured.get("dtype", "float32"))
    old_structure, new_structure = old_method.structure(), new_method.structure()
    for name in sorted(set(old_structure) | set(new_structure)):
        a, b = old_structure.get(name), new_structure.get(name)
        if _plain_value(a) != _plain_value(b):
            differ(f"method.{name}", a, b)
    return conflicts


def changed_options(configured: Mapping[str, Any], saved: Mapping[str, Any], subcommand: str) -> list[str]:
    """``model.<option>: <old> -> <new>`` for each option that may change and did (stage-relevant only)."""
    changes: list[str] = []
    skip = {"method", "backbone", "init_seed", *IGNORED_OPTIONS} | (
        {"dtype"} if subcommand == "fit" else set()
    )
    if subcommand != "fit":
        skip |= set(TRAINING_OPTIONS)
    for key in sorted(set(saved) | set(configured)):
        if key in skip or key.startswith("_"):
            continue
        old, new = plain(saved.get(key)), plain(configured.get(key))
        if isinstance(old, (list, tuple)) and isinstance(new, (list, tuple)):
            old, new = list(old), list(new)
        if old != new:
            changes.append(f"model.{key}: {old!r} -> {new!r}")
    old_method, new_method = _methods(configured, saved)
    if type(old_method) is type(new_method):
        structure = set(old_method.structure())
        old_args, new_args = old_method.init_args, new_method.init_args
        for name in sorted((set(old_args) | set(new_args)) - structure):
            if _plain_value(old_args.get(name)) != _plain_value(new_args.get(name)):
                changes.append(f"model.method.{name}: {old_args.get(name)!r} -> {new_args.get(name)!r}")
    return changes


def check_options_fit_checkpoint(
    configured: Mapping[str, Any], checkpoint: Mapping[str, Any], path: Path, subcommand: str
) -> None:
    """Refuse a checkpoint whose weight-defining options differ from the configuration; log the rest."""
    saved = checkpoint.get("hyper_parameters") or {}
    if not saved:
        return  # not written by MultiTaskLM's save_hyperparameters: the tensor checks still apply on load
    saved = upgrade_hparams(saved, f"--ckpt_path {path}")
    conflicts = option_conflicts(configured, saved, subcommand)
    if conflicts:
        raise ValueError(
            f"--ckpt_path {path} was trained with different weight-defining options: {'; '.join(conflicts)}; "
            "set them to the checkpoint's values (or start a new run without --ckpt_path)"
        )
    changes = changed_options(configured, saved, subcommand)
    if changes:
        log.warning("options changed since checkpoint %s take effect: %s", path, "; ".join(changes))


def _plain_value(value: Any) -> Any:
    value = plain(value)
    return list(value) if isinstance(value, tuple) else value


def check_checkpoint_fits(
    trainable: set[str],
    known: set[str],
    shapes: Mapping[str, tuple[int, ...]],
    checkpoint: Mapping[str, Any],
) -> None:
    """Refuse a checkpoint whose tensors do not fit the model (``trainable``/``known``: the module's trainable
    and all state keys; ``shapes``: their logical shapes) with one line, not torch's size-mismatch traceback."""
    state = checkpoint.get("state_dict")
    if state is None:  # a sharded strategy loaded the weights itself (and popped them)
        return
    missing = sorted(trainable - set(state))
    unexpected = sorted(set(state) - known)
    if missing or unexpected:
        raise ValueError(
            f"checkpoint does not fit this model: {len(missing)} trainable tensors missing "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}); "
            "was it trained with a different model.method or model.backbone?"
        )
    reshaped = shape_mismatches(shapes, state)
    if reshaped:
        raise ValueError(
            f"checkpoint does not fit this model: {len(reshaped)} tensors have other shapes (e.g. "
            f"{'; '.join(reshaped[:2])}); was it trained with different model.method options or model.backbone?"
        )


def shape_mismatches(
    model_shapes: Mapping[str, tuple[int, ...]], saved_state: Mapping[str, Any]
) -> list[str]:
    """``name: checkpoint (a, b) vs model (c, d)`` for each tensor present in both with different shapes."""
    return [
        f"{name}: checkpoint {tuple(saved_state[name].shape)} vs model {tuple(shape)}"
        for name, shape in model_shapes.items()
        if name in saved_state
        and hasattr(saved_state[name], "shape")
        and tuple(saved_state[name].shape) != tuple(shape)
    ]


# ------------------------------------------------------------------------------------------- the CLI step
def prepare_checkpoint(section: Any, subcommand: str) -> Path | None:
    """Resolve, read and check ``--ckpt_path`` of a parsed ``hycam`` config before anything is instantiated.

    ``last`` becomes the newest ``last*.ckpt`` of this config's runs (per-run folders included); evaluating
    with ``last`` and none found is an error (it would evaluate an untrained model). ``fit`` from a run's last
    checkpoint continues that run: the logger's version is set to it, so logs and checkpoints stay together;
    any other checkpoint starts a new run directory and leaves the original run's files alone.
    Returns the checkpoint file, or None when there is none to load.
    """
    ckpt_path = _get(section, "ckpt_path")
    if not ckpt_path or ckpt_path in SPECIAL_CKPT_PATHS or "://" in str(ckpt_path):
        return None
    trainer = _get(section, "trainer")
    if ckpt_path == "last":
        found = find_last_checkpoint(trainer)
        if found is None:
            if subcommand == "fit":
                return None  # Lightning warns and starts from scratch: "set and forget" for preemptible jobs
            places = ", ".join(checkpoint_locations(trainer)) or "no checkpoint directory is configured"
            raise FileNotFoundError(
                f"--ckpt_path last: no last checkpoint found (looked in: {places}); train first with "
                "'hycam fit' (ModelCheckpoint save_last: true) or pass a checkpoint file"
            )
        path = found
    else:
        path = Path(ckpt_path)
    checkpoint = read_checkpoint(path, "--ckpt_path")
    model = plain(_get(section, "model", {})) or {}
    check_options_fit_checkpoint(model, checkpoint, path, subcommand)
    section["ckpt_path"] = str(path)
    if subcommand == "fit" and LAST_PATTERN.match(path.stem):
        version = run_version_of(path, trainer)
        if version is not None:
            lock_run_directory(path.parent.parent)  # one resumer per run directory
            _continue_run(trainer, version, checkpoint)
    return path


RUN_LOCK = ".hycam-fit.lock"
_HELD_RUN_LOCKS: dict[str, Any] = {}  # open lock files, held until the process ends (released by the OS then)


def lock_run_directory(directory: Path) -> None:
    """Refuse a second ``fit --ckpt_path last`` continuing the same run directory while one runs.

    Why: both would write one ``version_<n>/`` (events, ``config.yaml``, checkpoints), each overwriting the other's
    ``last.ckpt``: whichever saved last would silently "win" with a mixture of both runs' curves. The first
    resumer holds an advisory ``flock`` on ``<run>/.hycam-fit.lock`` for its whole life (released by the OS
    however it ends, so a crash leaves no stale lock); a second one stops with one ``error:`` line naming the
    holder. Only the launching process (global rank 0) takes it: the other ranks of that same run do not.
    """
    if getattr(rank_zero_only, "rank", 0) != 0 or str(directory) in _HELD_RUN_LOCKS:
        return
    path = directory / RUN_LOCK
    try:
        import fcntl
    except ImportError:  # not POSIX: no advisory locks; concurrent resumes are not detected there
        return
    handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 (held open for the process lifetime)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise ValueError(
            f"--ckpt_path last: run directory {directory} is being resumed by another hycam fit ({holder}); wait "
            "for it to end, or pass a checkpoint file (--ckpt_path <file>) to start a new run from it"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on host {socket.gethostname()}")
    handle.flush()
    _HELD_RUN_LOCKS[str(directory)] = handle


def _continue_run(trainer: Any, version: int | str, checkpoint: Mapping[str, Any]) -> None:
    """Point the (first) logger at the resumed run's version directory; TensorBoard events the interrupted run
    wrote after the checkpoint's step are purged, so the curves are not drawn twice."""
    logger = _first_logger(trainer)
    args = _get(logger, "init_args")
    if args is None or _get(args, "version") is not None:
        return  # Lightning's default logger, or a version the user chose: leave it
    args["version"] = version
    step = checkpoint.get("global_step")
    if "purge_step" in args and _get(args, "purge_step") is None and isinstance(step, int):
        args["purge_step"] = step
    log.warning("resuming run directory %s (version %s)", logger_root(trainer), version)


# --------------------------------------------------------------------------------- optimizer after restore
def apply_optimizer_options(module: Any) -> list[str]:
    """After Lightning restored a checkpoint's optimizer and scheduler: rewrite their learning rates, weight
    decay and betas to this run's options (and the schedule's current rate when warmup or the step budget
    changed), logging what changed. A no-op when not resuming or nothing changed. Returns the changes."""
    trainer = module.trainer
    if not getattr(trainer, "ckpt_path", None) or len(trainer.optimizers) != 1:
        return []
    restored = trainer.optimizers[0]
    configs = trainer.lr_scheduler_configs
    scheduler = configs[0].scheduler if len(configs) == 1 else None
    fresh = module.configure_optimizers()
    fresh_optimizer = fresh["optimizer"] if isinstance(fresh, Mapping) else fresh
    if not isinstance(restored, torch.optim.Optimizer) or len(restored.param_groups) != len(
        fresh_optimizer.param_groups
    ):
        return []
    changes: dict[str, list[str]] = {}  # "what: old -> new" -> the parameter groups it applies to

    def note(what: str, old: Any, new: Any, group: str) -> None:
        changes.setdefault(f"{what} {_short(old)} -> {_short(new)}", []).append(group)

    for i, (group, new) in enumerate(zip(restored.param_groups, fresh_optimizer.param_groups)):
        name = str(group.get("name", i))
        for key in ("weight_decay", "betas", "eps"):
            if key in new and _differs(group.get(key), new[key]):
                note(key, group.get(key), new[key], name)
                group[key] = new[key]
        new_base = new.get("initial_lr", new["lr"])
        if scheduler is not None and hasattr(scheduler, "base_lrs"):
            if _differs(scheduler.base_lrs[i], new_base):
                note("base learning rate", scheduler.base_lrs[i], new_base, name)
                scheduler.base_lrs[i] = new_base
                group["initial_lr"] = new_base
            lambdas = getattr(scheduler, "lr_lambdas", None)
            if lambdas is not None:  # the schedule's function is this run's (warmup, max_steps), not saved
                lr = new_base * lambdas[i](scheduler.last_epoch)
                if _differs(group["lr"], lr):
                    note("current learning rate", group["lr"], lr, name)
                    group["lr"] = lr
        elif _differs(group["lr"], new_base):
            note("learning rate", group["lr"], new_base, name)
            group["lr"] = new_base
    if scheduler is not None and hasattr(scheduler, "_last_lr"):
        scheduler._last_lr = [g["lr"] for g in restored.param_groups]
    lines = [f"{change} ({', '.join(groups)})" for change, groups in changes.items()]
    if lines:
        log.warning(
            "resumed at step %d with this run's optimizer options, not the checkpoint's: %s",
            trainer.global_step,
            "; ".join(lines),
        )
    return lines


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(_short(v) for v in value) + ")"
    return repr(value)


def _differs(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return not math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) != len(b) or any(_differs(x, y) for x, y in zip(a, b))
    return a != b
