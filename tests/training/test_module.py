"""MultiTaskLM pieces: methods, parameter groups, backbone sources, checkpoint contents, clear errors."""

import time

import pytest
import torch
import transformers

from hycam_pl import HyCAMConfig
from hycam_pl.methods import METHODS, HyCAMMethod
from hycam_pl.modulation import config as config_module
from hycam_pl.training import MultiTaskLM

from .test_resume import BACKBONE


def test_parameter_groups_split_learning_rates_and_never_decay_biases():
    model = MultiTaskLM(
        BACKBONE,
        method=HyCAMMethod(num_experts=2, rank=4, shared_lr=5e-4, expert_lr=2e-3),
        learning_rate=1e-3,
        weight_decay=0.1,
    )
    groups = {g["name"]: g for g in model.method.parameter_groups(model.model, 1e-3, 0.1)}
    assert set(groups) == {"shared", "shared_no_decay", "experts", "experts_no_decay"}
    assert groups["shared"]["lr"] == groups["shared_no_decay"]["lr"] == 5e-4
    assert groups["experts"]["lr"] == groups["experts_no_decay"]["lr"] == 2e-3
    assert groups["shared"]["weight_decay"] == 0.1 and groups["experts"]["weight_decay"] == 0.1
    assert (
        groups["shared_no_decay"]["weight_decay"] == 0.0 and groups["experts_no_decay"]["weight_decay"] == 0.0
    )
    names = {id(p): n for n, p in model.model.named_parameters()}
    assert all(
        ".shared." in names[id(p)] for p in groups["shared"]["params"] + groups["shared_no_decay"]["params"]
    )
    no_decay = {
        names[id(p)] for p in groups["shared_no_decay"]["params"] + groups["experts_no_decay"]["params"]
    }
    decay = {names[id(p)] for p in groups["shared"]["params"] + groups["experts"]["params"]}
    # By role, not shape: the stacked expert biases are (K, r) and (K, d), and still never decay.
    assert {n for n in names.values() if "bias" in n.rsplit(".", 1)[-1]} == no_decay
    assert any(n.endswith("experts.bias_A") for n in no_decay) and any(
        n.endswith("experts.bias_B") for n in no_decay
    )
    assert all("bias" not in n.rsplit(".", 1)[-1] for n in decay)
    expert_names = [names[id(p)] for p in groups["experts"]["params"] + groups["experts_no_decay"]["params"]]
    assert any(".router." in n for n in expert_names) and any(".experts." in n for n in expert_names)
    covered = sum(len(g["params"]) for g in groups.values())
    assert covered == sum(1 for p in model.model.parameters() if p.requires_grad)


def test_weight_decay_is_decided_by_role_for_every_method():
    """Full fine-tuning: norm weights and biases never decay; matrices and embeddings do. A method can
    override ``decays`` (the predicate every method's groups use)."""
    from hycam_pl.methods import resolve_method
    from hycam_pl.methods.base import AdaptationMethod

    model = MultiTaskLM(BACKBONE, method="full", weight_decay=0.1)
    groups = {g["name"]: g for g in model.method.parameter_groups(model.model, 1e-3, 0.1)}
    names = {id(p): n for n, p in model.model.named_parameters()}
    no_decay = {names[id(p)] for p in groups["no_decay"]["params"]}
    assert no_decay and all("norm" in n for n in no_decay), no_decay
    assert "model.norm.weight" in no_decay and "model.layers.0.input_layernorm.weight" in no_decay
    decay = {names[id(p)] for p in groups["decay"]["params"]}
    assert "model.embed_tokens.weight" in decay and "model.layers.0.self_attn.q_proj.weight" in decay

    class NoDecayOnGates(AdaptationMethod):
        def decays(self, name, param):
            return super().decays(name, param) and "q_proj" not in name

    assert resolve_method("full").decays("model.layers.0.self_attn.q_proj.weight", None)
    assert not NoDecayOnGates().decays("model.layers.0.self_attn.q_proj.weight", None)
    for name in (
        "x.ln_f.weight",
        "h.0.ln_1.weight",
        "encoder.LayerNorm.weight",
        "a.layer_norm.weight",
        "lin.bias",
    ):
        assert not AdaptationMethod().decays(name, None), name
    assert AdaptationMethod().decays("h.0.attn.c_attn.weight", None)


