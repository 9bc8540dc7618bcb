"""The run's hyper-parameters and the metrics that judge it, for TensorBoard's HParams tab (runs and sweep trials
side by side)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L

log = logging.getLogger(__name__)

SCORES = ("loss", "ppl", "task_score", "exact_match", "bleu4", "rouge1", "rouge2", "rougeL")
DEFAULT_METRICS = (
    "val/macro/loss",
    "val/loss",
    "val/macro/ppl",
    *(f"test/macro/{name}" for name in SCORES),
    "test/loss",
)

Scalar = bool | int | float | str


def flatten_hparams(params: Mapping[str, Any], prefix: str = "") -> dict[str, Scalar]:
    """Nested hyper-parameters as ``{"a/b": value}`` with values the HParams plugin shows.

    Numbers, strings and booleans stay; lists of those become one string (``"[0.9, 0.95]"``); ``None`` is
    dropped (an unset option: the column stays empty instead of mixing ``"None"`` strings into a numeric column
    across runs); anything else (lists of dicts, objects) is dropped too, it belongs in ``config.yaml``.
    """
    flat: dict[str, Scalar] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_hparams(value, f"{name}/"))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        elif isinstance(value, Sequence) and all(isinstance(v, (bool, int, float, str)) for v in value):
            flat[name] = str(list(value))
    return flat


def run_hparams(trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> dict[str, Scalar]:
    """What identifies a run: every hyper-parameter the module saved (method, its options, learning rates, ...),
    the seed, the task list and batch size, and the trainer settings that change the optimisation."""
    saved = dict(getattr(pl_module, "hparams", {}) or {})
    method = saved.pop("method", None)
    params = flatten_hparams(saved)
    if isinstance(method, Mapping) and "class_path" in method:
        # one readable column for the method (its registry name) and one per option, whatever the method
        name = getattr(getattr(pl_module, "method", None), "name", None)
        params["method"] = str(name or str(method["class_path"]).rsplit(".", 1)[-1])
        params["method/class_path"] = str(method["class_path"])
        params.update(flatten_hparams(dict(method.get("init_args") or {}), "method/"))
    elif method is not None:
        params.update(flatten_hparams({"method": method}))
    seed = os.environ.get("PL_GLOBAL_SEED")  # set by seed_everything (LightningCLI's seed_everything option)
    if seed is not None:
        params["seed"] = int(seed)
    data = getattr(trainer, "datamodule", None)
    names = getattr(data, "task_names", None)
    if names:
        params["data/tasks"] = ",".join(names)
    for field in ("batch_size", "sampling", "max_length"):
        value = getattr(data, field, None)
        if isinstance(value, (bool, int, float, str)):
            params[f"data/{field}"] = value
    params["trainer/max_steps"] = int(trainer.max_steps)
    params["trainer/accumulate_grad_batches"] = int(trainer.accumulate_grad_batches)
    params["trainer/world_size"] = int(trainer.world_size)
    params["trainer/precision"] = str(trainer.precision)
    params["stage"] = stage
    if stage != "fit" and trainer.ckpt_path:
        params["ckpt_path"] = str(trainer.ckpt_path)  # which fit a test row evaluates
    return params


class HParamsSummary(L.Callback):
    """Writes the run's hyper-parameters to TensorBoard's HParams tab, declaring ``metrics`` as its metrics.

    The tab reads each metric's latest value from the run's own scalar series of that tag, so the rows show
    the real macro validation loss after a fit and the test scores after a test (a ``hycam test`` run is its own
    row, ``stage=test``), never a placeholder. Use with ``TensorBoardLogger(default_hp_metric=False)``: with the
    default, Lightning also writes ``hp_metric = -1`` and its own hyper-parameter summary into the run.
    Hyper-parameters are read generically from ``pl_module.hparams``, so any method's options appear.
    """

    def __init__(self, metrics: Sequence[str] = DEFAULT_METRICS) -> None:
        if not metrics:
            raise ValueError("HParamsSummary.metrics must name at least one scalar tag")
        self.metrics = list(metrics)
        self._written: set[str] = set()

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer, pl_module, "fit")

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "validate":
            self._write(trainer, pl_module, "validate")

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer, pl_module, "test")

    def _write(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not trainer.is_global_zero:
            return
        params = run_hparams(trainer, pl_module, stage)
        for logger in trainer.loggers:
            writer = getattr(logger, "experiment", None)
            log_dir = getattr(logger, "log_dir", None)
            if not hasattr(writer, "_get_file_writer") or log_dir in self._written:
                continue  # one HParams session per run directory (fit then test in one process: the fit's)
            if getattr(logger, "_default_hp_metric", False):
                log.warning(
                    "TensorBoardLogger(default_hp_metric=True) also writes hp_metric=-1 to the HParams tab; "
                    "set trainer.logger.init_args.default_hp_metric: false"
                )
            from torch.utils.tensorboard.summary import hparams

            summaries = hparams(params, dict.fromkeys(self.metrics, 0.0))  # values unused: tags only
            file_writer = writer._get_file_writer()
            for summary in summaries:
                file_writer.add_summary(summary)
            writer.flush()
            self._written.add(log_dir)
