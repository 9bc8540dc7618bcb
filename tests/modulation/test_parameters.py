import pytest

from hycam_pl import HyCAMConfig, attach, count_parameters

from .conftest import tiny_model


@pytest.mark.parametrize(
    "config",
    [
        HyCAMConfig(num_experts=0),
        HyCAMConfig(num_experts=1, rank=4),
        HyCAMConfig(num_experts=4, rank=8),
        HyCAMConfig(num_experts=3, rank=2, bias=False),
        HyCAMConfig(num_experts=2, rank=4, shared=False),
    ],
)
def test_counts_equal_method_section_4(config):
    model = tiny_model("llama", num_hidden_layers=3)
    backbone = sum(p.numel() for p in model.parameters())
    attach(model, config)
    d, k, r, layers = 32, config.num_experts, config.rank or 0, 3
    bias = 1 if config.bias else 0
    shared = (d * d + bias * d) if config.shared else 0
    experts = k * (2 * d * r + r * r + bias * (2 * r + d))
    router = (d * k + bias * k) if k else 0
    counts = count_parameters(model)
    assert counts["shared"] == {"trainable": layers * shared, "frozen": 0}
    assert counts["experts"] == {"trainable": layers * experts, "frozen": 0}
    assert counts["router"] == {"trainable": layers * router, "frozen": 0}
    assert counts["backbone"] == {"trainable": 0, "frozen": backbone}
    assert counts["total"]["trainable"] == layers * (shared + experts + router)


def test_train_norms_makes_norms_trainable_backbone():
    model = tiny_model("llama")
    attach(model, HyCAMConfig(num_experts=1, train_norms=True))
    assert (
        count_parameters(model)["backbone"]["trainable"] == 2 * 2 * 32
    )  # two RMSNorms per layer, two layers
