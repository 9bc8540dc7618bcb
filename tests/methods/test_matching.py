"""Parameter-matched LoRA and the README's method table: counts computed on meta-device models."""

from __future__ import annotations

import re

import pytest

from hycam_pl import HyCAMConfig, attach, count_parameters
from hycam_pl.methods.counting import QWEN25_7B, SMOLLM2_135M, meta_model, trainable_parameters
from hycam_pl.methods.peft_methods import hycam_trainable_count
from tests.methods.helpers import build
from tests.modulation.conftest import tiny_model
from tests.training.conftest import REPO


@pytest.mark.parametrize("hycam", [HyCAMConfig(), HyCAMConfig(num_experts=4, rank=16, train_norms=True)])
def test_hycam_count_without_attaching_matches_the_attached_count(hycam) -> None:
    assert (
        hycam_trainable_count(tiny_model("gemma2"), hycam)
        == count_parameters(attach(tiny_model("gemma2"), hycam))["total"]["trainable"]
    )


@pytest.mark.parametrize("shape", [SMOLLM2_135M, QWEN25_7B], ids=["smollm2-135m", "qwen2.5-7b"])
def test_parameter_matched_lora_is_within_5_percent_of_hycam(shape, capsys) -> None:
    hycam = HyCAMConfig(num_experts=4, rank=8)
    method = build("lora", match_hycam={"num_experts": 4, "rank": 8})
    model = method.apply(meta_model(shape))
    lora = sum(p.numel() for p in model.parameters() if p.requires_grad)
    reference = hycam_trainable_count(meta_model(shape), hycam)
    assert abs(lora - reference) / reference < 0.05
    assert method.matched == {"rank": method.matched["rank"], "hycam": reference, "lora": lora}
    printed = capsys.readouterr().out
    assert f"-> {lora:,} trainable parameters; HyCAM (model.method.match_hycam) has {reference:,}" in printed
    assert method.options["lora_alpha"] is None  # unset: the matched alpha is 2r
    assert model.peft_config["default"].lora_alpha == 2 * method.matched["rank"]


def test_readme_method_table_is_computed() -> None:
    """Every count in the README's method table is what the code computes for SmolLM2-135M and Qwen2.5-7B."""
    readme = (REPO / "README.md").read_text()
    rows = {
        "lora": "lora",
        "lora (parameter-matched)": {
            "class_path": "hycam_pl.methods.LoRAMethod",
            "init_args": {"match_hycam": {}},
        },
        "hydralora": "hydralora",
        "hycam": "hycam",
    }
    for label, method in rows.items():
        line = next(
            row
            for row in readme.splitlines()
            if row.startswith(f"| `{label}`") or row.startswith(f"| {label} |")
        )
        numbers = [int(n.replace(",", "")) for n in re.findall(r"\b\d{1,3}(?:,\d{3})+\b", line)]
        for shape in (SMOLLM2_135M, QWEN25_7B):
            assert trainable_parameters(shape, method)[0] in numbers, (label, line)
