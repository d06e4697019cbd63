"""The optimised final pass over open (domain, row) pairs (robustkit.verification.final_pass).

* Flat == batched: with no steps, each pair's bound is the batched pass's bound of its domain and
  row (float error model included); pairs outside the mask are ``-inf`` and keep their parameters.
* With every pair kept, the flat Adam reaches the bounds of torch's Adam on the batched layout.
* A pair leaving the batch keeps its best parameters and takes no further steps.
* Bounds stay below the true minimum over each split domain's sampled points.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robustkit.bounds.beta_crown import spec_backward
from robustkit.bounds.crown import crown_bounds, pre_bounds
from robustkit.bounds.interval import interval_bounds
from robustkit.verification.final_pass import optimise_pairs
from test_bab import _random_net  # the random ReLU nets of the BaB tests


def _setup(seed: int, n: int = 3):
    """``n`` domains of one box: the root's bounds with a different unstable neuron of the last
    hidden layer split in each (inactive for even domains, active for odd)."""
    net = _random_net(seed, (5, 16, 16, 4))
    x0 = np.random.default_rng(seed + 7).uniform(-1, 1, size=net.in_dim)
    lo = torch.from_numpy(x0 - 0.4).reshape(1, -1)
    hi = torch.from_numpy(x0 + 0.4).reshape(1, -1)
    nb, _ = crown_bounds(net, lo, hi)
    errs = interval_bounds(net, lo, hi).float_errors(net)
    r = net.split_indices[-1]
    pre1 = pre_bounds(net, nb)
    pts = torch.from_numpy(np.random.default_rng(seed).uniform(x0 - 0.4, x0 + 0.4, size=(4000, net.in_dim)))
    with torch.no_grad():
        z = net.forward_all(pts)[r - 1]
    # neurons some points put on each side: every split domain below holds points
    unstable = torch.nonzero((z.min(dim=0).values < 0) & (z.max(dim=0).values > 0)).flatten()
    assert unstable.numel() >= n
    pre = {q: (l.expand(n, -1).clone(), u.expand(n, -1).clone()) for q, (l, u) in pre1.items()}
    split = {r: torch.zeros(n, pre[r][0].shape[1], dtype=torch.float64)}
    for i in range(n):
        j = int(unstable[i])
        if i % 2 == 0:
            pre[r][1][i, j] = 0.0
            split[r][i, j] = -1.0
        else:
            pre[r][0][i, j] = 0.0
            split[r][i, j] = 1.0
    C = torch.stack([torch.eye(4, dtype=torch.float64)[0] - torch.eye(4, dtype=torch.float64)[j] for j in (1, 2, 3)])
    k = C.shape[0]
    alphas0 = {q: (u >= -l).unsqueeze(1).expand(-1, k, -1).float() for q, (l, u) in pre.items()}
    betas0 = {r: torch.zeros(n, k, split[r].shape[1])}
    return net, lo, hi, pre, split, C, alphas0, betas0, errs, r, unstable[:n]


def _run(setup, pairs, still_open, steps: int, dtype=torch.float64):
    net, lo, hi, pre, split, C, alphas0, betas0, errs, *_ = setup
    net_o = net if dtype == torch.float64 else net.to_torch().to(torch.float32).net
    return optimise_pairs(net, net_o, C, lo, hi, pre, alphas0, betas0, split, pairs, still_open, steps, 0.5, dtype,
                          float("inf"), errs)


@pytest.mark.parametrize("seed", range(3))
def test_flat_pairs_equal_the_batched_pass(seed: int) -> None:
    s = _setup(seed)
    net, lo, hi, pre, split, C, alphas0, betas0, errs, *_ = s
    n, k = 3, C.shape[0]
    pairs = torch.tensor([[True, False, True], [True, True, True], [False, False, True]])
    lb, a, b, taken = _run(s, pairs, lambda v: torch.ones(n, k, dtype=torch.bool), 0)
    assert taken == 0
    Cb = C.unsqueeze(0).expand(n, -1, -1)
    a64 = {q: t.double() for q, t in alphas0.items()}
    b64 = {q: t.double() for q, t in betas0.items()}
    ref, _, _ = spec_backward(net, Cb, lo.expand(n, -1), hi.expand(n, -1), pre, a64, b64, split, errs)
    ref = ref - errs.spec_slack(Cb, b64)
    torch.testing.assert_close(lb[pairs], ref[pairs], rtol=0, atol=1e-12)
    assert bool(torch.isneginf(lb[~pairs]).all())
    for q in alphas0:
        torch.testing.assert_close(a[q], alphas0[q])  # the start was the best seen: nothing moved


@pytest.mark.parametrize("seed", range(3))
def test_flat_adam_matches_torch_adam_on_the_batched_layout(seed: int) -> None:
    s = _setup(seed)
    net, lo, hi, pre, split, C, alphas0, betas0, errs, *_ = s
    n, k, steps = 3, C.shape[0], 8
    lb, _, _, taken = _run(s, torch.ones(n, k, dtype=torch.bool), lambda v: torch.ones(n, k, dtype=torch.bool), steps)
    assert taken == steps
    # reference: torch's Adam on (n, k, d) slopes and multipliers, the best per row kept
    Cb = C.unsqueeze(0).expand(n, -1, -1)
    a = {q: t.double().clone().requires_grad_(True) for q, t in alphas0.items()}
    b = {q: t.double().clone().requires_grad_(True) for q, t in betas0.items()}
    opt = torch.optim.Adam(list(a.values()) + list(b.values()), lr=0.5)
    best = torch.full((n, k), -torch.inf, dtype=torch.float64)
    best_a = {q: t.detach().clone() for q, t in a.items()}
    best_b = {q: t.detach().clone() for q, t in b.items()}
    for it in range(steps + 1):
        bound, _, _ = spec_backward(net, Cb, lo.expand(n, -1), hi.expand(n, -1), pre, a, b, split)
        with torch.no_grad():
            better = bound > best
            best = torch.where(better, bound, best)
            for q in a:
                best_a[q] = torch.where(better.unsqueeze(-1), a[q], best_a[q])
            for q in b:
                best_b[q] = torch.where(better.unsqueeze(-1), b[q], best_b[q])
        if it == steps:
            break
        opt.zero_grad()
        (-bound.sum()).backward()
        opt.step()
        with torch.no_grad():
            for t in a.values():
                t.clamp_(0.0, 1.0)
            for t in b.values():
                t.clamp_(min=0.0)
    ref, _, _ = spec_backward(net, Cb, lo.expand(n, -1), hi.expand(n, -1), pre, best_a, best_b, split, errs)
    ref = ref - errs.spec_slack(Cb, best_b)
    torch.testing.assert_close(lb, ref, rtol=0, atol=1e-6)
    flat0, _, _, _ = _run(s, torch.ones(n, k, dtype=torch.bool), lambda v: torch.ones(n, k, dtype=torch.bool), 0)
    assert float((lb - flat0).max()) > 0, "the steps gained nothing"


def test_a_pair_that_leaves_keeps_its_best_parameters() -> None:
    s = _setup(0)
    *_, alphas0, betas0, errs, r, unstable = s
    n, k = 3, 3
    pairs = torch.ones(n, k, dtype=torch.bool)
    gone = torch.zeros(n, k, dtype=torch.bool)
    gone[1, 2] = True  # leaves after the first evaluation, before any step
    lb, a, b, taken = _run(s, pairs, lambda v: ~gone, 6)
    assert taken == 6
    for q in alphas0:
        torch.testing.assert_close(a[q][1, 2], alphas0[q][1, 2].float())
        assert not torch.equal(a[q][~gone], alphas0[q][~gone].float()) or q != r
    torch.testing.assert_close(b[r][1, 2], betas0[r][1, 2])
    # every pair leaving at once: no step at all
    _, _, _, none = _run(s, pairs, lambda v: torch.zeros(n, k, dtype=torch.bool), 6)
    assert none == 0


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_optimised_bounds_hold_on_each_domains_points(seed: int, dtype: torch.dtype) -> None:
    s = _setup(seed)
    net, lo, hi, pre, split, C, *_rest = s
    r, unstable = s[-2], s[-1]
    lb, _, _, _ = _run(s, torch.ones(3, 3, dtype=torch.bool), lambda v: torch.ones(3, 3, dtype=torch.bool), 20, dtype)
    rng = np.random.default_rng(seed)
    l, h = lo.numpy()[0], hi.numpy()[0]
    pts = np.concatenate([rng.uniform(l, h, size=(20000, l.size)), np.where(rng.random((5000, l.size)) < 0.5, l, h)])
    pts_t = torch.from_numpy(pts)
    with torch.no_grad():
        z = net.forward_all(pts_t)[r - 1]
        y = net.forward(pts_t) @ C.T
    checked = 0
    for i in range(3):
        side = z[:, int(unstable[i])] <= 0 if i % 2 == 0 else z[:, int(unstable[i])] >= 0
        if bool(side.any()):  # a split side no point reaches is empty: any bound holds there
            assert bool((lb[i] <= y[side].min(dim=0).values + 1e-9).all()), (i, lb[i])
            checked += 1
    assert checked == 3


def test_adam_step_matches_torch_adam_with_a_decaying_rate() -> None:
    """The written-out step (alpha-CROWN's and the final pass's) is torch's Adam, learning rate
    schedule included (``ExponentialLR``)."""
    from robustkit.bounds.adam import adam_step

    gen = torch.Generator().manual_seed(3)
    p0 = torch.rand(4, 7, generator=gen, dtype=torch.float64)
    target = torch.rand(4, 7, generator=gen, dtype=torch.float64)
    ref = p0.clone().requires_grad_(True)
    opt = torch.optim.Adam([ref], lr=0.1)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, 0.9)
    p, m1, m2 = p0.clone(), torch.zeros_like(p0), torch.zeros_like(p0)
    for it in range(12):
        opt.zero_grad()
        ((ref - target) ** 3).sum().backward()
        opt.step()
        sched.step()
        g = 3 * (p - target) ** 2
        p = adam_step(p, g, m1, m2, it + 1, 0.1 * 0.9**it)
    torch.testing.assert_close(p, ref.detach(), rtol=1e-12, atol=1e-12)
