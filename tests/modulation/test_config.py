import warnings

import pytest

from hycam_pl import HyCAMConfig
from hycam_pl.modulation import config as config_module


def test_defaults_follow_the_specification():
    config = HyCAMConfig()
    assert (config.alpha, config.tau, config.hard, config.eval_routing) == (32.0, 0.5, True, "argmax")
    assert (config.balance_coef, config.bias, config.shared, config.apply_to) == (
        0.01,
        True,
        True,
        "attention_output",
    )
    assert config.scaling == 32.0 / config.rank
    assert (config.balance_scope, config.balance_scale_by_experts) == ("layer", False)


def test_routing_options_without_experts_are_ignored_with_one_warning(monkeypatch):
    """A sweep sets num_experts 0 on a config that has rank, tau, ...: CAM, told once, no second override."""
    monkeypatch.setattr(config_module, "_WARNED", set())
    with pytest.warns(UserWarning, match=r"num_experts=0 \(plain CAM\).*rank=8, tau=1.0 are ignored"):
        config = HyCAMConfig(num_experts=0, rank=8, tau=1.0)
    assert (config.rank, config.tau, config.scaling) == (None, None, 0.0)
    assert config == HyCAMConfig(num_experts=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        HyCAMConfig(num_experts=0, rank=8, tau=1.0)  # the same message is not repeated


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"num_experts": -1}, r"HyCAMConfig.num_experts=-1 is invalid; allowed: an integer >= 0"),
        (
            {"eval_routing": "sample"},
            r"HyCAMConfig.eval_routing='sample' is invalid; allowed: one of 'argmax', 'softmax'",
        ),
        (
            {"apply_to": "mlp"},
            r"HyCAMConfig.apply_to='mlp' is invalid; allowed: one of 'attention_output', 'residual_sum'",
        ),
        ({"tau": 0}, r"HyCAMConfig.tau=0 is invalid; allowed: a number > 0"),
        ({"rank": 0}, r"HyCAMConfig.rank=0 is invalid"),
        ({"layers": [1, 1]}, r"HyCAMConfig.layers=\[1, 1\] is invalid"),
        ({"dtype": "int8"}, r"HyCAMConfig.dtype='int8' is invalid"),
        ({"num_experts": 0, "tau": 0}, r"HyCAMConfig.tau=0 is invalid"),  # ignored, but still checked
        (
            {"balance_scope": "global"},
            r"HyCAMConfig.balance_scope='global' is invalid; allowed: one of 'layer'",
        ),
        ({"num_experts": 0, "shared": False}, r"shared=False with num_experts=0 leaves nothing to train"),
    ],
)
def test_invalid_values_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        HyCAMConfig(**kwargs)


def test_round_trip_through_dict():
    for config in (HyCAMConfig(num_experts=0), HyCAMConfig(num_experts=4, rank=4, layers=[3, 1])):
        assert HyCAMConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['experts'\]"):
        HyCAMConfig.from_dict({"experts": 3})
