"""The learning-rate schedule is transformers' cosine-with-warmup, step for step (hycam_pl keeps its own copy so
that a run does not import ``transformers.optimization`` and, through it, peft and accelerate)."""

import pytest
import torch
from transformers import get_cosine_schedule_with_warmup

from hycam_pl.training.schedule import cosine_schedule_with_warmup


@pytest.mark.parametrize(("warmup", "total"), [(0, 1), (0, 10), (3, 10), (15, 300), (10, 10)])
def test_schedule_equals_transformers(warmup, total):
    def lrs(make):
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2e-3)
        scheduler = make(optimizer, warmup, total)
        values = []
        for _ in range(total + 3):
            values.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        return values, scheduler.state_dict()

    ours, our_state = lrs(cosine_schedule_with_warmup)
    theirs, their_state = lrs(get_cosine_schedule_with_warmup)
    assert ours == theirs  # exactly
    assert our_state.keys() == their_state.keys() and our_state["last_epoch"] == their_state["last_epoch"]
