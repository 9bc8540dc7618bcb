"""Save/load round trips, and every bad adapter directory fails clearly without touching the model."""

import json

import pytest
import torch

from hycam_pl import HyCAMConfig, adapter_state_dict, attach, load_adapter, save_adapter
from hycam_pl.modulation import AdapterError, is_attached, read_adapter_config

from .conftest import batch, randomize_adapter, tiny_model


def saved_adapter(tmp_path, **config):
    model = tiny_model("llama")
    torch.manual_seed(0)
    attach(model, HyCAMConfig(**({"num_experts": 3, "rank": 4} | config)))
    randomize_adapter(model, scale=2.0)
    save_adapter(model, tmp_path / "adapter")
    return model, tmp_path / "adapter"


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.state_dict().items()}


def assert_untouched(model, before):
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[n], before[n]) for n in before)


@pytest.mark.parametrize(
    "config", [{}, {"num_experts": 0, "rank": None}, {"train_norms": True, "layers": [1]}]
)
def test_save_then_load_into_fresh_model_reproduces_logits(tmp_path, config):
    model, directory = saved_adapter(tmp_path, **config)
    input_ids, mask = batch()
    with torch.no_grad():
        expected = model(input_ids=input_ids, attention_mask=mask).logits
    meta = json.loads((directory / "adapter_config.json").read_text())
    assert meta["peft_type"] == "HYCAM"  # a peft folder: see tests/peft for PeftModel.from_pretrained
    identity = meta["base_model_identity"]
    assert identity["model_type"] == "llama" and identity["hidden_size"] == 32
    assert identity["num_hidden_layers"] == 2 and identity["vocab_size"] == 96
    assert "name_or_path" in identity

    fresh = tiny_model("llama")
    load_adapter(fresh, directory)
    with torch.no_grad():
        actual = fresh(input_ids=input_ids, attention_mask=mask).logits
    assert torch.equal(actual, expected)
    assert read_adapter_config(directory)["config"] == HyCAMConfig(**({"num_experts": 3, "rank": 4} | config))
    assert adapter_state_dict(fresh).keys() == adapter_state_dict(model).keys()


def test_load_into_already_attached_model_with_same_config(tmp_path):
    model, directory = saved_adapter(tmp_path)
    target = attach(tiny_model("llama"), HyCAMConfig(num_experts=3, rank=4))
    load_adapter(target, directory)
    for name, tensor in adapter_state_dict(model).items():
        assert torch.equal(adapter_state_dict(target)[name], tensor)


def test_mismatched_base_is_rejected_and_model_untouched(tmp_path):
    _, directory = saved_adapter(tmp_path)
    other = tiny_model("llama", hidden_size=48, num_attention_heads=4, head_dim=12)
    before = snapshot(other)
    with pytest.raises(AdapterError, match=r"different base model .*hidden_size: adapter 32 vs model 48"):
        load_adapter(other, directory)
    assert not is_attached(other)
    assert_untouched(other, before)
    deeper = tiny_model("llama", num_hidden_layers=3)
    with pytest.raises(AdapterError, match=r"num_hidden_layers: adapter 2 vs model 3"):
        load_adapter(deeper, directory)


def test_missing_files_are_named(tmp_path):
    _, directory = saved_adapter(tmp_path)
    model = tiny_model("llama")
    with pytest.raises(FileNotFoundError, match=r"adapter config not found: .*nowhere/adapter_config.json"):
        load_adapter(model, tmp_path / "nowhere")
    (directory / "adapter_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"adapter weights not found: .*adapter_model.safetensors"):
        load_adapter(model, directory)
    assert not is_attached(model)


def test_corrupt_files_fail_clearly_and_leave_model_untouched(tmp_path):
    _, directory = saved_adapter(tmp_path)
    model = tiny_model("llama")
    before = snapshot(model)
    weights = directory / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10:] = b"\x00" * 10
    weights.write_bytes(bytes(data))
    with pytest.raises(AdapterError, match=r"adapter_model.safetensors do not match the checksum"):
        load_adapter(model, directory)
    weights.write_bytes(bytes(data[:40]))  # truncated, and no checksum to compare against
    meta = json.loads((directory / "adapter_config.json").read_text())
    meta.pop("weights_sha256")
    (directory / "adapter_config.json").write_text(json.dumps(meta))
    with pytest.raises(AdapterError, match=r"adapter weights .*adapter_model.safetensors are corrupt"):
        load_adapter(model, directory)
    (directory / "adapter_config.json").write_text('{"hycam_config": {"num_experts": 3,')
    with pytest.raises(AdapterError, match=r"adapter config .*adapter_config.json is corrupt"):
        load_adapter(model, directory)
    assert not is_attached(model)
    assert_untouched(model, before)


def test_wrongly_shaped_or_missing_tensor_is_rejected(tmp_path):
    from safetensors.torch import load_file, save_file

    _, directory = saved_adapter(tmp_path)
    weights = directory / "adapter_model.safetensors"
    tensors = load_file(weights)
    meta = json.loads((directory / "adapter_config.json").read_text())
    meta.pop("weights_sha256")
    (directory / "adapter_config.json").write_text(json.dumps(meta))
    key = "base_model.model.model.layers.0.self_attn.hycam.experts.weight_A"
    tensors[key] = torch.zeros(3, 32, 5)
    save_file(tensors, weights)
    model = tiny_model("llama")
    with pytest.raises(AdapterError, match=rf"wrong shapes {key}: \(3, 32, 5\) != \(3, 32, 4\)"):
        load_adapter(model, directory)
    del tensors[key]
    save_file(tensors, weights)
    with pytest.raises(AdapterError, match=rf"missing tensors \['{key}'\]"):
        load_adapter(model, directory)
    assert not is_attached(model)


def test_attached_with_a_different_config_is_refused(tmp_path):
    _, directory = saved_adapter(tmp_path)
    model = attach(tiny_model("llama"), HyCAMConfig(num_experts=2, rank=4))
    before = snapshot(model)
    with pytest.raises(AdapterError, match=r"already has a HyCAM adapter with a different config"):
        load_adapter(model, directory)
    assert_untouched(model, before)


def test_save_overwrites_atomically(tmp_path):
    model, directory = saved_adapter(tmp_path)
    randomize_adapter(model, seed=9)
    save_adapter(model, directory)
    leftovers = [p.name for p in directory.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []
    fresh = load_adapter(tiny_model("llama"), directory)
    for name, tensor in adapter_state_dict(model).items():
        assert torch.equal(adapter_state_dict(fresh)[name], tensor)


@pytest.mark.parametrize("layers", [None, [1]])
def test_read_adapter_config_names_the_adapted_layers(tmp_path, layers):
    """The routing notebook reads ``layer_indices``: a peft-format folder gives them from its target modules."""
    model, directory = saved_adapter(tmp_path, layers=layers)
    meta = read_adapter_config(directory)
    assert meta["format"] == "peft"
    assert meta["layer_indices"] == ([1] if layers else list(range(model.config.num_hidden_layers)))
    broken = json.loads((directory / "adapter_config.json").read_text())
    broken["target_modules"] = ["lm_head"]
    (directory / "adapter_config.json").write_text(json.dumps(broken))
    with pytest.raises(AdapterError, match="names no decoder layer"):
        read_adapter_config(directory)
