"""Small building blocks for the evaluation tests: a tiny modulated LM, its data, and TensorBoard read-back."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader
from transformers import LlamaConfig, LlamaForCausalLM

from hycam_pl.modulation import HyCAMConfig, attach, modulated_layers

TASK_NAMES = ("alpha", "beta", "gamma")
VOCAB = 64


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(config)


class TinyLM(L.LightningModule):
    """A 2-layer Llama with HyCAM (or CAM, or nothing) whose router can be pinned to fixed logits.

    ``router_bias`` set: the router weight is zeroed and frozen, so every token gets exactly these logits;
    that is how the tests build a collapsed or a perfectly uniform router. The learning rate is 0 so the
    routing cannot drift while a test watches it.
    """

    def __init__(
        self, num_experts: int | None = 4, router_bias: Sequence[float] | None = None, seed: int = 0
    ) -> None:
        super().__init__()
        self.model = tiny_llama(seed)
        if num_experts is not None:
            attach(
                self.model, HyCAMConfig(num_experts=num_experts, rank=4) if num_experts else HyCAMConfig(0)
            )
        if router_bias is not None:
            for layer in modulated_layers(self.model).values():
                linear = layer.router.linear
                with torch.no_grad():
                    linear.weight.zero_()
                    linear.bias.copy_(torch.tensor(router_bias, dtype=linear.bias.dtype))
                linear.requires_grad_(False)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        output = self.model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
        )
        self.log("train/loss", output.loss)
        return output.loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.SGD(params, lr=0.0)


def random_batches(num_batches: int, batch_size: int = 4, length: int = 12, seed: int = 0) -> list[dict]:
    """Right-padded token batches with labels and ``task_ids`` (what ``MultiTaskDataModule`` batches carry)."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(num_batches):
        input_ids = torch.randint(1, VOCAB, (batch_size, length), generator=generator)
        lengths = torch.randint(length // 2, length + 1, (batch_size,), generator=generator)
        mask = (torch.arange(length) < lengths.unsqueeze(1)).long()
        batches.append(
            {
                "input_ids": input_ids * mask,
                "attention_mask": mask,
                "labels": input_ids.masked_fill(mask == 0, -100),
                "task_ids": torch.randint(0, len(TASK_NAMES), (batch_size,), generator=generator),
            }
        )
    return batches


class TinyData(L.LightningDataModule):
    """Exposes ``task_names`` like ``MultiTaskDataModule``; each training batch is one precomputed batch."""

    def __init__(self, num_batches: int, seed: int = 0) -> None:
        super().__init__()
        self.batches = random_batches(num_batches, seed=seed)

    @property
    def task_names(self) -> list[str]:
        return list(TASK_NAMES)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.batches, batch_size=None, shuffle=False)


def tiny_trainer(root: Path, callbacks: list[L.Callback], **kwargs: Any) -> L.Trainer:
    from lightning.pytorch.loggers import TensorBoardLogger

    options: dict[str, Any] = dict(
        accelerator="cpu",
        devices=1,
        max_steps=4,
        logger=TensorBoardLogger(str(root), name="tiny", version=0),
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
    )
    options.update(kwargs)
    return L.Trainer(**options)


def read_events(event_dir: Path) -> Any:
    """An ``EventAccumulator`` holding every scalar, image, histogram and tensor (text, layouts) written under
    ``event_dir``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    guidance = {"scalars": 0, "images": 0, "histograms": 0, "tensors": 0}
    accumulator = EventAccumulator(str(event_dir), size_guidance=guidance)
    accumulator.Reload()
    return accumulator


def scalar_series(accumulator: Any) -> dict[str, dict[int, float]]:
    """``{tag: {step: value}}`` for every scalar tag."""
    return {
        tag: {event.step: event.value for event in accumulator.Scalars(tag)}
        for tag in accumulator.Tags()["scalars"]
    }


def texts(accumulator: Any, tag: str) -> dict[int, str]:
    """``{step: markdown}`` of a Text-tab tag (``SummaryWriter.add_text`` stores it as ``<tag>/text_summary``)."""
    return {
        event.step: event.tensor_proto.string_val[0].decode()
        for event in accumulator.Tensors(f"{tag}/text_summary")
    }


def custom_scalar_charts(accumulator: Any) -> dict[str, dict[str, list[str]]]:
    """The Custom Scalars layout as ``{category: {chart title: [series regex, ...]}}``."""
    from tensorboard.plugins.custom_scalar import layout_pb2

    (event,) = accumulator.Tensors("custom_scalars__config__")
    layout = layout_pb2.Layout.FromString(event.tensor_proto.string_val[0])
    return {
        category.title: {chart.title: list(chart.multiline.tag) for chart in category.chart}
        for category in layout.category
    }


def hparams_session(accumulator: Any) -> tuple[dict[str, Any], list[str]]:
    """The HParams tab's view of a run: ``({hyper-parameter: value}, [metric tags])``."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = accumulator.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
    params = {}
    for name, value in start.session_start_info.hparams.items():
        params[name] = getattr(value, value.WhichOneof("kind"))
    return params, [info.name.tag for info in experiment.experiment.metric_infos]