def test_methods_are_pluggable_and_validated(monkeypatch):
    monkeypatch.setattr(config_module, "_WARNED", set())
    assert {"hycam", "cam", "full"} <= set(METHODS)
    cam = MultiTaskLM(BACKBONE, method="cam")
    assert cam.method.config.num_experts == 0
    full = MultiTaskLM(BACKBONE, method="full")
    assert all(p.requires_grad for p in full.model.parameters())
    with pytest.raises(
        ValueError,
        match=r"model.method='lora2' is unknown; choose one of: cam, dora, full, hycam, hydralora, ia3, lora, molora",
    ):
        MultiTaskLM(BACKBONE, method="lora2")
    with pytest.warns(UserWarning, match=r"num_experts=0 \(plain CAM\) has no experts or router, so rank=8"):
        swept = MultiTaskLM(BACKBONE, method=HyCAMMethod(num_experts=0, rank=8, layers=[1]))  # a K = 0 point
    assert swept.method.config == HyCAMConfig(num_experts=0, layers=[1])  # CAM options kept, routing dropped
    assert swept.method.name == "cam"
    with pytest.raises(ValueError, match=r"model.activation_checkpointing='sometimes' is invalid"):
        MultiTaskLM(BACKBONE, activation_checkpointing="sometimes")


def test_config_dict_backbone_is_deterministic_and_local_paths_load(tmp_path):
    first, second = MultiTaskLM(BACKBONE, method="full"), MultiTaskLM(BACKBONE, method="full")
    assert all(
        torch.equal(a, b)
        for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values())
    )
    other_seed = MultiTaskLM(BACKBONE, method="full", init_seed=1)
    assert not torch.equal(first.model.lm_head.weight, other_seed.model.lm_head.weight)
    first.model.save_pretrained(tmp_path / "base")
    from_path = MultiTaskLM(str(tmp_path / "base"), method=HyCAMMethod(num_experts=1, rank=2))
    assert torch.equal(from_path.model.lm_head.weight, first.model.lm_head.weight)
    assert isinstance(from_path.model, transformers.LlamaForCausalLM)
    with pytest.raises(ValueError, match=r"model.backbone: a config dict needs 'model_type'"):
        MultiTaskLM({"hidden_size": 8})
    with pytest.raises(FileNotFoundError, match=r"has no config.json"):
        MultiTaskLM(str(tmp_path))


def test_hub_name_fails_fast_and_clearly_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(
        FileNotFoundError,
        match=r"model.backbone: model 'no-such-org/no-such-model' is neither a local directory nor in the Hugging Face cache",
    ):
        MultiTaskLM("no-such-org/no-such-model")
    assert time.monotonic() - start < 20


def test_checkpoint_keeps_only_trainable_weights_and_refuses_a_mismatch():
    model = MultiTaskLM(BACKBONE, method=HyCAMMethod(num_experts=2, rank=4))
    checkpoint = {"state_dict": model.state_dict()}
    model.on_save_checkpoint(checkpoint)
    assert set(checkpoint["state_dict"]) == model.trainable_keys()
    assert all(".hycam." in key for key in checkpoint["state_dict"])
    assert (
        len(checkpoint["hycam_rng_state"]) == 1 and "cpu" in checkpoint["hycam_rng_state"][0]
    )  # one per rank
    other = MultiTaskLM(BACKBONE, method=HyCAMMethod(num_experts=3, rank=4, layers=[0, 1]))
    partial = {"state_dict": {k: v for k, v in checkpoint["state_dict"].items() if "layers.0." in k}}
    with pytest.raises(
        ValueError, match=r"checkpoint does not fit this model: \d+ trainable tensors missing"
    ):
        other.on_load_checkpoint(partial)


def test_hyperparameters_are_plain_types():
    model = MultiTaskLM(BACKBONE, method=HyCAMMethod(num_experts=2, rank=4), generation={"max_new_tokens": 5})
    assert model.hparams["method"]["init_args"]["num_experts"] == 2
    assert model.hparams["generation"]["max_new_tokens"] == 5
    rebuilt = MultiTaskLM(**dict(model.hparams))
    assert rebuilt.method.config == model.method.config and rebuilt.generation.max_new_tokens == 5
