import pytest
import torch
import transformers

from hycam_pl import HyCAMConfig, attach, detach
from hycam_pl.modulation import UnsupportedArchitectureError, is_attached

from .conftest import FAMILY_ATTENTION, batch, randomize_adapter, tiny_model


@pytest.mark.parametrize("family,attn", FAMILY_ATTENTION)
@pytest.mark.parametrize("apply_to", ["attention_output", "residual_sum"])
def test_bitwise_identity_at_init(family, attn, apply_to):
    model = tiny_model(family, attn)
    input_ids, mask = batch()
    with torch.no_grad():
        before = model(input_ids=input_ids, attention_mask=mask).logits
        attach(model, HyCAMConfig(num_experts=3, apply_to=apply_to))
        after = model(input_ids=input_ids, attention_mask=mask).logits
        model.train()  # Gumbel routing picks experts, but every expert is still exactly zero
        after_train = model(input_ids=input_ids, attention_mask=mask).logits
    assert torch.equal(before, after)
    assert torch.equal(before, after_train)


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_detach_restores_original_exactly(family):
    model = tiny_model(family)
    input_ids, mask = batch()
    names_before = [n for n, _ in model.named_parameters()]
    flags_before = {n: p.requires_grad for n, p in model.named_parameters()}
    with torch.no_grad():
        before = model(input_ids=input_ids, attention_mask=mask).logits
    attach(model, HyCAMConfig(num_experts=2, train_norms=True, apply_to="residual_sum"))
    randomize_adapter(model)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "layernorm" in name:
                param.add_(0.3)  # as if trained with train_norms
        changed = model(input_ids=input_ids, attention_mask=mask).logits
    assert not torch.allclose(before, changed)
    detach(model)
    with torch.no_grad():
        after = model(input_ids=input_ids, attention_mask=mask).logits
    assert torch.equal(before, after)
    assert [n for n, _ in model.named_parameters()] == names_before
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags_before
    assert not is_attached(model)


def test_base_parameter_names_unchanged_and_from_pretrained_compatible(tmp_path):
    model = tiny_model("llama")
    base_names = set(model.state_dict())
    attach(model, HyCAMConfig(num_experts=2))
    names = set(model.state_dict())
    assert base_names <= names
    assert all(".self_attn.hycam." in n for n in names - base_names)
    # A checkpoint of the modulated model still loads into a plain model (extra adapter keys are dropped).
    model.save_pretrained(tmp_path)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    assert set(reloaded.state_dict()) == base_names


def test_attach_freezes_backbone_and_refuses_twice():
    model = tiny_model("llama")
    attach(model, HyCAMConfig(num_experts=2))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".hycam." in n for n in trainable)
    assert not any(m.training for m in model.modules())  # attached to an eval model: routing is eval routing
    with pytest.raises(ValueError, match="already has HyCAM attached"):
        attach(model, HyCAMConfig())


def test_unsupported_architecture_lists_supported_ones():
    config = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=64)
    model = transformers.GPT2LMHeadModel(config)
    with pytest.raises(
        UnsupportedArchitectureError,
        match=r"model_type 'gpt2'.*supported: gemma, gemma2, gemma3_text, llama, mistral, qwen2, qwen3",
    ):
        attach(model, HyCAMConfig())
    assert all(p.requires_grad for p in model.parameters())  # untouched


def test_layer_selection_and_out_of_range():
    model = tiny_model("llama", num_hidden_layers=3)
    attach(model, HyCAMConfig(num_experts=1, layers=[2, 0]))
    modulated = {n.split(".")[2] for n, _ in model.named_parameters() if ".hycam." in n}
    assert modulated == {"0", "2"}
    other = tiny_model("llama", num_hidden_layers=3)
    with pytest.raises(
        ValueError, match=r"HyCAMConfig.layers=\[1, 3\] has indices \[3\] out of range: the model has 3"
    ):
        attach(other, HyCAMConfig(layers=[1, 3]))
    assert not is_attached(other)


def test_rank_larger_than_hidden_size_is_rejected():
    model = tiny_model("llama")
    with pytest.raises(ValueError, match=r"HyCAMConfig.rank=64 exceeds the model's hidden_size=32"):
        attach(model, HyCAMConfig(num_experts=2, rank=64))
    assert not is_attached(model)
