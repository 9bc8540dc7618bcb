"""The fused gate application (``_GateApplication``: ``a + a * D`` that recomputes ``D`` in backward) keeps outputs
and gradients equal to the plain graph (bit for bit: the same operations in the same order), in training and
evaluation, under every activation-checkpointing mode, and keeps less for backward than the plain graph."""

import pytest
import torch

from hycam_pl import HyCAMConfig
from hycam_pl.modulation.layer import ContextualModulation

from .conftest import batch, modulated_model, train_and_eval_step

CONFIGS = {
    "hycam": dict(num_experts=4, rank=4),
    "cam": dict(num_experts=0),
    "experts_only": dict(num_experts=4, rank=4, shared=False),
    "no_bias": dict(num_experts=4, rank=4, bias=False),
}


def plain_modulate(self, x, attn):
    """The plain reference: ``D`` from :meth:`modulation_delta`, applied by autograd's own ops."""
    delta, routing = self.modulation_delta(x)
    return attn + (attn * delta).to(attn.dtype), routing


@pytest.mark.parametrize("checkpointing", [None, "reentrant", "non_reentrant"])
@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_fused_matches_plain_in_training_and_eval(monkeypatch, config, checkpointing):
    loss, grads, logits = train_and_eval_step(modulated_model(HyCAMConfig(**CONFIGS[config]), checkpointing))
    monkeypatch.setattr(ContextualModulation, "modulate", plain_modulate)
    plain_loss, plain_grads, plain_logits = train_and_eval_step(
        modulated_model(HyCAMConfig(**CONFIGS[config]), checkpointing)
    )
    torch.testing.assert_close(loss, plain_loss, rtol=0, atol=0)
    torch.testing.assert_close(logits, plain_logits, rtol=0, atol=0)
    assert grads.keys() == plain_grads.keys() and any(".hycam." in n for n in grads)
    for name in grads:
        torch.testing.assert_close(grads[name], plain_grads[name], rtol=0, atol=0, msg=name)


def test_fused_under_bf16_autocast_matches_plain(monkeypatch):
    def run():
        model = modulated_model(HyCAMConfig(**CONFIGS["hycam"]), None).train()
        input_ids, mask = batch()
        torch.manual_seed(3)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=input_ids, attention_mask=mask, labels=input_ids).loss
        loss.backward()
        return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    loss, grads = run()
    monkeypatch.setattr(ContextualModulation, "modulate", plain_modulate)
    plain_loss, plain_grads = run()
    torch.testing.assert_close(loss, plain_loss)
    for name in grads:  # the same bf16 ops in the same order
        torch.testing.assert_close(grads[name], plain_grads[name], msg=name)


def saved_bytes(model) -> int:
    """Bytes autograd keeps for backward during one training forward, each storage once, parameters excluded."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(tensor):
        seen[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    input_ids, mask = batch(batch_size=4, length=32)
    model.train()
    torch.manual_seed(3)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=input_ids, attention_mask=mask, labels=input_ids).loss.backward()
    return sum(n for ptr, n in seen.items() if ptr not in params)


def test_fused_keeps_one_hidden_sized_tensor_less_per_layer(monkeypatch):
    fused = saved_bytes(modulated_model(HyCAMConfig(**CONFIGS["hycam"]), None))
    monkeypatch.setattr(ContextualModulation, "modulate", plain_modulate)
    plain = saved_bytes(modulated_model(HyCAMConfig(**CONFIGS["hycam"]), None))
    tokens, hidden, layers = 4 * 32, 32, 3
    # D (float32) in every layer but the first: its attention output needs no gradient, so the plain graph does
    # not keep D there either.
    assert plain - fused >= (layers - 1) * tokens * hidden * 4
