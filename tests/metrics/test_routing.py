"""Routing diagnostics on collapsed, uniform and hand-made routers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hycam_pl.metrics import expert_load, load_entropy, router_entropy, usage_matrix

K = 4


def test_collapsed_router_has_all_load_on_one_expert_and_zero_entropy():
    gates = F.one_hot(torch.full((3, 5), 2), K).float()  # every token to expert 2
    load = expert_load(gates)
    assert load.tolist() == [0.0, 0.0, 1.0, 0.0]
    assert float(load_entropy(load)) == 0.0
    assert torch.equal(router_entropy(gates), torch.zeros(3, 5))


def test_uniform_router_has_entropy_log_k():
    probs = torch.full((2, 6, K), 1.0 / K)
    assert torch.allclose(router_entropy(probs), torch.full((2, 6), math.log(K)))
    assert torch.allclose(expert_load(probs), torch.full((K,), 1.0 / K))
    balanced_hard = F.one_hot(torch.arange(8) % K, K)  # hard routing, balanced over tokens
    assert float(load_entropy(expert_load(balanced_hard))) == pytest.approx(math.log(K))
    assert float(load_entropy(expert_load(balanced_hard), normalized=True)) == pytest.approx(1.0)


def test_router_entropy_hand_value_and_load_entropy_of_counts():
    probs = torch.tensor([0.5, 0.25, 0.25, 0.0])
    expected = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert float(router_entropy(probs)) == pytest.approx(expected)
    assert float(load_entropy(torch.tensor([2.0, 1.0, 1.0, 0.0]))) == pytest.approx(expected)  # counts ok


def test_expert_load_excludes_padding():
    gates = F.one_hot(torch.tensor([[1, 1, 0, 0], [1, 3, 0, 0]]), K).float()  # padding routed to expert 0
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0]])
    assert expert_load(gates, mask).tolist() == [0.0, 0.75, 0.0, 0.25]
    assert expert_load(gates)[0] == 0.5  # without the mask, padding would dominate
    with pytest.raises(ValueError):
        expert_load(gates, mask[:, :3])


def test_usage_matrix_is_task_by_expert_mean_load():
    task_ids = torch.tensor([0, 2, 0, 2, 2])
    per_example = torch.tensor(
        [
            [1.0, 0.0, 0.0, 0.0],
            [0.0, 1.0, 0.0, 0.0],
            [0.5, 0.5, 0.0, 0.0],
            [0.0, 0.0, 1.0, 0.0],
            [0.0, 0.5, 0.5, 0.0],
        ]
    )
    matrix = usage_matrix(task_ids, per_example, num_tasks=3)
    assert matrix.shape == (3, K)
    assert matrix[0].tolist() == [0.75, 0.25, 0.0, 0.0]
    assert torch.allclose(matrix[2], torch.tensor([0.0, 0.5, 0.5, 0.0]))
    assert torch.isnan(matrix[1]).all()  # task 1 absent: unknown, not zero
    with pytest.raises(IndexError):
        usage_matrix(torch.tensor([3]), per_example[:1], num_tasks=3)
