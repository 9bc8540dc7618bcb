"""Only the modulation trains; the balance loss reaches the router under every activation-checkpointing mode."""

import pytest
import torch

from hycam_pl import HyCAMConfig, attach, balance_loss

from .conftest import batch, randomize_adapter, tiny_model

CHECKPOINTING = [None, "reentrant", "non_reentrant"]


def modulated(checkpointing, num_experts=3, seed=0, family="llama", apply_to="attention_output"):
    model = tiny_model(family, num_hidden_layers=3)
    torch.manual_seed(seed)
    attach(model, HyCAMConfig(num_experts=num_experts, rank=4 if num_experts else None, apply_to=apply_to))
    randomize_adapter(model)
    if checkpointing:
        model.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": checkpointing == "reentrant"}
        )
    return model.train()


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def naive_balance_loss(model, input_ids, mask):
    """L_bal built by hand from the routers' differentiable outputs (no checkpointing)."""
    captured = []
    hooks = [
        layer.self_attn.hycam.router.register_forward_hook(lambda m, a, out: captured.append(out))
        for layer in model.model.layers
    ]
    out = model(input_ids=input_ids, attention_mask=mask, labels=input_ids)
    for hook in hooks:
        hook.remove()
    valid = mask.reshape(-1).bool()
    gates = torch.cat([r.gates[valid] for r in captured])
    probs = torch.cat([r.probs[valid] for r in captured])
    return out, (gates.mean(0) * probs.mean(0)).sum()


@pytest.mark.parametrize("checkpointing", CHECKPOINTING)
def test_only_modulation_parameters_receive_gradients(checkpointing):
    model = modulated(checkpointing)
    input_ids, mask = batch()
    torch.manual_seed(1)
    out = model(input_ids=input_ids, attention_mask=mask, labels=input_ids)
    (out.loss + 0.01 * balance_loss(model)).backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    adapter = {n for n, _ in model.named_parameters() if ".hycam." in n}
    assert with_grad == adapter
    assert all(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if ".hycam.router." in n)


@pytest.mark.parametrize("checkpointing", CHECKPOINTING)
def test_balance_loss_gradient_is_exact_under_checkpointing(checkpointing):
    input_ids, mask = batch()
    reference = modulated(None)
    torch.manual_seed(1)
    _, naive = naive_balance_loss(reference, input_ids, mask)
    naive.backward()
    expected = {n: g for n, g in grads(reference).items() if ".router." in n}

    model = modulated(checkpointing)
    torch.manual_seed(1)
    model(input_ids=input_ids, attention_mask=mask)
    loss = balance_loss(model)
    torch.testing.assert_close(loss, naive.detach())
    loss.backward()  # the balance loss alone: the router must still get its gradient
    actual = {n: g for n, g in grads(model).items() if ".router." in n}
    assert set(actual) == set(expected) and all(g.abs().sum() > 0 for g in expected.values())
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("checkpointing", ["reentrant", "non_reentrant"])
@pytest.mark.parametrize(
    "family,apply_to", [("llama", "attention_output"), ("gemma2", "residual_sum"), ("qwen3", "residual_sum")]
)
def test_checkpointing_gives_the_same_total_gradient(checkpointing, family, apply_to):
    input_ids, mask = batch()
    results = []
    for mode in (None, checkpointing):
        model = modulated(mode, family=family, apply_to=apply_to)
        torch.manual_seed(5)  # same Gumbel noise; checkpoint recompute replays the RNG state
        out = model(input_ids=input_ids, attention_mask=mask, labels=input_ids)
        (out.loss + 0.5 * balance_loss(model)).backward()
        results.append((out.loss.detach(), grads(model)))
    (loss_a, grads_a), (loss_b, grads_b) = results
    torch.testing.assert_close(loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-4, atol=1e-6)


def test_balance_gradient_follows_the_loss_scale():
    """Gradient accumulation and AMP scale the loss; the injected balance gradient must scale with it."""
    input_ids, mask = batch()
    collected = []
    for scale in (1.0, 0.25):
        model = modulated("reentrant")
        torch.manual_seed(1)
        model(input_ids=input_ids, attention_mask=mask)
        (scale * balance_loss(model)).backward()
        collected.append({n: g for n, g in grads(model).items() if ".router." in n})
    for name in collected[0]:
        torch.testing.assert_close(collected[1][name], 0.25 * collected[0][name])


def test_cam_without_router_has_zero_balance_loss():
    model = modulated(None, num_experts=0)
    input_ids, mask = batch()
    out = model(input_ids=input_ids, attention_mask=mask, labels=input_ids)
    loss = balance_loss(model)
    assert float(loss) == 0.0
    (out.loss + loss).backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if ".hycam.shared." in n)
