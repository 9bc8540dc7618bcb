"""Tiny random-initialised decoders of every supported family, built from configs (nothing is downloaded)."""

from __future__ import annotations

import pytest
import torch
import transformers

from hycam_pl import HyCAMConfig, attach

FAMILIES = {
    "llama": transformers.LlamaConfig,
    "mistral": transformers.MistralConfig,
    "qwen2": transformers.Qwen2Config,
    "qwen3": transformers.Qwen3Config,
    "gemma": transformers.GemmaConfig,
    "gemma2": transformers.Gemma2Config,
    "gemma3_text": transformers.Gemma3TextConfig,
}
# Gemma 2 cannot be built with sdpa in transformers 5 (eager only); every other family is tested with both.
FAMILY_ATTENTION = [
    (family, impl)
    for family in FAMILIES
    for impl in ("eager", "sdpa")
    if not (family == "gemma2" and impl == "sdpa")
]


def tiny_model(family: str = "llama", attn_implementation: str = "eager", seed: int = 0, **overrides):
    values = dict(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=128,
        pad_token_id=0,
    )
    values.update(overrides)
    config = FAMILIES[family](**values)
    config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    return transformers.AutoModelForCausalLM.from_config(
        config, attn_implementation=attn_implementation
    ).eval()


def randomize_adapter(model, seed: int = 1, scale: float = 0.5) -> None:
    """Give every adapter tensor non-zero values, so the gate is not the identity any more."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".hycam." in name:
                param.copy_(
                    torch.randn(param.shape, generator=generator) * scale / max(1, param.shape[-1]) ** 0.5
                )


def batch(batch_size: int = 2, length: int = 9, vocab: int = 96, seed: int = 0, pad_first: int = 3):
    """input_ids and a right-padded attention mask (the first sequence has ``pad_first`` padding tokens)."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, vocab, (batch_size, length), generator=generator)
    mask = torch.ones_like(input_ids)
    if pad_first:
        mask[0, -pad_first:] = 0
        input_ids[0, -pad_first:] = 0
    return input_ids, mask


@pytest.fixture
def llama():
    return tiny_model("llama")


def train_and_eval_step(model):
    """One training step (fixed Gumbel noise, task + balance loss) then an evaluation forward on ``batch()``:
    (loss, gradients, eval logits), to compare two implementations of the same model."""
    from hycam_pl import balance_loss

    input_ids, mask = batch()
    model.train()
    torch.manual_seed(3)  # the same Gumbel noise for both
    out = model(input_ids=input_ids, attention_mask=mask, labels=input_ids)
    (out.loss + 0.01 * balance_loss(model)).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=mask).logits
    return out.loss.detach(), grads, logits


def modulated_model(config: HyCAMConfig, checkpointing: str | None):
    """A 3-layer tiny Llama with ``config`` attached and random adapter weights, optionally checkpointed
    (``reentrant`` / ``non_reentrant``): the model the fast-path equality tests compare against the plain one."""
    model = tiny_model("llama", num_hidden_layers=3)
    torch.manual_seed(0)
    attach(model, config)
    randomize_adapter(model)
    if checkpointing:
        model.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": checkpointing == "reentrant"}
        )
    return model
