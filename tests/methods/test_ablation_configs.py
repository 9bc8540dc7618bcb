"""Every ablation overlay, merged over configs/tiny.yaml by the real CLI parser, builds the model it promises."""

from __future__ import annotations

import pytest

from hycam_pl.modulation import find_state
from hycam_pl.training import MultiTaskLM
from hycam_pl.training.validation import validate_model_options
from tests.tiny import tiny_byte_llama
from tests.training.test_configs import ABLATIONS, CONFIGS, print_config


def names(module: MultiTaskLM) -> set[str]:
    return {n for n, p in module.model.named_parameters() if p.requires_grad}


def check_no_shared_cam(module, config):
    assert not any(".shared." in n for n in names(module)) and any(".experts." in n for n in names(module))


def check_cam_only(module, config):
    assert module.method.name == "cam" and all(".shared." in n for n in names(module))


def check_no_balance_loss(module, config):
    assert module.method.config.balance_coef == 0.0 and module.method.auxiliary_losses(module.model)


def check_soft_routing(module, config):
    assert module.method.config.hard is False and module.method.config.eval_routing == "softmax"


def check_pooled(module, config):
    assert find_state(module.model).balance_scope == "pooled"


def check_layer(module, config):
    assert find_state(module.model).balance_scope == "layer"


def check_reference(module, config):
    hycam = module.method.config
    assert hycam.apply_to == "residual_sum" and hycam.train_norms and hycam.balance_scope == "pooled"
    assert any("layernorm" in n for n in names(module))
    assert config["data"]["loss_on"] == "all"


CHECKS = {
    "no_shared_cam": check_no_shared_cam,
    "cam_only": check_cam_only,
    "no_balance_loss": check_no_balance_loss,
    "soft_routing": check_soft_routing,
    "balance_pooled": check_pooled,
    "balance_layer": check_layer,
    "reference_compatible": check_reference,
}


def test_every_ablation_has_a_check():
    assert {p.stem for p in ABLATIONS} == set(CHECKS)


@pytest.mark.parametrize("overlay", ABLATIONS, ids=lambda p: p.stem)
def test_ablation_overlay_builds_what_it_says(overlay, recwarn):
    config = print_config(CONFIGS / "tiny.yaml", overlay)
    model = {k: v for k, v in config["model"].items() if v is not None}
    validate_model_options(model)
    module = MultiTaskLM(**{**model, "backbone": tiny_byte_llama()})
    assert not [w for w in recwarn if "ignored" in str(w.message)], "an overlay must not need a warning"
    CHECKS[overlay.stem](module, config)
