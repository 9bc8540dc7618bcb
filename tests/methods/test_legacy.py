"""The method options of releases up to bdb89e0 (``model.hycam``, ``model.method_options``, ``shared_lr``,
``expert_lr``): a config that sets one is one ``error:`` line naming ``model.method`` and the equivalent setting;
a checkpoint that holds them still resumes, evaluates and exports, its options read as ``model.method``."""

from __future__ import annotations

import pytest
import torch
import yaml

from hycam_pl.methods import resolve_method, upgrade_hparams
from hycam_pl.methods.legacy import retired_options_error, translate
from hycam_pl.training import MultiTaskLM
from hycam_pl.training.export import export
from hycam_pl.training.resume import option_conflicts
from tests.reliability.helpers import error_lines, run_hycam_in_process
from tests.tiny import tiny_byte_llama

HYCAM = "hycam_pl.methods.HyCAMMethod"


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ({"method": "hycam", "hycam": None}, "hycam"),
        (
            {"method": "hycam", "hycam": {"num_experts": 4, "rank": 8, "tau": None}, "expert_lr": 1e-3},
            {"class_path": HYCAM, "init_args": {"num_experts": 4, "rank": 8, "expert_lr": 1e-3}},
        ),
        (
            {"method": "cam", "hycam": {"num_experts": 4, "rank": 8, "layers": [1]}},
            {"class_path": HYCAM, "init_args": {"layers": [1], "num_experts": 0}},
        ),
        ({"method": "full", "hycam": {"num_experts": 4}}, "full"),
        (
            {
                "method": "lora",
                "hycam": {"num_experts": 4, "rank": 8},
                "method_options": {"match_parameters": True},
            },
            {
                "class_path": "hycam_pl.methods.LoRAMethod",
                "init_args": {"match_hycam": {"num_experts": 4, "rank": 8}},
            },
        ),
        (
            {"method": "lora", "method_options": {"r": 16, "use_rslora": True}},
            {
                "class_path": "hycam_pl.methods.LoRAMethod",
                "init_args": {"r": 16, "options": {"use_rslora": True}},
            },
        ),
        (
            {"method": "molora", "method_options": {"num_experts": 2, "r": 4}},
            {"class_path": "hycam_pl.methods.MoLoRAMethod", "init_args": {"num_experts": 2, "r": 4}},
        ),
    ],
)
def test_retired_options_translate_to_one_method(old, new) -> None:
    assert translate(old) == new
    resolve_method(new)  # a valid model.method


def test_a_retired_option_in_a_config_is_one_line_naming_the_new_key(tmp_path) -> None:
    config = tmp_path / "old.yaml"
    config.write_text(
        yaml.safe_dump({"model": {"method": "hycam", "hycam": {"num_experts": 4}, "shared_lr": 1e-3}})
    )
    line = retired_options_error(yaml.safe_load(config.read_text())["model"], str(config))
    assert line.startswith(f"{config}: model.hycam, model.shared_lr are no longer an option")
    assert (
        "model.method: {class_path: hycam_pl.methods.HyCAMMethod, init_args: {num_experts: 4, shared_lr: 0.001}}"
        in line
    )
    result = run_hycam_in_process(["fit", "-c", str(config)], tmp_path)
    assert result.returncode == 2 and error_lines(result.stderr) == [f"error: {line}"], result.stderr[-2000:]


def test_a_checkpoint_with_retired_options_exports_and_resumes(tmp_path) -> None:
    """The checkpoint of a current-release run, its hyper-parameters rewritten to the earlier form."""
    module = MultiTaskLM(
        tiny_byte_llama(),
        method=resolve_method({"class_path": HYCAM, "init_args": {"num_experts": 2, "rank": 4}}),
    )
    with torch.no_grad():
        for param in module.model.parameters():
            if param.requires_grad:
                param.normal_()
    state = {k: v for k, v in module.state_dict().items() if k in module.trainable_keys()}
    old = {k: v for k, v in module.hparams.items() if k != "method"}
    old.update(
        method="hycam",
        hycam={"num_experts": 2, "rank": 4},
        method_options=None,
        shared_lr=None,
        expert_lr=None,
    )
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": state, "hyper_parameters": old}, path)

    upgraded = upgrade_hparams(old)
    assert upgraded["method"] == module.hparams["method"] and "hycam" not in upgraded
    assert option_conflicts(dict(module.hparams), upgraded, "fit") == []
    exported = export(path, tmp_path / "adapter")
    fresh = resolve_method(upgraded["method"]).load(tiny_byte_llama_model(), str(exported))
    ids = torch.randint(1, 300, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(
            fresh.eval()(input_ids=ids).logits, module.model.eval()(input_ids=ids).logits
        )
    # The Python API too: Lightning's own loader would drop the retired options and build K = 4, rank 8.
    loaded = MultiTaskLM.load_from_checkpoint(path, map_location="cpu")
    assert loaded.method.spec() == module.method.spec()
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.model.eval()(input_ids=ids).logits, module.model(input_ids=ids).logits
        )


@pytest.mark.parametrize(
    ("argument", "message"),
    [
        (
            {"weights_only": False},
            "weights_only is not supported here: every checkpoint is read weights-only",
        ),
        ({"map_location": {"cuda:0": "cpu"}}, "map_location is not supported here: give a device"),
        ({"hparams_file": "hparams.yaml"}, "hparams_file is not supported here"),
    ],
)
def test_load_from_checkpoint_refuses_what_it_cannot_honour(tmp_path, argument, message) -> None:
    """Refused in one line before the file is read, never silently ignored."""
    with pytest.raises(ValueError, match=f"^load_from_checkpoint: {message}"):
        MultiTaskLM.load_from_checkpoint(tmp_path / "absent.ckpt", **argument)
    with open(__file__, "rb") as handle, pytest.raises(ValueError, match="checkpoint_path is not supported"):
        MultiTaskLM.load_from_checkpoint(handle)  # a file object: refused


def tiny_byte_llama_model():
    from hycam_pl.backbone import load_backbone

    return load_backbone(tiny_byte_llama())
