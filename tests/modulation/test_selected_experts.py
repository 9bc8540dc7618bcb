"""Evaluating only each token's selected expert (hard routing) keeps outputs and gradients equal to the dense
computation of all K experts, in training and evaluation, with and without activation checkpointing."""

import pytest
import torch
import torch.nn.functional as F

from hycam_pl import HyCAMConfig
from hycam_pl.modulation import experts as experts_module
from hycam_pl.modulation.experts import StackedExperts

from .conftest import modulated_model, train_and_eval_step


def dense_mix(self, x, gates, index=None):
    """The plain reference: every expert's output, mixed by the gates."""
    expert_out = self(x)
    return torch.einsum("nk,knd->nd", gates.to(expert_out.dtype), expert_out)


def straight_through(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    soft = (logits / 0.5).softmax(-1)
    index = soft.argmax(-1)
    return F.one_hot(index, logits.shape[-1]).to(soft.dtype) - soft.detach() + soft, index


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("tokens", [5, 300])  # the gathered (generation) and the grouped path
def test_selected_mix_matches_dense_values_and_gradients(bias, tokens):
    torch.manual_seed(0)
    experts = StackedExperts(32, 4, 8, 2.0, bias)
    for p in experts.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(tokens, 32, requires_grad=True)
    logits = torch.randn(tokens, 4, requires_grad=True)
    weight = torch.randn(tokens, 32)

    def run(use_index: bool):
        gates, index = straight_through(logits)
        out = experts.mix(x, gates, index if use_index else None)
        (out * weight).sum().backward()
        grads = [x.grad, logits.grad, *(p.grad for p in experts.parameters())]
        result = out.detach(), [g.clone() for g in grads]
        x.grad = logits.grad = None
        experts.zero_grad(set_to_none=True)
        return result

    dense, dense_grads = run(False)
    selected, selected_grads = run(True)
    torch.testing.assert_close(selected, dense, rtol=1e-5, atol=1e-5)
    for a, b in zip(selected_grads, dense_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    with torch.no_grad():  # evaluation: argmax one-hot gates
        index = torch.randint(0, 4, (tokens,))
        gates = F.one_hot(index, 4).float()
        torch.testing.assert_close(experts.mix(x, gates, index), dense_mix(experts, x, gates))


@pytest.mark.parametrize("checkpointing", [None, "reentrant", "non_reentrant"])
def test_model_training_and_eval_match_dense(monkeypatch, checkpointing):
    loss, grads, logits = train_and_eval_step(
        modulated_model(HyCAMConfig(num_experts=4, rank=4), checkpointing)
    )
    monkeypatch.setattr(experts_module.StackedExperts, "mix", dense_mix)
    dense_loss, dense_grads, dense_logits = train_and_eval_step(
        modulated_model(HyCAMConfig(num_experts=4, rank=4), checkpointing)
    )
    torch.testing.assert_close(loss, dense_loss)
    torch.testing.assert_close(logits, dense_logits, rtol=1e-5, atol=1e-5)
    assert grads.keys() == dense_grads.keys() and any(".router." in n for n in grads)
    for name in grads:
        torch.testing.assert_close(grads[name], dense_grads[name], rtol=1e-4, atol=1e-5, msg=name)


def test_selected_mix_under_bf16_autocast_matches_dense():
    torch.manual_seed(0)
    experts = StackedExperts(32, 4, 8, 2.0, True)
    for p in experts.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(100, 32)
    logits = torch.randn(100, 4, requires_grad=True)
    results = []
    for use_index in (True, False):
        gates, index = straight_through(logits)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = experts.mix(x, gates, index if use_index else None)
        assert out.dtype == torch.bfloat16
        out.float().sum().backward()
        results.append((out.detach().float(), logits.grad.clone(), experts.weight_B.grad.clone()))
        logits.grad = None
        experts.zero_grad(set_to_none=True)
    for a, b in zip(*results, strict=True):  # bf16 sums in another order: compare relative to the norm
        assert (a - b).norm() <= 2e-2 * b.norm()
