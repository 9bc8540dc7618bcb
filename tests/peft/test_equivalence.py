"""The peft tuner computes the same function as ``hycam_pl.attach``: same initial adapter, same logits, same
training loss (the balance loss included through the model's own loss) and the same gradients."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from hycam_pl import HyCAMConfig, attach, balance_loss, routing_statistics
from hycam_pl.peft import HyCAMPeftConfig

from .conftest import attach_name, attached_and_peft, batch, tiny_model

CONFIGS = {
    "hycam": {"num_experts": 3, "rank": 4},
    "cam": {"num_experts": 0},
    "residual_sum_pooled_soft": {
        "num_experts": 2,
        "rank": 2,
        "apply_to": "residual_sum",
        "balance_scope": "pooled",
        "hard": False,
    },
    "one_layer_no_bias": {"num_experts": 2, "rank": 4, "layers": [1], "bias": False},
}


def test_options_and_defaults_are_hycam_configs():
    peft_fields = {f.name: f.default for f in dataclasses.fields(HyCAMPeftConfig)}
    for option in dataclasses.fields(HyCAMConfig):
        assert peft_fields[option.name] == option.default, option.name
    resolved = HyCAMPeftConfig()
    assert resolved.to_hycam_config() == HyCAMConfig()
    assert resolved.rank == 8 and resolved.balance_coef == 0.01  # HyCAMConfig's routing defaults, filled in
    cam = HyCAMPeftConfig(num_experts=0)
    assert cam.rank is None and cam.to_hycam_config() == HyCAMConfig(num_experts=0)
    with pytest.raises(ValueError, match=r"HyCAMConfig.tau=-1 is invalid; allowed: a number > 0"):
        HyCAMPeftConfig(tau=-1)
    assert HyCAMPeftConfig.from_hycam_config(
        HyCAMConfig(num_experts=4, rank=2)
    ).to_hycam_config() == HyCAMConfig(num_experts=4, rank=2)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_peft_model_computes_what_attach_computes(name):
    attached, peft_model, initial = attached_and_peft(**CONFIGS[name])
    # Same initialisation (M = 1): attach from the same random state gives the same tensors.
    reference = tiny_model()
    torch.manual_seed(5)
    ref = dict(attach(reference, HyCAMConfig(**CONFIGS[name])).named_parameters())
    assert initial.keys() == {n for n in ref if ".hycam." in n}
    assert all(torch.equal(initial[n], ref[n]) for n in initial)

    input_ids, mask = batch()
    for model in (attached, peft_model):
        model.train()
    torch.manual_seed(3)  # the same Gumbel noise for both
    out = attached(input_ids=input_ids, attention_mask=mask, labels=input_ids)
    coef = HyCAMConfig(**CONFIGS[name]).balance_coef or 0.0
    expected_loss = out.loss + coef * balance_loss(attached)
    expected_loss.backward()
    torch.manual_seed(3)
    loss = peft_model(input_ids=input_ids, attention_mask=mask, labels=input_ids).loss
    loss.backward()  # the model's own loss carries the balance loss: nothing added by hand
    assert torch.equal(loss.detach(), expected_loss.detach())
    if coef:
        assert routing_statistics(peft_model).keys() == routing_statistics(attached).keys()
        assert torch.equal(balance_loss(peft_model), balance_loss(attached))
    grads = {attach_name(n): p.grad for n, p in peft_model.named_parameters() if p.grad is not None}
    expected = {n: p.grad for n, p in attached.named_parameters() if p.grad is not None}
    assert grads.keys() == expected.keys() and grads
    assert all(torch.equal(grads[n], expected[n]) for n in grads), name

    for model in (attached, peft_model):
        model.eval()
    with torch.no_grad():
        assert torch.equal(
            peft_model(input_ids=input_ids, attention_mask=mask).logits,
            attached(input_ids=input_ids, attention_mask=mask).logits,
        )


def test_balance_loss_reaches_the_routers_through_the_model_loss():
    """Without the balance term the routers get the task gradient only; the model's loss adds exactly
    ``balance_coef`` times the balance loss's gradient, weighted by the micro-batch's share of the step's tokens
    when the Trainer passes ``num_items_in_batch`` (gradient accumulation)."""
    input_ids, mask = batch()

    def router_grads(coef, **kwargs):
        _, peft_model, _ = attached_and_peft(num_experts=3, rank=4, balance_coef=coef)  # the same weights
        peft_model.train()
        torch.manual_seed(3)
        peft_model(input_ids=input_ids, attention_mask=mask, labels=input_ids, **kwargs).loss.backward()
        return [p.grad for n, p in peft_model.named_parameters() if ".router." in n]

    with_balance, task_only = router_grads(0.5), router_grads(0.0)
    assert all(not torch.equal(a, b) for a, b in zip(with_balance, task_only))
    # This micro-batch holds half of the step's label tokens: half the task and half the balance gradient.
    step_tokens = torch.tensor(2 * int(input_ids[:, 1:].ne(-100).sum()))
    half, task_half = (
        router_grads(0.5, num_items_in_batch=step_tokens),
        router_grads(0.0, num_items_in_batch=step_tokens),
    )
    for full, task, part, task_part in zip(with_balance, task_only, half, task_half):
        torch.testing.assert_close(task_part, task / 2)
        torch.testing.assert_close(part - task_part, (full - task) / 2)


@pytest.mark.parametrize("reentrant", [True, False])
def test_gradients_match_attach_under_activation_checkpointing(reentrant):
    """The balance loss reaches the routers through checkpointed layers in both modes, as with attach."""
    attached, peft_model, _ = attached_and_peft(num_experts=3, rank=4)
    input_ids, mask = batch()
    grads = []
    for model in (attached, peft_model):
        model.train()
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
        torch.manual_seed(3)
        out = model(input_ids=input_ids, attention_mask=mask, labels=input_ids)
        loss = out.loss + (0.01 * balance_loss(attached) if model is attached else 0.0)
        loss.backward()
        grads.append({attach_name(n): p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and any(".router." in n for n in grads[0])
    assert all(torch.equal(grads[0][n], grads[1][n]) for n in grads[0])
