"""Training runs in training mode even when the backbone comes from ``from_pretrained`` (which returns eval mode).

Lightning >= 2.2 keeps the modules' modes as it finds them at the start of fit. A pretrained backbone loaded in
eval mode therefore trained HyCAM's router by noise-free argmax: no Gumbel noise, no straight-through gradient
from the task loss, and the SmolLM2 quickstart's layers collapsed onto one expert each (98% of tokens).
"""

from __future__ import annotations

import lightning as L
import torch

from hycam_pl.methods import HyCAMMethod
from hycam_pl.modulation import routing_statistics
from hycam_pl.modulation.router import GumbelRouter
from hycam_pl.training import MultiTaskLM
from tests.reliability.helpers import tiny_data
from tests.tiny import tiny_byte_llama


class ModeProbe(L.Callback):
    """Per training batch: the modes of every module and whether the routed gates differ from argmax routing."""

    def __init__(self) -> None:
        self.modes: list[set[bool]] = []
        self.router_modes: list[set[bool]] = []
        self.eval_modes: list[set[bool]] = []
        self.noisy: list[bool] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.modes.append({m.training for m in pl_module.model.modules()})
        self.router_modes.append(
            {m.training for m in pl_module.model.modules() if isinstance(m, GumbelRouter)}
        )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        stats = routing_statistics(pl_module.model)
        # Argmax routing sends every token where its largest probability is; Gumbel sampling at tau 0.5 with
        # near-uniform initial probabilities spreads them, so the two loads differ.
        self.noisy.append(
            any(
                not torch.allclose(
                    s.gate_sum,
                    torch.bincount(s.probs[s.token_mask].argmax(-1), minlength=s.gate_sum.numel()).to(
                        s.gate_sum.dtype
                    ),
                )
                for s in stats.values()
            )
        )

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self.eval_modes.append({m.training for m in pl_module.model.modules()})


def test_a_pretrained_backbone_is_trained_in_training_mode_and_evaluated_in_eval_mode(tmp_path):
    MultiTaskLM(tiny_byte_llama(), method="full").model.save_pretrained(tmp_path / "base")
    L.seed_everything(0)
    model = MultiTaskLM(str(tmp_path / "base"), method=HyCAMMethod(num_experts=4, rank=4))
    probe = ModeProbe()
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=3,
        val_check_interval=2,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
        callbacks=[probe],
    )
    trainer.fit(model, datamodule=tiny_data())
    assert len(probe.modes) == 3 and all(modes == {True} for modes in probe.modes), probe.modes
    assert all(modes == {True} for modes in probe.router_modes)
    assert probe.eval_modes and all(modes == {False} for modes in probe.eval_modes)
    assert all(probe.noisy), probe.noisy  # Gumbel-sampled routing, not argmax
