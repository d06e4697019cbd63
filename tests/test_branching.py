"""Branching of branch and bound (robustkit.verification.branching) on hand-made bounds."""

from __future__ import annotations

import torch

from robustkit.network import Dense, Network, ReLU
from robustkit.verification.branching import child_bounds, choose, intercept_scores


def _net() -> Network:
    """2 -> 3 -> ReLU -> 2 -> ReLU -> 1: ReLUs at positions 1 and 3."""
    g = torch.Generator().manual_seed(0)
    layers = (Dense(torch.randn(3, 2, generator=g, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)),
              ReLU(3),
              Dense(torch.randn(2, 3, generator=g, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)),
              ReLU(2),
              Dense(torch.randn(1, 2, generator=g, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)))
    return Network(layers, (2,), (1, 2))


def _bounds() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Two domains. Layer 0 (3 neurons): stable active, unstable [-1, 3], stable inactive in
    domain 0; unstable [-2, 2] twice in domain 1. Layer 2 (2 neurons): unstable [-4, 1] and
    stable in both."""
    lower = [torch.tensor([[0.5, -1.0, -3.0], [-2.0, -2.0, 1.0]], dtype=torch.float64), None,
             torch.tensor([[-4.0, 0.1], [-4.0, 0.1]], dtype=torch.float64), None, None]
    upper = [torch.tensor([[2.0, 3.0, -0.5], [2.0, 2.0, 2.0]], dtype=torch.float64), None,
             torch.tensor([[1.0, 0.2], [1.0, 0.2]], dtype=torch.float64), None, None]
    lower[1], upper[1] = lower[0].clamp(min=0), upper[0].clamp(min=0)
    lower[3], upper[3] = lower[2].clamp(min=0), upper[2].clamp(min=0)
    lower[4], upper[4] = torch.zeros(2, 1, dtype=torch.float64), torch.ones(2, 1, dtype=torch.float64)
    return lower, upper


def test_intercept_scores_follow_the_babsr_formula() -> None:
    net = _net()
    lower, upper = _bounds()
    # one row; coefficients on ReLU outputs: negative ones cost intercept * |A|
    coeffs = {1: torch.tensor([[[-1.0, -2.0, -1.0]], [[-1.0, 0.0, 1.0]]], dtype=torch.float64),
              3: torch.tensor([[[-0.5, 1.0]], [[-0.5, 1.0]]], dtype=torch.float64)}
    open_rows = torch.ones(2, 1, dtype=torch.float64)
    score, relu_of, neuron_of = intercept_scores(net, [1, 3], lower, upper, coeffs, open_rows)
    assert relu_of.tolist() == [1, 1, 1, 3, 3] and neuron_of.tolist() == [0, 1, 2, 0, 1]
    # domain 0: neuron (1, 1): intercept 1*3/4 = 0.75, |A| = 2 -> 1.5; (3, 0): 4/5 * 0.5 = 0.4
    assert score[0, 0] == -1 and score[0, 2] == -1 and score[0, 4] == -1 and score[1, 4] == -1
    assert torch.isclose(score[0, 1], torch.tensor(1.5, dtype=torch.float64), rtol=1e-9)
    assert torch.isclose(score[0, 3], torch.tensor(0.4, dtype=torch.float64), rtol=1e-9)
    # domain 1: (1, 1) has coefficient 0 on the row: still above every stable neuron, below a real score
    assert 0 <= score[1, 1] < 1e-9 and score[1, 1] > score[1, 2]
    assert torch.isclose(score[1, 0], torch.tensor(1.0, dtype=torch.float64), rtol=1e-9)
    # a closed row counts for nothing; weights scale a layer
    closed = intercept_scores(net, [1, 3], lower, upper, coeffs, torch.zeros(2, 1, dtype=torch.float64))[0]
    assert bool((closed[closed >= 0] < 1e-9).all())
    weighted = intercept_scores(net, [1, 3], lower, upper, coeffs, open_rows, {1: 1.0, 3: 10.0})[0]
    assert torch.isclose(weighted[0, 3], torch.tensor(4.0, dtype=torch.float64), rtol=1e-9)
    assert torch.equal(weighted[:, :3], score[:, :3])


def test_child_bounds_clamp_the_split_neuron_only() -> None:
    net = _net()
    lower, upper = _bounds()
    lo, hi = -torch.ones(1, 2, dtype=torch.float64), torch.ones(1, 2, dtype=torch.float64)
    pre = child_bounds(net, lo, hi, lower, upper, torch.tensor([1, 3]), torch.tensor([1, 0]))
    l1, u1 = pre[1]
    l3, u3 = pre[3]
    assert l1.shape == (4, 3) and l3.shape == (4, 2)
    # domain 0 splits (1, 1): inactive child (row 0) u = 0, active child (row 2) l = 0
    assert float(u1[0, 1]) == 0.0 and float(l1[2, 1]) == 0.0
    assert float(l1[0, 1]) == -1.0 and float(u1[2, 1]) == 3.0
    # domain 1 splits (3, 0): rows 1 and 3
    assert float(u3[1, 0]) == 0.0 and float(l3[3, 0]) == 0.0
    # everything else is the parent's
    for r, (lp, up) in ((1, (lower[0], upper[0])), (3, (lower[2], upper[2]))):
        l, u = pre[r]
        changed = (l != lp.repeat(2, 1)) | (u != up.repeat(2, 1))
        assert int(changed.sum()) == 2, r
    # the parents are left as they were
    assert float(upper[0][0, 1]) == 3.0 and float(lower[2][1, 0]) == -4.0


def test_choose_filters_candidates_by_the_worse_child() -> None:
    score = torch.tensor([[3.0, 2.0, 1.0, -1.0], [-1.0, -1.0, -1.0, -1.0], [0.5, 2.0, -1.0, 1.0]], dtype=torch.float64)
    relu_of = torch.tensor([1, 1, 3, 3])
    neuron_of = torch.tensor([0, 1, 0, 1])
    relu, neuron, pick = choose(score, relu_of, neuron_of, 1)
    assert relu.tolist() == [1, -1, 1] and neuron.tolist() == [0, 0, 1] and pick.tolist() == [0, 0, 0]
    seen = {}

    def worst(top_i: torch.Tensor) -> torch.Tensor:
        seen["top"] = top_i.clone()
        # the second candidate's worse child is best in row 0; in row 2 the third (score 0.5 >= 0)
        return torch.tensor([[5.0, 1.0, 3.0], [0.0, 0.0, 0.0], [4.0, 3.0, 2.0]], dtype=torch.float64)

    relu, neuron, pick = choose(score, relu_of, neuron_of, 3, worst)
    assert seen["top"].tolist()[0] == [0, 1, 2] and seen["top"].tolist()[2] == [1, 3, 0]
    assert pick.tolist()[0] == 1 and (int(relu[0]), int(neuron[0])) == (1, 1)
    assert pick.tolist()[2] == 2 and (int(relu[2]), int(neuron[2])) == (1, 0)
    assert int(relu[1]) == -1  # nothing unstable: no split, whatever the filter says
    # a candidate with a negative score (a stable neuron) is never picked, however good its child
    score2 = torch.tensor([[1.0, -1.0]], dtype=torch.float64)
    relu, neuron, pick = choose(score2, torch.tensor([1, 3]), torch.tensor([0, 0]), 2,
                                lambda top_i: torch.tensor([[9.0, -9.0]], dtype=torch.float64))
    assert pick.tolist() == [0] and relu.tolist() == [1]
