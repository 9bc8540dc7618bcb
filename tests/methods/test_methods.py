"""Every baseline method on a tiny model of every supported family: it trains, it trains only its own
parameters, its size matches the formula (and peft's own count), and its saved adapter reloads exactly."""

from __future__ import annotations

import warnings

import peft
import pytest
import torch
from torch import nn

from hycam_pl.methods.peft_methods import target_linears
from hycam_pl.modulation import AdapterError
from tests.methods.helpers import build
from tests.modulation.conftest import FAMILIES, batch, tiny_model

PEFT = ("lora", "dora", "ia3")
MIXTURES = ("molora", "hydralora")
METHODS = PEFT + MIXTURES
OPTIONS = {
    "lora": {"r": 4, "lora_dropout": 0.0},
    "dora": {"r": 4, "lora_dropout": 0.0},
    "ia3": {},
    "molora": {"num_experts": 3, "r": 4},
    "hydralora": {"num_experts": 3, "r": 4, "routing": "softmax_topk", "top_k": 2},
}


def expected_count(method: str, model: nn.Module) -> int:
    """The formula of each method, from the backbone's projection shapes."""
    if method in ("lora", "dora"):
        linears = [m for _, m in target_linears(model, ["q_proj", "k_proj", "v_proj", "o_proj"])]
        count = sum(4 * (m.in_features + m.out_features) for m in linears)
        return count + (sum(m.out_features for m in linears) if method == "dora" else 0)  # DoRA magnitudes
    if method == "ia3":  # one scale per output of k, v; one per input of the feed-forward down_proj
        return sum(m.out_features for _, m in target_linears(model, ["k_proj", "v_proj"])) + sum(
            m.in_features for _, m in target_linears(model, ["down_proj"])
        )
    k, r = 3, 4
    linears = [m for _, m in target_linears(model, ["q_proj", "k_proj", "v_proj", "o_proj"])]
    if method == "molora":
        experts = sum(k * r * (m.in_features + m.out_features) for m in linears)
    else:
        experts = sum(r * m.in_features + k * r * m.out_features for m in linears)
    return experts + model.config.num_hidden_layers * model.config.hidden_size * k  # one router per layer


def apply(method: str, model: nn.Module, **options) -> tuple[object, nn.Module]:
    built = build(method, **{**OPTIONS[method], **options})
    return built, built.apply(model)


def loss_of(built, model: nn.Module, input_ids, mask) -> torch.Tensor:
    out = model(input_ids=input_ids, attention_mask=mask, labels=input_ids.masked_fill(mask == 0, -100))
    loss = out.loss
    for weight, value in built.auxiliary_losses(model).values():
        loss = loss + weight * value
    return loss


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("method", METHODS)
def test_method_trains_only_its_own_parameters(method: str, family: str) -> None:
    base = tiny_model(family)
    count = expected_count(method, base)  # from the plain model: peft replaces the projections it adapts
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        built, model = apply(method, base)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert sum(p.numel() for p in trainable.values()) == count
    if method in PEFT:
        assert model.get_nb_trainable_parameters()[0] == count  # peft's own count
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    before = {n: p.detach().clone() for n, p in trainable.items()}
    input_ids, mask = batch(vocab=96)
    model.eval()
    with torch.no_grad():
        initial = loss_of(built, model, input_ids, mask).item()
    optimizer = torch.optim.AdamW(trainable.values(), lr=2e-2, weight_decay=0.0)
    model.train()
    torch.manual_seed(0)
    for _ in range(6):
        optimizer.zero_grad()
        loss_of(built, model, input_ids, mask).backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        final = loss_of(built, model, input_ids, mask).item()
    assert final < initial - 1e-3, (initial, final)
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    assert all(not torch.equal(p, before[n]) for n, p in trainable.items()), "every own parameter trains"


def randomise(model: nn.Module) -> None:
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.copy_(
                    torch.randn(param.shape, generator=generator) * 0.1 + (param if param.ndim > 1 else 1)
                )


@pytest.mark.parametrize("family", ["llama", "gemma2"])
@pytest.mark.parametrize("method", METHODS)
def test_saved_adapter_reloads_exactly_and_refuses_another_base(tmp_path, method: str, family: str) -> None:
    built, model = apply(method, tiny_model(family))
    randomise(model)
    built.save(model, str(tmp_path / "adapter"))
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    if method in PEFT:  # an ordinary peft folder: peft loads it by itself
        plain = peft.PeftModel.from_pretrained(tiny_model(family), str(tmp_path / "adapter"))
        assert isinstance(plain, peft.PeftModel)
    input_ids, mask = batch(vocab=96)
    model.eval()
    fresh = build(method, **OPTIONS[method]).load(tiny_model(family), str(tmp_path / "adapter"))
    fresh.eval()
    with torch.no_grad():
        expected = model(input_ids=input_ids, attention_mask=mask).logits
        actual = fresh(input_ids=input_ids, attention_mask=mask).logits
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)
    other = tiny_model(family, hidden_size=48)
    with pytest.raises(AdapterError, match=r"different base model .*hidden_size: adapter 32 vs model 48"):
        built.load(other, str(tmp_path / "adapter"))
    assert not any(p.requires_grad is False and "lora" in n for n, p in other.named_parameters())


def test_options_are_validated_before_any_model() -> None:
    with pytest.raises(ValueError, match=r"model.method: LoRAMethod: .*unexpected keyword argument 'rank'"):
        build("lora", rank=4)
    with pytest.raises(
        ValueError, match=r"model.method.options: unknown option\(s\) \['rnak'\] for LoRAMethod"
    ):
        build("lora", options={"rnak": 4})
    with pytest.raises(ValueError, match=r"MixtureConfig.routing='top1' is invalid"):
        build("molora", routing="top1")
    with pytest.raises(ValueError, match=r"MixtureConfig.top_k=5 is invalid"):
        build("hydralora", num_experts=4, top_k=5)
    with pytest.raises(ValueError, match=r"match_hycam chooses the rank; remove r"):
        build("lora", match_hycam={}, r=8)
    with pytest.raises(ValueError, match=r"model.method: HyCAMMethod: .*unexpected keyword argument 'r'"):
        build("hycam", r=8)
    with pytest.raises(ValueError, match=r"target_modules \['qkv'\] not found in decoder layer 0"):
        build("molora", target_modules=["qkv"]).apply(tiny_model("llama"))


@pytest.mark.parametrize("method", ["dora", "ia3", "molora"])
def test_multiplicative_scales_never_decay(method: str) -> None:
    built, model = apply(method, tiny_model("llama"))
    groups = {g["name"]: g for g in built.parameter_groups(model, 1e-3, 0.1)}
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay = {names[id(p)] for p in groups.get("no_decay", {"params": []})["params"]}
    decay = {names[id(p)] for p in groups["decay"]["params"]} if "decay" in groups else set()
    if method == "dora":
        assert no_decay and all("lora_magnitude_vector" in n for n in no_decay)
        assert any("lora_A" in n for n in decay)
    elif method == "ia3":
        assert no_decay and all("ia3_l" in n for n in no_decay) and not decay
    else:
        assert not no_decay and any(".mixture_router." in n for n in decay)
