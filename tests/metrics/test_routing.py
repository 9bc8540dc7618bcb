"""Routing diagnostics on collapsed, uniform and hand-made routers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hycam_pl.metrics import expert_load, load_entropy, router_entropy, task_expert_nmi, usage_matrix

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


def _nmi_from_labels(tasks: list[int], experts: list[int]) -> float:
    """The definition on per-token labels, with scipy's entropies: I(T; E) / min(H(T), H(E))."""
    import numpy as np
    from scipy.stats import entropy
    from scipy.stats.contingency import crosstab

    joint = crosstab(tasks, experts).count.astype(float).ravel()
    h_task = entropy(np.unique(tasks, return_counts=True)[1])
    h_expert = entropy(np.unique(experts, return_counts=True)[1])
    return (h_task + h_expert - entropy(joint)) / min(h_task, h_expert)


def test_task_expert_nmi_is_0_for_task_independent_and_1_for_task_own_routing():
    # every task spreads its tokens over the experts in the same proportions: the expert says nothing
    independent = torch.tensor([10.0, 20.0, 30.0]).unsqueeze(1) * torch.tensor([0.1, 0.2, 0.3, 0.4])
    assert float(task_expert_nmi(independent)) == pytest.approx(0.0, abs=1e-12)
    # each task sends all its tokens (any number) to an expert of its own
    own = torch.tensor([[7.0, 0, 0, 0], [0, 0, 3.0, 0], [0, 11.0, 0, 0]])
    assert float(task_expert_nmi(own)) == pytest.approx(1.0, abs=1e-12)
    # more tasks than experts, each task on one expert; more experts than tasks, none shared: also 1
    assert float(task_expert_nmi(torch.tensor([[5.0, 0], [2.0, 0], [0, 4.0]]))) == pytest.approx(1.0)
    assert float(task_expert_nmi(torch.tensor([[5.0, 1.0, 0, 0], [0, 0, 2.0, 4.0]]))) == pytest.approx(1.0)
    # per layer: a leading axis is kept
    both = task_expert_nmi(torch.stack([independent, own]))
    assert both.shape == (2,) and both.tolist() == pytest.approx([0.0, 1.0], abs=1e-12)


def test_task_expert_nmi_matches_the_definition_on_token_labels():
    generator = torch.Generator().manual_seed(0)
    tasks = torch.randint(0, 3, (500,), generator=generator)
    # experts that follow the task two times in three
    experts = torch.where(
        torch.rand(500, generator=generator) < 2 / 3, tasks, torch.randint(0, 4, (500,), generator=generator)
    )
    joint = torch.zeros(3, 4).index_put_((tasks, experts), torch.ones(500), accumulate=True)
    expected = _nmi_from_labels(tasks.tolist(), experts.tolist())
    assert 0.1 < expected < 0.9
    assert float(task_expert_nmi(joint)) == pytest.approx(expected, rel=1e-9)
    assert float(task_expert_nmi(joint * 0.37)) == pytest.approx(expected, rel=1e-6)  # counts or shares


def test_task_expert_nmi_of_a_collapsed_router_is_0_and_of_one_task_undefined():
    assert float(task_expert_nmi(torch.tensor([[4.0, 0], [6.0, 0]]))) == 0.0  # H(expert) = 0
    assert math.isnan(float(task_expert_nmi(torch.tensor([[4.0, 2.0], [0, 0]]))))  # one task seen
    assert math.isnan(float(task_expert_nmi(torch.zeros(2, 3))))  # nothing routed
