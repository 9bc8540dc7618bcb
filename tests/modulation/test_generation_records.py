"""Generation skips the routing statistics (nothing reads them for a decoding step) without changing outputs, and
recording resumes after it; the fast few-token expert path equals the dense mixture."""

from __future__ import annotations

import torch

import hycam_pl
from hycam_pl import HyCAMConfig, attach
from hycam_pl.modulation import routing_statistics
from hycam_pl.modulation.experts import StackedExperts

from .conftest import randomize_adapter, tiny_model


def test_generation_without_routing_records_is_identical_and_recording_resumes():
    model = tiny_model("llama", num_hidden_layers=2)
    torch.manual_seed(0)
    attach(model, HyCAMConfig(num_experts=4, rank=4))
    randomize_adapter(model)
    model.eval()
    prompt = torch.randint(3, 50, (2, 6))
    settings = dict(max_new_tokens=5, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        recorded = model.generate(input_ids=prompt, **settings)
        assert routing_statistics(model)  # the last decoding step was recorded
        with hycam_pl.without_routing_records(model):
            skipped = model.generate(input_ids=prompt, **settings)
            assert routing_statistics(model) == {}
        assert torch.equal(recorded, skipped)
        model(input_ids=prompt)
    stats = routing_statistics(model)
    assert sorted(stats) == [0, 1] and all(int(s.tokens) == prompt.numel() for s in stats.values())


def test_context_is_a_no_op_on_a_model_without_hycam():
    model = tiny_model("llama", num_hidden_layers=1)
    with hycam_pl.without_routing_records(model):
        model(input_ids=torch.randint(3, 50, (1, 4)))


def test_few_token_inference_path_equals_the_dense_mixture():
    torch.manual_seed(0)
    for bias in (True, False):
        experts = StackedExperts(32, 4, 8, 2.0, bias)
        for p in experts.parameters():
            torch.nn.init.normal_(p, std=0.3)
        x = torch.randn(3, 32)
        index = torch.tensor([2, 0, 2])
        gates = torch.nn.functional.one_hot(index, 4).float()
        with torch.no_grad():
            dense = torch.einsum("nk,knd->nd", gates, experts(x))
            torch.testing.assert_close(experts.mix(x, gates, index), dense)
            torch.testing.assert_close(experts.selected_few(x, index), experts(x)[index, torch.arange(3)])
