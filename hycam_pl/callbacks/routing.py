"""Routing telemetry: is the router collapsing or specialising? Per layer and per task, in TensorBoard."""

from __future__ import annotations

import logging
import math
from typing import Any

import lightning as L
import torch

from hycam_pl.callbacks.heatmap import heatmap_image
from hycam_pl.modulation import balance_loss, is_attached, routing_statistics

log = logging.getLogger(__name__)


class RoutingTelemetry(L.Callback):
    """Logs, every ``every_n_steps`` training steps and for every modulated layer:

    - ``router/layer_<i>/load/expert_<k>`` (fraction of tokens), ``router/layer_<i>/entropy`` (mean per-token
      router entropy), ``router/layer_<i>/load_entropy`` (entropy of the mean load);
    - model-wide ``router/entropy``, ``router/load_entropy``, ``router/max_load``, ``router/balance_loss``;
    - ``router/task/<task>/expert_<k>``: the task x expert usage since the last log, from the batches' task ids;
    - histograms ``router/layer_<i>/probs`` of the router probabilities of real tokens;
    - images ``router/layer_expert_load`` and ``router/task_expert_usage`` (heatmaps, 0 to 1).

    Warns when one expert takes more than ``collapse_share`` of a layer's tokens for ``collapse_patience``
    consecutive logs. Between logs the only per-step work is adding each batch's per-sequence loads into a
    small task x expert matrix on the device (no host synchronisation).
    """

    def __init__(
        self,
        every_n_steps: int = 50,
        histograms: bool = True,
        images: bool = True,
        collapse_share: float = 0.9,
        collapse_patience: int = 3,
    ) -> None:
        if every_n_steps < 1:
            raise ValueError(f"RoutingTelemetry.every_n_steps={every_n_steps} must be >= 1")
        if not 0 < collapse_share <= 1:
            raise ValueError(f"RoutingTelemetry.collapse_share={collapse_share} must be in (0, 1]")
        self.every_n_steps = every_n_steps
        self.histograms = histograms
        self.images = images
        self.collapse_share = collapse_share
        self.collapse_patience = collapse_patience
        self._usage: torch.Tensor | None = None
        self._usage_tokens: torch.Tensor | None = None
        self._collapsed_for: dict[int, int] = {}

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        model = getattr(pl_module, "model", None)
        if model is None or not is_attached(model):
            return
        stats = routing_statistics(model)
        if not stats:
            return
        self._accumulate_usage(stats, batch, trainer)
        if trainer.global_step % self.every_n_steps != 0 or not trainer.is_global_zero:
            return
        self.log_routing(trainer, model, stats, trainer.global_step)

    def _accumulate_usage(self, stats: dict, batch: Any, trainer: L.Trainer) -> None:
        task_ids = batch.get("task_ids") if isinstance(batch, dict) else None
        if task_ids is None:
            return
        num_tasks = len(trainer.datamodule.task_names)
        first = next(iter(stats.values()))
        gate = torch.stack([s.example_gate_sum for s in stats.values()]).sum(0)  # (B, K) over layers
        tokens = torch.stack([s.example_tokens for s in stats.values()]).sum(0)  # (B,)
        if self._usage is None or self._usage.shape != (num_tasks, gate.shape[1]):
            self._usage = first.gate_sum.new_zeros(num_tasks, gate.shape[1])
            self._usage_tokens = first.gate_sum.new_zeros(num_tasks)
        ids = task_ids.to(gate.device)
        self._usage.index_add_(0, ids, gate.to(self._usage.dtype))
        self._usage_tokens.index_add_(0, ids, tokens.to(self._usage.dtype))

    def log_routing(self, trainer: L.Trainer, model: torch.nn.Module, stats: dict, step: int) -> None:
        writer = trainer.logger.experiment if trainer.logger is not None else None
        scalars: dict[str, float] = {}
        loads = []
        for index, layer in sorted(stats.items()):
            load = layer.load.float().cpu()
            loads.append(load)
            for k, value in enumerate(load.tolist()):
                scalars[f"router/layer_{index}/load/expert_{k}"] = value
            scalars[f"router/layer_{index}/entropy"] = float(layer.entropy)
            scalars[f"router/layer_{index}/load_entropy"] = float(layer.load_entropy)
            self._check_collapse(index, load, step)
        load_matrix = torch.stack(loads)
        scalars["router/entropy"] = sum(scalars[f"router/layer_{i}/entropy"] for i in stats) / len(stats)
        scalars["router/load_entropy"] = sum(scalars[f"router/layer_{i}/load_entropy"] for i in stats) / len(
            stats
        )
        scalars["router/max_load"] = float(load_matrix.max())
        scalars["router/balance_loss"] = float(balance_loss(model).detach())
        usage = None
        if self._usage is not None:
            usage = (self._usage / self._usage_tokens.clamp_min(1).unsqueeze(-1)).cpu()
            usage[self._usage_tokens.cpu() == 0] = math.nan
            names = trainer.datamodule.task_names
            for t, name in enumerate(names):
                if not math.isnan(float(usage[t, 0])):
                    for k, value in enumerate(usage[t].tolist()):
                        scalars[f"router/task/{name}/expert_{k}"] = value
            self._usage.zero_()
            self._usage_tokens.zero_()
        if trainer.logger is not None:
            trainer.logger.log_metrics(scalars, step=step)
        if writer is None or not hasattr(writer, "add_histogram"):
            return
        if self.histograms:
            for index, layer in sorted(stats.items()):
                probs = layer.probs if layer.token_mask is None else layer.probs[layer.token_mask]
                writer.add_histogram(f"router/layer_{index}/probs", probs.float().cpu(), step)
        if self.images:
            writer.add_image("router/layer_expert_load", heatmap_image(load_matrix), step, dataformats="CHW")
            if usage is not None:
                writer.add_image("router/task_expert_usage", heatmap_image(usage), step, dataformats="CHW")

    def _check_collapse(self, layer: int, load: torch.Tensor, step: int) -> None:
        share, expert = float(load.max()), int(load.argmax())
        if share > self.collapse_share:
            self._collapsed_for[layer] = self._collapsed_for.get(layer, 0) + 1
            if self._collapsed_for[layer] == self.collapse_patience:
                log.warning(
                    "router collapse: layer %d sent %.0f%% of tokens to expert %d for %d consecutive logs "
                    "(step %d); consider a larger balance_coef or a higher tau",
                    layer,
                    100 * share,
                    expert,
                    self.collapse_patience,
                    step,
                )
        else:
            self._collapsed_for[layer] = 0
