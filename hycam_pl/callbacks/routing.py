"""Routing telemetry: is the router collapsing or specialising? Per layer and per task, in TensorBoard."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch

from hycam_pl.callbacks.views import custom_scalar_layout, heatmap_images, routing_markdown
from hycam_pl.metrics.results import ROUTING_SECTION
from hycam_pl.metrics.routing import task_expert_nmi
from hycam_pl.modulation import LayerRouting, find_state, routing_statistics
from hycam_pl.modulation.balance import DEFAULT_BALANCE_SCOPE, balance_from_statistics

log = logging.getLogger(__name__)

HISTOGRAM_BINS = 50


class RoutingTelemetry(L.Callback):
    """Logs, every ``every_n_steps`` optimizer steps, over the training tokens seen since the previous log:

    - ``router/layer_<i>/load/expert_<k>`` (fraction of tokens), ``router/layer_<i>/entropy`` (mean per-token
      router entropy, nats), ``router/layer_<i>/load_entropy`` (entropy of the mean load);
    - model-wide ``router/entropy``, ``router/load_entropy`` (means over layers), ``router/max_load`` and
      ``router/balance_loss`` (``L_bal`` of the window's tokens, same scope and scaling as the training loss);
    - ``router/task/<task>/expert_<k>``: the task x expert usage, from the batches' ``task_ids``;
    - histograms ``router/layer_<i>/probs`` of the router probabilities of the last batch's real tokens (rank 0's);
    - once, a Custom Scalars layout: one chart per layer with its K expert loads, one of the per-layer entropies,
      one per task with its K shares.

    After each validation and at test, over the evaluated examples (the routing the model is judged with):

    - images ``router/layer_expert_load`` (decoder layer x expert) and ``router/task_expert_usage`` (task x
      expert, all layers): labelled heatmaps with the value in every cell and a fixed 0-1 colour scale;
    - text ``router/table``: each layer's most-used expert overall and per task, and the task x expert shares
      per layer group, as Markdown;
    - routing specialisation, the task-expert normalised mutual information of each layer's tokens
      (:func:`~hycam_pl.metrics.routing.task_expert_nmi`): a column of that table, scalars
      ``val/router/layer_<i>/task_nmi`` and ``val/router/task_nmi`` (mean over layers; ``test/...`` at test),
      and at test the ``routing`` section of ``results.json``.

    Why a window and not the last batch: one batch is a noisy sample, and ``collapse`` (one expert taking more
    than ``collapse_share`` of a layer's tokens for ``collapse_patience`` consecutive logs, then a warning)
    should not fire on it. Between logs the only per-step work is a few small in-place adds on the device (no
    host synchronisation). Figures are drawn only at validation and test, so the training steps never pay for
    matplotlib. Under DDP every rank accumulates its own tokens; at a log step (and at the end of an
    evaluation) the window is summed over ranks with one collective and rank 0 logs. Steps follow Lightning's
    ``self.log`` axis, so with ``every_n_steps == log_every_n_steps`` the router points share x values with
    ``train/loss``, and the evaluation views share those of ``val/loss``. Models without a router are skipped
    silently.
    """

    def __init__(
        self,
        every_n_steps: int = 50,
        histograms: bool = True,
        images: bool = True,
        tables: bool = True,
        layout: bool = True,
        collapse_share: float = 0.9,
        collapse_patience: int = 3,
    ) -> None:
        if every_n_steps < 1:
            raise ValueError(f"RoutingTelemetry.every_n_steps={every_n_steps} must be >= 1")
        if not 0 < collapse_share <= 1:
            raise ValueError(f"RoutingTelemetry.collapse_share={collapse_share} must be in (0, 1]")
        if collapse_patience < 1:
            raise ValueError(f"RoutingTelemetry.collapse_patience={collapse_patience} must be >= 1")
        self.every_n_steps = every_n_steps
        self.histograms = histograms
        self.images = images
        self.tables = tables
        self.layout = layout
        self.collapse_share = collapse_share
        self.collapse_patience = collapse_patience
        self._window: dict[str, torch.Tensor] | None = None  # training tokens since the last log
        self._eval_window: dict[str, torch.Tensor] | None = None  # tokens of the running validation / test
        self._layers: list[int] = []
        self._task_names: list[str] = []
        self._layout_written = False
        self._seen_step: int | None = None
        self._collapsed_for: dict[int, int] = {}

    # ----------------------------------------------------------------------------------------- hooks
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._window = None
        self._seen_step = trainer.global_step
        self._collapsed_for = {}
        self._layout_written = False

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if find_state(pl_module, required=False) is None:
            return
        stats = routing_statistics(pl_module)
        if not stats:
            return
        self._window = self.accumulate(stats, batch, _task_names(trainer), self._window)
        # Log once per optimizer step (not once per accumulated micro-batch), on Lightning's cadence.
        stepped = trainer.global_step != self._seen_step
        self._seen_step = trainer.global_step
        if not stepped or trainer.global_step % self.every_n_steps != 0:
            return
        window = self._reduced(trainer, self._window)
        if trainer.is_global_zero:
            self.log_routing(trainer, pl_module, stats, window, step=_logging_step(trainer))
        self._window = None

    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, *args: Any
    ) -> None:
        if not trainer.sanity_checking:
            self._accumulate_eval(pl_module, batch, trainer)

    def on_test_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, *args: Any
    ) -> None:
        self._accumulate_eval(pl_module, batch, trainer)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._finish_eval(trainer, "validation")

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._finish_eval(trainer, "test")

    def _accumulate_eval(self, pl_module: L.LightningModule, batch: Any, trainer: L.Trainer) -> None:
        if not (self.images or self.tables) or find_state(pl_module, required=False) is None:
            return
        stats = routing_statistics(pl_module)
        if stats:
            self._eval_window = self.accumulate(stats, batch, _task_names(trainer), self._eval_window)

    def _finish_eval(self, trainer: L.Trainer, stage: str) -> None:
        if self._eval_window is None:
            return
        window = self._reduced(trainer, self._eval_window)
        self._eval_window = None
        if trainer.is_global_zero:
            step = _logging_step(trainer)
            # A test run restores no loop state (its step is 0): its title names no step.
            title = f"{stage} examples, step {step}" if stage == "validation" else f"{stage} examples"
            prefix = "val" if stage == "validation" else "test"
            views = self.log_views(trainer, window, step, title, prefix)
            sections = getattr(trainer.lightning_module, "extra_test_results", None)
            defined = not bool(torch.isnan(views["task_nmi"]).any())  # two or more tasks evaluated
            if stage == "test" and isinstance(sections, dict) and defined:
                # results.json (written by the module after this hook) gets the same numbers
                sections[ROUTING_SECTION] = specialisation_results(views["task_nmi"], self._layers)

    # ----------------------------------------------------------------------------------- accumulation
    def accumulate(
        self,
        stats: Mapping[int, LayerRouting],
        batch: Any,
        task_names: Sequence[str],
        window: dict[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Add one forward's routing statistics to ``window`` (device tensors only, no host sync); return it.

        A new window starts when there is none, or when the layers or tasks changed.
        """
        layers = sorted(stats)
        first = stats[layers[0]]
        num_experts = first.gate_sum.shape[-1]
        if window is None or self._layers != layers or self._task_names != list(task_names):
            zeros = first.gate_sum.new_zeros
            self._layers, self._task_names = layers, list(task_names)
            window = {
                "gate": zeros(len(layers), num_experts),
                "prob": zeros(len(layers), num_experts),
                "entropy": zeros(len(layers)),
                "tokens": zeros(len(layers)),
                "usage": zeros(len(layers), len(task_names), num_experts),
                "usage_tokens": zeros(len(layers), len(task_names)),
            }
        per_layer = [stats[i] for i in layers]
        dtype = window["gate"].dtype
        window["gate"] += torch.stack([s.gate_sum for s in per_layer]).to(dtype)
        window["prob"] += torch.stack([s.prob_sum for s in per_layer]).to(dtype)
        window["entropy"] += torch.stack([s.entropy_sum for s in per_layer]).to(dtype)
        window["tokens"] += torch.stack([s.tokens for s in per_layer]).to(dtype)
        task_ids = batch.get("task_ids") if isinstance(batch, Mapping) else None
        if task_ids is None or not task_names:
            return window
        gate = torch.stack([s.example_gate_sum for s in per_layer])  # (L, B, K)
        tokens = torch.stack([s.example_tokens for s in per_layer])  # (L, B)
        ids = task_ids.to(device=gate.device, dtype=torch.long)
        window["usage"].index_add_(1, ids, gate.to(dtype))
        window["usage_tokens"].index_add_(1, ids, tokens.to(dtype))
        return window

    def _reduced(self, trainer: L.Trainer, window: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``window`` summed over ranks (one collective on a flat tensor; every rank must call it)."""
        names = list(window)
        if trainer.world_size > 1:
            flat = torch.cat([window[n].flatten() for n in names])
            flat = trainer.strategy.reduce(flat, reduce_op="sum")
            parts = flat.split([window[n].numel() for n in names])
            return {n: part.view_as(window[n]) for n, part in zip(names, parts)}
        return dict(window)

    # ---------------------------------------------------------------------------------------- logging
    def log_routing(
        self,
        trainer: L.Trainer,
        pl_module: torch.nn.Module,
        stats: Mapping[int, LayerRouting],
        window: Mapping[str, torch.Tensor],
        step: int,
    ) -> dict[str, float]:
        """Write the window's scalars, histograms and heatmaps to every logger; return the scalars."""
        tensors = dict(window)
        if self.histograms:
            tensors["histograms"] = self._histograms(stats)
        host = _to_host(tensors)  # the one device-to-host copy of a log step
        tokens = host["tokens"].clamp_min(1)
        load = host["gate"] / tokens.unsqueeze(-1)  # (L, K)
        entropy = host["entropy"] / tokens
        load_entropy = -torch.special.xlogy(load, load).sum(-1)
        scalars: dict[str, float] = {}
        for row, index in enumerate(self._layers):
            for k, value in enumerate(load[row].tolist()):
                scalars[f"router/layer_{index}/load/expert_{k}"] = value
            scalars[f"router/layer_{index}/entropy"] = float(entropy[row])
            scalars[f"router/layer_{index}/load_entropy"] = float(load_entropy[row])
            self._check_collapse(index, load[row], step)
        scalars["router/entropy"] = float(entropy.mean())
        scalars["router/load_entropy"] = float(load_entropy.mean())
        scalars["router/max_load"] = float(load.max())
        scalars["router/balance_loss"] = self._balance_loss(pl_module, host)
        usage, seen = _task_shares(host["usage"].sum(0), host["usage_tokens"].sum(0))
        for t, name in enumerate(self._task_names):
            if seen[t]:
                for k, value in enumerate(usage[t].tolist()):
                    scalars[f"router/task/{name}/expert_{k}"] = value
        layout = None
        if self.layout and not self._layout_written:
            layout = custom_scalar_layout(self._layers, load.shape[-1], self._task_names)
            self._layout_written = True
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step=step)
            writer = getattr(logger, "experiment", None)
            if layout is not None and hasattr(writer, "add_custom_scalars"):
                writer.add_custom_scalars(layout)
            if self.histograms and hasattr(writer, "add_histogram_raw"):
                for row, index in enumerate(self._layers):
                    _write_histogram(writer, f"router/layer_{index}/probs", host["histograms"][row], step)
        return scalars

    def log_views(
        self,
        trainer: L.Trainer,
        window: Mapping[str, torch.Tensor],
        step: int,
        title: str,
        prefix: str = "val",
    ) -> dict[str, Any]:
        """Write the evaluation window's heatmaps and Markdown table to every logger that takes them, and the
        routing specialisation as scalars ``<prefix>/router/layer_<i>/task_nmi`` and ``<prefix>/router/task_nmi``
        (mean over layers); return ``{"load": (L, K), "usage": (L, T, K), "task_usage": (T, K)}`` shares (NaN
        rows: task absent) and ``"task_nmi": (L,)`` (NaN with fewer than two tasks evaluated)."""
        host = _to_host(window)
        load = host["gate"] / host["tokens"].clamp_min(1).unsqueeze(-1)
        usage, _ = _task_shares(host["usage"], host["usage_tokens"])
        task_usage, _ = _task_shares(host["usage"].sum(0), host["usage_tokens"].sum(0))
        task_nmi = task_expert_nmi(host["usage"])  # (L,): the tokens' (task, expert) counts per layer
        if self._task_names and not bool(torch.isnan(task_nmi).any()):
            scalars = {
                f"{prefix}/router/layer_{i}/task_nmi": float(v) for i, v in zip(self._layers, task_nmi)
            }
            scalars[f"{prefix}/router/task_nmi"] = float(task_nmi.mean())
            for logger in trainer.loggers:
                logger.log_metrics(scalars, step=step)
        writers = [getattr(logger, "experiment", None) for logger in trainer.loggers]
        if self.images and any(hasattr(w, "add_image") for w in writers):
            images = heatmap_images(title, load, task_usage, self._layers, self._task_names)
            for writer in writers:
                if hasattr(writer, "add_image"):
                    for tag, pixels in images.items():
                        writer.add_image(tag, pixels, step, dataformats="HWC")
        if self.tables:
            table = routing_markdown(
                f"Routing on the {title}", load, usage, self._layers, self._task_names, task_nmi=task_nmi
            )
            for writer in writers:
                if hasattr(writer, "add_text"):
                    writer.add_text("router/table", table, step)
        return {"load": load, "usage": usage, "task_usage": task_usage, "task_nmi": task_nmi}

    @staticmethod
    def _histograms(stats: Mapping[int, LayerRouting]) -> torch.Tensor:
        """Per layer ``[min, max, sum, sum of squares, counts of HISTOGRAM_BINS equal bins on [0, 1]]`` of the
        last batch's router probabilities over real tokens, computed on the device.

        Why not ``add_histogram``: it copies every token's probabilities to the host and bins them with numpy
        (the bulk of a log step's time); probabilities live in [0, 1], so fixed bins lose nothing.
        """
        rows = []
        for index in sorted(stats):
            layer = stats[index]
            probs = layer.probs.detach().float()
            if layer.token_mask is None:
                weight = torch.ones_like(probs)
            else:
                weight = layer.token_mask.to(probs.dtype).unsqueeze(-1).expand_as(probs)
            bucket = (probs * HISTOGRAM_BINS).long().clamp_(0, HISTOGRAM_BINS - 1)
            counts = probs.new_zeros(HISTOGRAM_BINS).index_add_(0, bucket.flatten(), weight.flatten())
            real = weight > 0
            low = torch.where(real, probs, probs.new_tensor(math.inf)).min()
            high = torch.where(real, probs, probs.new_tensor(-math.inf)).max()
            moments = torch.stack([low, high, (probs * weight).sum(), (probs * probs * weight).sum()])
            rows.append(torch.cat([moments, counts]))
        return torch.stack(rows)

    def _balance_loss(self, pl_module: torch.nn.Module, host: Mapping[str, torch.Tensor]) -> float:
        """``L_bal`` over the window's tokens, per layer or pooled as configured (METHOD.md §3)."""
        config = find_state(pl_module).config
        scope = config.balance_scope or DEFAULT_BALANCE_SCOPE
        scale = bool(config.balance_scale_by_experts)
        return float(balance_from_statistics(host["gate"], host["prob"], host["tokens"], scope, scale))

    def _check_collapse(self, layer: int, load: torch.Tensor, step: int) -> None:
        if load.numel() < 2:  # a single expert always takes everything: nothing to warn about
            return
        share, expert = float(load.max()), int(load.argmax())
        if share >= self.collapse_share:
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


def specialisation_results(task_nmi: torch.Tensor, layers: Sequence[int]) -> dict[str, float]:
    """The ``routing`` section of ``results.json``: ``task_nmi`` (mean over layers) and ``task_nmi/layer_<i>``."""
    values = {"task_nmi": float(task_nmi.mean())}
    values.update({f"task_nmi/layer_{i}": float(v) for i, v in zip(layers, task_nmi)})
    return values


def _task_shares(usage: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(..., T, K)`` gate sums over ``(..., T)`` tokens -> shares, NaN where a task had no token; and the mask
    of tasks seen (absent tasks get no scalar point and a grey cell)."""
    seen = tokens > 0
    shares = usage / tokens.clamp_min(1).unsqueeze(-1)
    shares[~seen] = math.nan
    return shares, seen


def _task_names(trainer: L.Trainer) -> list[str]:
    """Task names in task-id order from the datamodule, or none (then no per-task usage is logged)."""
    names = getattr(getattr(trainer, "datamodule", None), "task_names", None)
    return list(names) if names else []


def _logging_step(trainer: L.Trainer) -> int:
    """The x value Lightning gives ``self.log`` metrics of this batch (as ``LearningRateMonitor`` does)."""
    loop = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)
    return int(getattr(loop, "_batches_that_stepped", trainer.global_step - 1))


def _to_host(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Copy several small device tensors to the host in one transfer (one synchronisation, not one each)."""
    names = list(tensors)
    flat = torch.cat([tensors[n].detach().float().flatten() for n in names]).cpu().double()  # MPS has no f64
    parts = flat.split([tensors[n].numel() for n in names])
    return {n: part.view(tensors[n].shape) for n, part in zip(names, parts)}


def _write_histogram(writer: Any, tag: str, row: torch.Tensor, step: int) -> None:
    """One ``[min, max, sum, sum_sq, counts...]`` row as a TensorBoard histogram (skipped without tokens)."""
    counts = row[4:]
    num = float(counts.sum())
    if num == 0:
        return
    limits = torch.linspace(0, 1, HISTOGRAM_BINS + 1)[1:]
    writer.add_histogram_raw(
        tag,
        min=float(row[0]),
        max=float(row[1]),
        num=num,
        sum=float(row[2]),
        sum_squares=float(row[3]),
        bucket_limits=limits.tolist(),
        bucket_counts=counts.tolist(),
        global_step=step,
    )
