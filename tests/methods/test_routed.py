"""The mixtures' routers use HyCAM's machinery: the balance loss reaches them exactly under every checkpointing
mode, and their routing shows up in the routing telemetry like HyCAM's."""

from __future__ import annotations

import pytest
import torch

from hycam_pl.callbacks import RoutingTelemetry
from hycam_pl.data import MultiTaskDataModule
from hycam_pl.methods.lora_mixture import LayerRouter, mixture_balance_loss
from hycam_pl.training import MultiTaskLM
from tests.evaluation.helpers import read_events, tiny_trainer
from tests.methods.helpers import build
from tests.modulation.conftest import batch, tiny_model
from tests.tiny import tiny_byte_llama

CHECKPOINTING = [None, "reentrant", "non_reentrant"]


def routed(kind: str, checkpointing: str | None, scope: str = "layer"):
    model = tiny_model("llama", num_hidden_layers=3)
    torch.manual_seed(0)
    options = {"num_experts": 3, "r": 4, "balance_scope": scope}
    if kind == "hydralora":
        options.update(routing="softmax_topk", top_k=2)
    build(kind, **options).apply(model)
    with torch.no_grad():  # non-zero B, so the experts matter to the output
        for name, param in model.named_parameters():
            if name.endswith("lora_B"):
                param.normal_(0, 0.1)
    if checkpointing:
        model.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": checkpointing == "reentrant"}
        )
    return model.train()


def router_grads(model) -> dict[str, torch.Tensor]:
    return {
        n: p.grad.clone()
        for n, p in model.named_parameters()
        if ".mixture_router." in n and p.grad is not None
    }


def naive_balance(model, input_ids, mask, scope: str) -> torch.Tensor:
    """L_bal from the routers' differentiable outputs, captured by hooks (no checkpointing)."""
    captured = []
    hooks = [
        m.router.register_forward_hook(lambda mod, args, out: captured.append(out))
        for m in model.modules()
        if isinstance(m, LayerRouter)
    ]
    model(input_ids=input_ids, attention_mask=mask)
    for hook in hooks:
        hook.remove()
    valid = mask.reshape(-1).bool()
    per_layer = [(r.gates[valid].mean(0) * r.probs[valid].mean(0)).sum() for r in captured]
    if scope == "layer":
        return torch.stack(per_layer).mean()
    gates = torch.cat([r.gates[valid] for r in captured])
    probs = torch.cat([r.probs[valid] for r in captured])
    return (gates.mean(0) * probs.mean(0)).sum()


@pytest.mark.parametrize("scope", ["layer", "pooled"])
@pytest.mark.parametrize("checkpointing", CHECKPOINTING)
@pytest.mark.parametrize("kind", ["molora", "hydralora"])
def test_balance_loss_gradient_reaches_the_routers_exactly(kind, checkpointing, scope) -> None:
    input_ids, mask = batch(vocab=96)
    reference = routed(kind, None, scope)
    torch.manual_seed(1)
    naive = naive_balance(reference, input_ids, mask, scope)
    naive.backward()
    expected = router_grads(reference)
    assert len(expected) == 3 and all(g.abs().sum() > 0 for g in expected.values())

    model = routed(kind, checkpointing, scope)
    torch.manual_seed(1)
    model(input_ids=input_ids, attention_mask=mask)
    loss = mixture_balance_loss(model)
    torch.testing.assert_close(loss, naive.detach())
    loss.backward()  # the balance loss alone must reach every router
    actual = router_grads(model)
    assert set(actual) == set(expected)
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("kind", ["molora", "hydralora"])
def test_routing_telemetry_shows_the_mixtures(tmp_path, kind) -> None:
    data = MultiTaskDataModule(
        tasks=[
            {"name": t, "source": "synthetic", "path": t, "num_examples": 20} for t in ("arithmetic", "qa")
        ],
        batch_size=2,
        cache_dir=None,
    )
    module = MultiTaskLM(tiny_byte_llama(), method=build(kind, num_experts=2, r=4), learning_rate=1e-3)
    trainer = tiny_trainer(
        tmp_path,
        [RoutingTelemetry(every_n_steps=1)],
        max_steps=2,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=data)
    scalars = set(read_events(tmp_path / "tiny" / "version_0").Tags()["scalars"])
    assert {
        "router/layer_0/load/expert_1",
        "router/layer_1/entropy",
        "router/balance_loss",
        "router/task/arithmetic/expert_0",
        "train/balance_loss",
    } <= scalars
