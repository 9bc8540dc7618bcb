"""A deliberately naive, per-token implementation of METHOD.md §2-3, written here, must agree with the module.

The naive version runs on an *unmodified copy* of the model through its own hooks, reading the adapter's
weights as plain matrices and looping over tokens and experts.
"""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

import hycam_pl.modulation.router as router_module
from hycam_pl import HyCAMConfig, attach, balance_loss, routing_statistics
from hycam_pl.modulation.balance import balance_from_statistics

from .conftest import batch, randomize_adapter, tiny_model

silu = F.silu


def naive_gate(weights: dict, x_t: torch.Tensor, noise_t, config: HyCAMConfig, training: bool):
    """M(x_t) for one token and the routing (g, p) that produced it."""
    gate = torch.ones_like(x_t)
    if config.shared:
        gate = gate + silu(weights["shared.linear.weight"] @ x_t + weights.get("shared.linear.bias", 0))
    if not config.num_experts:
        return gate, None, None
    logits = weights["router.linear.weight"] @ x_t + weights.get("router.linear.bias", 0)
    probs = torch.softmax(logits, -1)
    if training:
        soft = torch.softmax((logits + noise_t) / config.tau, -1)
        g = F.one_hot(soft.argmax(), config.num_experts).float() if config.hard else soft
    elif config.eval_routing == "argmax":
        g = F.one_hot(logits.argmax(), config.num_experts).float()
    else:
        g = torch.softmax(logits / config.tau, -1)
    scale = config.alpha / config.rank
    for k in range(config.num_experts):
        down = x_t @ weights["experts.weight_A"][k] + (weights["experts.bias_A"][k] if config.bias else 0)
        mixed = down @ weights["experts.weight_N"][k] + (weights["experts.bias_N"][k] if config.bias else 0)
        up = mixed @ weights["experts.weight_B"][k] + (weights["experts.bias_B"][k] if config.bias else 0)
        gate = gate + g[k] * silu(scale * up)
    return gate, g, probs


def naive_model(base, adapter_weights, config, noise, training, mask):
    """Returns a hooked copy of the base model and the list where it stores per-token (g, p, valid)."""
    model = copy.deepcopy(base)
    routed = []
    for i, layer in enumerate(model.model.layers):
        residual = {}

        def keep_residual(module, args, kwargs, store=residual):
            store["h"] = args[0] if args else kwargs["hidden_states"]

        def modulate(module, args, kwargs, output, i=i, store=residual):
            x, a = kwargs["hidden_states"], output[0]
            new = a.clone()
            for b in range(x.shape[0]):
                for t in range(x.shape[1]):
                    flat = b * x.shape[1] + t
                    noise_t = noise[i][flat] if noise is not None else None
                    gate, g, p = naive_gate(adapter_weights[i], x[b, t], noise_t, config, training)
                    if config.apply_to == "attention_output":
                        new[b, t] = a[b, t] * gate
                    else:
                        h = store["h"][b, t]
                        new[b, t] = (h + a[b, t]) * gate - h
                    if g is not None:
                        routed.append((g, p, bool(mask[b, t])))
            return (new, *output[1:])

        layer.register_forward_pre_hook(keep_residual, with_kwargs=True)
        layer.self_attn.register_forward_hook(modulate, with_kwargs=True)
    return model, routed


# Eval routing only exists with experts, so plain CAM (k = 0) has train and eval but no eval_softmax case.
CASES = [
    (apply_to, bias, k, mode)
    for apply_to in ("attention_output", "residual_sum")
    for bias in (True, False)
    for k in (0, 1, 4)
    for mode in ("train", "eval_argmax", "eval_softmax")
    if not (k == 0 and mode == "eval_softmax")
]


