"""Training steps do not keep earlier steps alive: each forward's routing record (and the graph nodes that
hold it) is freed once the next forward starts, without help from the cyclic garbage collector."""

import gc
import weakref

import torch

from hycam_pl import HyCAMConfig, attach, balance_loss
from hycam_pl.modulation.routing import find_state

from .conftest import batch, tiny_model


def test_training_steps_free_the_previous_forward_record():
    model = tiny_model("llama")
    attach(model, HyCAMConfig(num_experts=4, rank=4))
    model.train()
    state = find_state(model)
    input_ids, mask = batch()
    records = []
    gc.disable()  # the cycle (record -> anchor -> graph -> balance node -> record) must not exist at all
    try:
        for _ in range(3):
            loss = model(input_ids=input_ids, attention_mask=mask, labels=input_ids).loss
            (loss + 0.01 * balance_loss(model)).backward()
            records.append(weakref.ref(state.current))
            del loss
        assert [r() is None for r in records] == [True, True, False]  # only the latest record is alive
    finally:
        gc.enable()
    assert torch.is_tensor(records[-1]().layers[0].gate_sum)
