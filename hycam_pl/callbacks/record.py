"""What a reader needs to trust a fit's numbers, written next to its results: ``run_record.json``.

A sweep adds this callback to every trial's ``hycam fit`` and copies the record into the trial's ``result.json``:
the trainable and total parameter counts (the method's own :meth:`summary`, the project's one counter), the
method's effective options (its options as built, and for a peft adapter the config peft applied: a
parameter-matched LoRA's rank and alpha are only known there), the final validation loss, whether the fit
trained from scratch or resumed and from which step, the code version (git commit and whether the tree had
uncommitted changes) and the torch/transformers/peft versions. Everything is read generically: no method is named.
"""

from __future__ import annotations

import json
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import lightning as L

from hycam_pl.io import write_text_atomically

RUN_RECORD = "run_record.json"
VALIDATION_LOSS = "val/macro/loss"
PACKAGES = ("torch", "transformers", "peft", "lightning")
_REPOSITORY = Path(__file__).resolve().parents[2]


def code_version(directory: Path = _REPOSITORY) -> dict[str, Any]:
    """The git commit of the checkout hycam_pl runs from and whether its tracked files differ from it
    (``None`` when it is not a git checkout, e.g. an installed package)."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(directory), *args], capture_output=True, text=True, timeout=30, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "modified": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "modified": bool(status) if status is not None else None}


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _plain(value: Any) -> Any:
    """JSON-able: mappings and sequences recursively, sets sorted, enums by value, anything else as text."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted(_plain(v) for v in value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "value") and isinstance(value.value, (str, int)):
        return value.value
    return str(value)


def method_record(pl_module: L.LightningModule) -> dict[str, Any]:
    """Parameter counts and effective options of whatever method the module holds."""
    method = getattr(pl_module, "method", None)
    model = getattr(pl_module, "model", None)
    record: dict[str, Any] = {"method": getattr(method, "name", None)}
    if method is not None and model is not None:
        counts = method.summary(model)
        total = counts.get("total") or {
            kind: sum(c[kind] for c in counts.values()) for kind in ("trainable", "frozen")
        }
        record["parameters"] = {
            "trainable": int(total["trainable"]),
            "total": int(total["trainable"] + total["frozen"]),
            "by_component": _plain(counts),
        }
    options: dict[str, Any] = {}
    if method is not None and hasattr(method, "spec"):
        options["method"] = _plain(method.spec())
    hparams = dict(getattr(pl_module, "hparams", {}) or {})
    options["module"] = _plain({k: v for k, v in hparams.items() if k != "backbone"})
    # The compact form results.csv shows: "<mapping>.<option>" from the method's options as built, and from the
    # peft config a peft adapter was really built with (its numbers always, e.g. a matched rank and alpha,
    # its other options where they differ from peft's defaults).
    effective: dict[str, Any] = {}
    if "method" in options:
        effective.update({f"method.{k}": v for k, v in (options["method"].get("init_args") or {}).items()})
    else:  # methods configured by module options: the method's own option mappings
        for key, value in options["module"].items():
            if isinstance(value, dict) and key != "generation":
                effective.update({f"{key}.{k}": v for k, v in value.items()})
    peft_config = getattr(model, "peft_config", None)
    if isinstance(peft_config, dict):  # a peft adapter: the options it was really built with
        # Not its base_model_name_or_path: that is where this machine keeps the backbone (e.g. the dequantised
        # GGUF cache under the home directory), and committed records name no path of the machine they ran on;
        # the backbone as configured is in the module's options.
        options["peft"] = {
            name: _plain({k: v for k, v in _peft_dict(config).items() if k != "base_model_name_or_path"})
            for name, config in peft_config.items()
        }
        for config in peft_config.values():
            effective.update({f"peft.{k}": v for k, v in _peft_applied(config).items()})
    record["options"] = options
    record["effective_options"] = _plain(effective)
    return record


def _peft_dict(config: Any) -> dict[str, Any]:
    return config.to_dict() if hasattr(config, "to_dict") else dict(vars(config))


def _peft_applied(config: Any) -> dict[str, Any]:
    """A peft config's numeric options, and its others that differ from its class's defaults."""
    try:
        defaults = _peft_dict(type(config)())
    except (TypeError, ValueError):
        defaults = {}
    ignored = {
        "task_type",
        "peft_type",
        "base_model_name_or_path",
        "revision",
        "inference_mode",
        "peft_version",
    }
    return {
        key: value
        for key, value in _peft_dict(config).items()
        if key not in ignored
        and (
            (isinstance(value, (int, float)) and not isinstance(value, bool))
            or _plain(value) != _plain(defaults.get(key))
        )
    }


class RunRecord(L.Callback):
    """Writes ``run_record.json`` into the logger's run directory when ``fit`` ends (rank 0); see the module."""

    def __init__(self) -> None:
        self.start: dict[str, Any] = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After the checkpoint's training state is restored: a resumed fit starts at its step.
        self.start = {
            "resumed": trainer.ckpt_path is not None,
            "from_step": int(trainer.global_step),
        }

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start = {"resumed": trainer.ckpt_path is not None}

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.log_dir is None:
            return
        self.start.setdefault("from_step", int(trainer.global_step))  # resumed at its end: nothing trained
        loss = trainer.callback_metrics.get(VALIDATION_LOSS)
        record = {
            **method_record(pl_module),
            "validation": {VALIDATION_LOSS: float(loss) if loss is not None else None},
            "fit": {**self.start, "to_step": int(trainer.global_step)},
            "code": code_version(),
            "versions": package_versions(),
        }
        path = Path(trainer.log_dir) / RUN_RECORD
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomically(path, json.dumps(record, indent=2, allow_nan=True) + "\n")