@pytest.mark.parametrize("apply_to,bias,num_experts,mode", CASES)
def test_module_matches_naive_per_token_implementation(apply_to, bias, num_experts, mode, monkeypatch):
    routing = dict(eval_routing="softmax") if mode == "eval_softmax" else {}
    extra = dict(rank=4, **routing) if num_experts else {}
    config = HyCAMConfig(num_experts=num_experts, apply_to=apply_to, bias=bias, **extra)
    base = tiny_model("llama", num_hidden_layers=2)
    input_ids, mask = batch(batch_size=2, length=6, pad_first=2)
    model = attach(copy.deepcopy(base), config)
    randomize_adapter(model, scale=1.5)
    weights = [
        {n: p.detach().clone() for n, p in layer.self_attn.hycam.named_parameters()}
        for layer in model.model.layers
    ]
    training = mode == "train"
    noise = None
    if training and num_experts:
        generator = torch.Generator().manual_seed(7)
        noise = [-torch.empty(12, num_experts).exponential_(generator=generator).log() for _ in range(2)]
        calls = iter(noise)
        monkeypatch.setattr(router_module, "gumbel_noise", lambda logits: next(calls).to(logits))
    model.train(training)
    with torch.no_grad():
        actual = model(input_ids=input_ids, attention_mask=mask).logits
    reference, routed = naive_model(base, weights, config, noise, training, mask)
    reference.train(training)
    with torch.no_grad():
        expected = reference(input_ids=input_ids, attention_mask=mask).logits
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(actual, base(input_ids=input_ids, attention_mask=mask).logits)

    if num_experts:
        # Balance loss, padding excluded (METHOD.md §3): by default the mean over layers of each layer's loss;
        # the pooled form over all layers' routed tokens from the same statistics.
        def switch(rows):
            valid = [(g, p) for g, p, keep in rows if keep]
            return (
                torch.stack([g for g, _ in valid]).mean(0) * torch.stack([p for _, p in valid]).mean(0)
            ).sum()

        per_layer = len(routed) // 2
        expected = (switch(routed[:per_layer]) + switch(routed[per_layer:])) / 2
        torch.testing.assert_close(balance_loss(model), expected, rtol=1e-5, atol=1e-6)
        stats = routing_statistics(model)
        pooled = balance_from_statistics(
            torch.stack([stats[i].gate_sum for i in (0, 1)]),
            torch.stack([stats[i].prob_sum for i in (0, 1)]),
            torch.stack([stats[i].tokens for i in (0, 1)]),
            "pooled",
            False,
        )
        torch.testing.assert_close(pooled, switch(routed), rtol=1e-5, atol=1e-6)
        assert sorted(stats) == [0, 1]
        assert float(stats[0].tokens) == float(mask.sum())
        torch.testing.assert_close(stats[0].load.sum(), torch.tensor(1.0))


def test_switch_scaling_multiplies_by_k():
    torch.manual_seed(3)
    model = attach(tiny_model("llama"), HyCAMConfig(num_experts=4, balance_scale_by_experts=True))
    torch.manual_seed(3)
    plain = attach(tiny_model("llama"), HyCAMConfig(num_experts=4))
    input_ids, mask = batch()
    with torch.no_grad():
        model(input_ids=input_ids, attention_mask=mask)
        plain(input_ids=input_ids, attention_mask=mask)
    torch.testing.assert_close(balance_loss(model), 4 * balance_loss(plain))


def test_collapsed_and_uniform_router_statistics():
    model = attach(tiny_model("llama"), HyCAMConfig(num_experts=4))
    with torch.no_grad():
        for layer in model.model.layers:
            router = layer.self_attn.hycam.router.linear
            router.weight.zero_()
            router.bias.copy_(torch.tensor([50.0, 0.0, 0.0, 0.0]))
    input_ids, mask = batch()
    with torch.no_grad():
        model(input_ids=input_ids, attention_mask=mask)
    stats = routing_statistics(model)[0]
    torch.testing.assert_close(stats.load, torch.tensor([1.0, 0.0, 0.0, 0.0]))
    assert float(stats.entropy) < 1e-6
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.hycam.router.linear.bias.zero_()
        model(input_ids=input_ids, attention_mask=mask)
    assert math.isclose(float(routing_statistics(model)[0].entropy), math.log(4), rel_tol=1e-6)


def test_a_mask_that_is_not_the_2d_padding_mask_is_refused():
    """Padding must be excluded from router statistics; a 4-D mask does not say which tokens are padding."""
    model = attach(tiny_model("llama"), HyCAMConfig(num_experts=2))
    input_ids, _ = batch()
    length = input_ids.shape[1]
    causal = torch.full((length, length), float("-inf")).triu(1).expand(input_ids.shape[0], 1, length, length)
    with torch.no_grad(), pytest.raises(ValueError, match=r"got a 4-D attention_mask; .*need the 2-D"):
        model(input_ids=input_ids, attention_mask=causal)
