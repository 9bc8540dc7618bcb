"""Only the modulation trains; the balance loss reaches the router under every activation-checkpointing mode."""

import pytest
import torch

from hycam_pl import HyCAMConfig, attach, balance_loss, routing_statistics
from hycam_pl.modulation.balance import balance_from_statistics, balance_gradient_from_statistics

from .conftest import batch, randomize_adapter, tiny_model

CHECKPOINTING = [None, "reentrant", "non_reentrant"]
SCOPES = ["layer", "pooled"]


def modulated(
    checkpointing, num_experts=3, seed=0, family="llama", apply_to="attention_output", scope=None, layers=3
):
    model = tiny_model(family, num_hidden_layers=layers)
    torch.manual_seed(seed)
    routing = dict(rank=4, balance_scope=scope) if num_experts else {}
    attach(model, HyCAMConfig(num_experts=num_experts, apply_to=apply_to, **routing))
    randomize_adapter(model)
    if checkpointing:
        model.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": checkpointing == "reentrant"}
        )
    return model.train()


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def switch_loss(gates, probs):
    return (gates.mean(0) * probs.mean(0)).sum()


def naive_balance_loss(model, input_ids, mask, scope):
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
    if scope == "pooled":  # one loss over every layer's tokens
        gates = torch.cat([r.gates[valid] for r in captured])
        probs = torch.cat([r.probs[valid] for r in captured])
        return out, switch_loss(gates, probs)
    # per layer: each layer's own loss, averaged over layers
    return out, torch.stack([switch_loss(r.gates[valid], r.probs[valid]) for r in captured]).mean()


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


@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("checkpointing", CHECKPOINTING)
def test_balance_loss_gradient_is_exact_under_checkpointing(checkpointing, scope):
    input_ids, mask = batch()
    reference = modulated(None, scope=scope)
    torch.manual_seed(1)
    _, naive = naive_balance_loss(reference, input_ids, mask, scope)
    naive.backward()
    expected = {n: g for n, g in grads(reference).items() if ".router." in n}

    model = modulated(checkpointing, scope=scope)
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
    "family,apply_to,scope",
    [
        ("llama", "attention_output", "layer"),
        ("llama", "attention_output", "pooled"),
        ("gemma2", "residual_sum", "layer"),
        ("qwen3", "residual_sum", "pooled"),
    ],
)
def test_checkpointing_gives_the_same_total_gradient(checkpointing, family, apply_to, scope):
    input_ids, mask = batch()
    results = []
    for mode in (None, checkpointing):
        model = modulated(mode, family=family, apply_to=apply_to, scope=scope)
        torch.manual_seed(5)  # same Gumbel noise; checkpoint recompute replays the RNG state
        out = model(input_ids=input_ids, attention_mask=mask, labels=input_ids)
        (out.loss + 0.5 * balance_loss(model)).backward()
        results.append((out.loss.detach(), grads(model)))
    (loss_a, grads_a), (loss_b, grads_b) = results
    torch.testing.assert_close(loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("scope", SCOPES)
def test_balance_gradient_follows_the_loss_scale(scope):
    """Gradient accumulation and AMP scale the loss; the injected balance gradient must scale with it."""
    input_ids, mask = batch()
    collected = []
    for scale in (1.0, 0.25):
        model = modulated("reentrant", scope=scope)
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


def test_layers_collapsed_onto_different_experts_are_balanced_only_when_pooled():
    """Layer i sends every token to expert i: the pool looks perfectly balanced, yet every layer has collapsed.
    The pooled loss sits at its uniform minimum 1/K; the per-layer loss is at its maximum 1."""
    values = {}
    for scope in SCOPES:
        model = modulated(None, num_experts=4, layers=4, scope=scope)
        with torch.no_grad():
            for i, layer in enumerate(model.model.layers):
                router = layer.self_attn.hycam.router.linear
                router.weight.zero_()
                router.bias.fill_(-20.0)
                router.bias[i] = 20.0
        input_ids, mask = batch()
        torch.manual_seed(1)
        model(input_ids=input_ids, attention_mask=mask)
        loads = [stats.load for stats in routing_statistics(model).values()]
        assert [int(load.argmax()) for load in loads] == [0, 1, 2, 3]
        assert all(float(load.max()) == 1.0 for load in loads)
        values[scope] = float(balance_loss(model).detach())
    assert values["pooled"] == pytest.approx(0.25, abs=1e-6)
    assert values["layer"] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("scope", SCOPES)
def test_statistics_gradient_matches_autograd(scope):
    """The closed-form gradient the injection uses equals autograd's on the statistics formula."""
    generator = torch.Generator().manual_seed(0)
    gate = torch.rand(3, 4, generator=generator, dtype=torch.float64) * 5
    prob = torch.rand(3, 4, generator=generator, dtype=torch.float64) * 5
    tokens = torch.tensor([7.0, 5.0, 9.0], dtype=torch.float64)
    for scale in (False, True):
        g, p = gate.clone().requires_grad_(), prob.clone().requires_grad_()
        balance_from_statistics(g, p, tokens, scope, scale).backward()
        d_gate, d_prob = balance_gradient_from_statistics(gate, prob, tokens, scope, scale)
        torch.testing.assert_close(d_gate, g.grad)
        torch.testing.assert_close(d_prob, p.grad)
