"""Token-weighted teacher-forced loss and perplexity."""

from __future__ import annotations

import math

import pytest
import torch

from hycam_pl.metrics import TeacherForcedLoss


def test_perplexity_over_uneven_batches_is_exp_of_total_nll_over_total_tokens():
    generator = torch.Generator().manual_seed(0)
    batches = [torch.rand(n, generator=generator) * 4 for n in (3, 50, 7)]  # per-token NLL
    metric = TeacherForcedLoss()
    for token_nll in batches:
        metric.update(token_nll.sum(), token_nll.numel())
    values = metric.compute()

    total_nll = sum(float(b.sum()) for b in batches)
    total_tokens = sum(b.numel() for b in batches)
    assert float(values["loss"]) == pytest.approx(total_nll / total_tokens, rel=1e-12)
    assert float(values["ppl"]) == pytest.approx(math.exp(total_nll / total_tokens), rel=1e-12)
    assert float(values["tokens"]) == total_tokens
    # The point of token weighting: not the mean of per-batch perplexities (nor of per-batch losses).
    mean_of_batch_ppl = sum(math.exp(float(b.mean())) for b in batches) / len(batches)
    assert float(values["ppl"]) != pytest.approx(mean_of_batch_ppl, rel=1e-3)


def test_update_accepts_per_example_tensors_and_detaches():
    nll = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    metric = TeacherForcedLoss()
    metric.update(nll, torch.tensor([1, 1, 2]))
    assert float(metric.compute()["loss"]) == pytest.approx(6.0 / 4)
    assert not metric.nll_sum.requires_grad


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric:UserWarning")
def test_no_tokens_gives_nan_and_reset_clears():
    metric = TeacherForcedLoss()
    assert math.isnan(float(metric.compute()["loss"]))
    metric.update(torch.tensor(5.0), torch.tensor(2))
    assert float(metric.compute()["loss"]) == pytest.approx(2.5)
    metric.reset()
    assert float(metric.compute()["tokens"]) == 0.0
