"""peft's features on a HyCAM adapter: save/load, named adapters, disable_adapter, parameter counts, unload, the
refused merge, the base-model identity check, and folders shared with hycam_pl's own save/load."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from peft import PeftModel, get_peft_model

from hycam_pl import HyCAMConfig, adapter_state_dict, attach, count_parameters, load_adapter, save_adapter
from hycam_pl.modulation import AdapterError, is_attached
from hycam_pl.modulation.persistence import FORMAT_VERSION, write_adapter_files
from hycam_pl.peft import HyCAMPeftConfig

from .conftest import attached_and_peft, batch, randomize_adapter, tiny_model


def logits(model):
    input_ids, mask = batch()
    model.eval()
    with torch.no_grad():
        return model(input_ids=input_ids, attention_mask=mask).logits


@pytest.mark.parametrize("options", [{"num_experts": 3, "rank": 4}, {"num_experts": 0, "train_norms": True}])
def test_save_pretrained_then_from_pretrained_reproduces_logits(tmp_path, options):
    _, peft_model, _ = attached_and_peft(**options)
    if options.get("train_norms"):  # give the per-adapter norm copies trained (non-default) values
        with torch.no_grad():
            for name, param in peft_model.named_parameters():
                if "modules_to_save" in name:
                    param.mul_(1.5)
    expected = logits(peft_model)
    peft_model.save_pretrained(tmp_path / "adapter")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = PeftModel.from_pretrained(tiny_model(), tmp_path / "adapter")
    # No unknown config keys, no missing or unexpected adapter keys.
    assert not [w for w in caught if "keys" in str(w.message) or "keyword" in str(w.message)]
    assert torch.equal(logits(loaded), expected)
    config = loaded.peft_config["default"]
    assert isinstance(config, HyCAMPeftConfig) and config.to_hycam_config() == HyCAMConfig(**options)
    # The same folder loads into a plain model with hycam_pl.load_adapter (no peft wrapper).
    plain = load_adapter(tiny_model(), tmp_path / "adapter")
    assert torch.equal(logits(plain), expected)


def test_hycam_pl_folders_load_with_peft_and_identity_is_checked(tmp_path):
    attached, _, _ = attached_and_peft(num_experts=2, rank=4, layers=[1])
    save_adapter(attached, tmp_path / "adapter")
    loaded = PeftModel.from_pretrained(tiny_model(), tmp_path / "adapter")
    assert torch.equal(logits(loaded), logits(attached))
    with pytest.raises(AdapterError, match=r"different base model .*vocab_size: adapter 96 vs model 128"):
        PeftModel.from_pretrained(tiny_model(vocab_size=128), tmp_path / "adapter")


def test_earlier_hycam_pl_folders_still_load(tmp_path):
    """The hycam_pl-only format written before the peft one (``hycam_config`` + ``layers.<i>.`` keys)."""
    attached, _, _ = attached_and_peft(num_experts=2, rank=4)
    state = attached.model._hycam_state
    meta = {
        "format_version": FORMAT_VERSION,
        "hycam_config": state.config.to_dict(),
        "layer_indices": state.layer_indices,
        "base_model": {"model_type": "llama", "hidden_size": 32, "num_hidden_layers": 2, "vocab_size": 96},
    }
    write_adapter_files(tmp_path / "old", adapter_state_dict(attached), meta)
    assert torch.equal(logits(load_adapter(tiny_model(), tmp_path / "old")), logits(attached))
    # The README's conversion to a peft folder.
    save_adapter(load_adapter(tiny_model(), tmp_path / "old"), tmp_path / "new")
    assert torch.equal(logits(PeftModel.from_pretrained(tiny_model(), tmp_path / "new")), logits(attached))


def test_named_adapters_switch_with_set_adapter():
    base_logits = logits(tiny_model())
    attached_a, peft_model, _ = attached_and_peft(num_experts=3, rank=4)
    cam = attach(tiny_model(), HyCAMConfig(num_experts=0, layers=[1]))
    randomize_adapter(cam, seed=7)
    peft_model.add_adapter("single", HyCAMPeftConfig(num_experts=0, layers=[1]))
    with torch.no_grad():
        params = dict(cam.named_parameters())
        for name, param in peft_model.named_parameters():
            if ".hycam.single." in name:
                param.copy_(
                    params[
                        name.removeprefix("base_model.model.")
                        .replace(".hycam.single.", ".hycam.")
                        .replace(".base_layer.", ".")
                    ]
                )
    assert torch.equal(logits(peft_model), logits(attached_a))  # add_adapter does not activate the new one
    peft_model.set_adapter("single")
    assert torch.equal(logits(peft_model), logits(cam))
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all(".hycam.single." in n for n in trainable)
    assert peft_model.base_model._state.config == HyCAMConfig(num_experts=0, layers=[1])
    peft_model.set_adapter("default")
    assert torch.equal(logits(peft_model), logits(attached_a))
    with peft_model.disable_adapter():
        assert torch.equal(logits(peft_model), base_logits)
    assert torch.equal(logits(peft_model), logits(attached_a))


def test_trainable_parameters_are_the_adapters():
    attached, peft_model, _ = attached_and_peft(num_experts=3, rank=4)
    trainable, total = peft_model.get_nb_trainable_parameters()
    counts = count_parameters(attached)["total"]
    assert trainable == counts["trainable"] and total == counts["trainable"] + counts["frozen"]


def test_merge_is_refused_and_unload_gives_the_base_model_back():
    base_logits = logits(tiny_model())
    _, peft_model, _ = attached_and_peft(num_experts=2, rank=4)
    for merge in (peft_model.merge_and_unload, peft_model.merge_adapter):
        with pytest.raises(
            ValueError, match=r"cannot be merged .* computed from each token's attention input"
        ):
            merge()
    base = peft_model.unload()
    assert not is_attached(base) and not any(".hycam." in n for n, _ in base.named_parameters())
    assert torch.equal(logits(base), base_logits)
    with torch.no_grad():  # no hook left behind
        out = base.train()(input_ids=batch()[0], labels=batch()[0])
    assert out.loss is not None


def test_target_modules_follow_layers_and_other_targets_are_refused():
    config = HyCAMPeftConfig(layers=[1])
    get_peft_model(tiny_model(), config)
    assert config.target_modules == ["model.layers.1.self_attn"]
    with pytest.raises(
        ValueError, match=r"HyCAM wraps the self-attention of the chosen layers: set `layers`"
    ):
        get_peft_model(tiny_model(), HyCAMPeftConfig(target_modules=["q_proj"]))
    with pytest.raises(NotImplementedError, match=r"apply_to='residual_sum' on 'gemma2'"):
        get_peft_model(tiny_model("gemma2"), HyCAMPeftConfig(apply_to="residual_sum"))


def test_saved_config_is_plain_json(tmp_path):
    _, peft_model, _ = attached_and_peft(num_experts=2, rank=4)
    peft_model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["peft_type"] == "HYCAM" and saved["num_experts"] == 2 and saved["weights_sha256"] is None
    assert saved["base_model_identity"]["model_type"] == "llama"


def test_the_hycam_method_object_saves_and_loads_peft_folders(tmp_path):
    from hycam_pl.methods.hycam import HyCAMMethod

    attached, _, _ = attached_and_peft(num_experts=2, rank=4)
    method = HyCAMMethod(num_experts=2, rank=4)
    method.save(attached, str(tmp_path / "adapter"))
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["peft_type"] == "HYCAM"
    assert torch.equal(logits(method.load(tiny_model(), str(tmp_path / "adapter"))), logits(attached))


def test_generation_matches_attach():
    """Decoding through the peft wrapper (KV cache, growing attention mask) gives attach's tokens."""
    import hycam_pl

    attached, peft_model, _ = attached_and_peft(num_experts=3, rank=4)
    input_ids, mask = batch(pad_first=0)
    for model in (attached, peft_model):
        model.eval()
    with torch.no_grad():
        expected = attached.generate(
            input_ids=input_ids, attention_mask=mask, max_new_tokens=4, do_sample=False
        )
        with hycam_pl.without_routing_records(peft_model):
            actual = peft_model.generate(
                input_ids=input_ids, attention_mask=mask, max_new_tokens=4, do_sample=False
            )
    assert torch.equal(actual, expected)
