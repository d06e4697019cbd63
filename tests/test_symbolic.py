"""Forward symbolic bounds (:mod:`robustkit.bounds.symbolic`) and what input splitting does with
them (:mod:`robustkit.verification.box_tools`): every bound holds at dense samples and at the
boxes' corners, in float64 and in float32, a shrunk box keeps every point that can violate, and
the gradient search's points stay in their boxes."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from robustkit.bounds.crown import crown_bounds
from robustkit.bounds.symbolic import concretize, dense_maps, symbolic_bounds
from robustkit.network import Dense, Network, ReLU
from robustkit.verification.box_tools import gradient_search, shrink_boxes
from robustkit.verification.domains import disjunct_rows, violation_measure
from robustkit.verification.input_split import InputSplitConfig, _Boxes, _InputSearch


def _net(seed: int, sizes: tuple[int, ...]) -> Network:
    rng = np.random.default_rng(seed)
    layers: list = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(Dense(torch.from_numpy((rng.normal(size=(b, a)) / np.sqrt(a)).astype(np.float32)),
                            torch.from_numpy((rng.normal(size=b) * 0.3).astype(np.float32))))
        if i < len(sizes) - 2:
            layers.append(ReLU(b))
    return Network(tuple(layers), (sizes[0],), (1, sizes[0]))


def _boxes(seed: int, n: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    center = rng.uniform(-1, 1, size=(count, n))
    half = rng.uniform(0.02, 0.6, size=(count, n))
    return torch.from_numpy(center - half), torch.from_numpy(center + half)


def _points(lo: torch.Tensor, hi: torch.Tensor, samples: int, seed: int) -> torch.Tensor:
    """``(B, samples + 2**n, n)``: uniform samples and every corner of each box."""
    B, n = lo.shape
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(B, samples, n, generator=gen, dtype=torch.float64)
    inner = (lo.unsqueeze(1) + u * (hi - lo).unsqueeze(1)).clamp(lo.unsqueeze(1), hi.unsqueeze(1))
    up = torch.tensor(list(itertools.product((False, True), repeat=n))).unsqueeze(0)  # (1, 2**n, n)
    corners = torch.where(up, hi.unsqueeze(1), lo.unsqueeze(1))  # exactly the box's corners
    return torch.cat([inner, corners], dim=1)


def _root_errors(net: Network, lo: torch.Tensor, hi: torch.Tensor):  # type: ignore[no-untyped-def]
    root, _ = crown_bounds(net, lo.min(dim=0, keepdim=True).values, hi.max(dim=0, keepdim=True).values)
    return root.float_errors(net)


def _assert_inside(net: Network, sb, lo: torch.Tensor, hi: torch.Tensor, seed: int) -> None:  # type: ignore[no-untyped-def]
    B, n = lo.shape
    x = _points(lo, hi, 3000, seed)
    for dtype in (torch.float64, torch.float32):
        h = x.reshape(-1, n).to(dtype)
        for i, layer in enumerate(net.layers):
            h = layer.forward(h)
            v = h.double().reshape(B, -1, h.shape[1])
            assert bool((v >= sb.lower[i].unsqueeze(1)).all()), (i, dtype)
            assert bool((v <= sb.upper[i].unsqueeze(1)).all()), (i, dtype)
    # the output's forward functions hold at every point too: L(x) <= y(x) <= U(x)
    y = net.forward(x.reshape(-1, n)).reshape(B, -1, net.out_dim)
    xs = torch.cat([x, torch.ones(B, x.shape[1], 1, dtype=torch.float64)], dim=2)
    low, up = torch.matmul(xs, sb.mid - sb.rad), torch.matmul(xs, sb.mid + sb.rad)
    assert bool((low <= y + 1e-9).all()) and bool((y <= up + 1e-9).all())


@pytest.mark.parametrize("seed,window", [(0, 0), (1, 0), (2, 0), (0, 2), (1, 9), (2, 9)])
def test_symbolic_bounds_hold_at_samples_and_corners(seed: int, window: int) -> None:
    net = _net(seed, (3, 24, 24, 24, 4))
    lo, hi = _boxes(seed, 3, 24)
    errs = _root_errors(net, lo, hi)
    sb = symbolic_bounds(net, dense_maps(net), lo, hi, errs, window=window)  # type: ignore[arg-type]
    _assert_inside(net, sb, lo, hi, seed)
    assert int(sb.unstable.sum()) > 0  # the boxes are wide enough to leave ReLUs undecided
    for r, (l, u) in sb.pre.items():
        assert torch.equal(l, lo if r == 0 else sb.lower[r - 1]) and torch.equal(u, hi if r == 0 else sb.upper[r - 1])


def test_window_passes_tighten_and_known_bounds_are_met() -> None:
    net = _net(5, (4, 30, 30, 30, 30, 3))
    lo, hi = _boxes(5, 4, 32)
    errs = _root_errors(net, lo, hi)
    maps = dense_maps(net)
    assert maps is not None
    plain = symbolic_bounds(net, maps, lo, hi, errs)
    full = symbolic_bounds(net, maps, lo, hi, errs, window=len(net.layers))
    crown, _ = crown_bounds(net, lo, hi)
    last = len(net.layers) - 2  # the last hidden linear layer
    width = {k: float((b.upper[last] - b.lower[last]).mean()) for k, b in (("plain", plain), ("full", full),
                                                                          ("crown", crown))}
    assert width["full"] < width["plain"], width  # back-substitution keeps the cancellation
    assert width["full"] <= width["crown"] * 1.05, width
    _assert_inside(net, full, lo, hi, 6)
    # bounds known for these boxes (here: the full pass's) are intersected in
    known = {i: (full.lower[i], full.upper[i]) for i in range(len(net.layers) - 1)}
    met = symbolic_bounds(net, maps, lo, hi, errs, known)
    for i in range(len(net.layers) - 1):
        assert bool((met.lower[i] >= full.lower[i]).all()) and bool((met.upper[i] <= full.upper[i]).all())
    _assert_inside(net, met, lo, hi, 7)


def test_concretize_is_the_exact_extreme_of_an_affine_function() -> None:
    gen = torch.Generator().manual_seed(0)
    f = torch.randn(5, 4, 7, generator=gen, dtype=torch.float64)  # 3 inputs + constant, 7 functions
    lo, hi = _boxes(1, 3, 5)
    low, up = concretize(f, (lo + hi) / 2, (hi - lo) / 2)
    x = _points(lo, hi, 0, 0)  # the corners: an affine function's extremes are at corners
    xs = torch.cat([x, torch.ones(5, x.shape[1], 1, dtype=torch.float64)], dim=2)
    vals = torch.matmul(xs, f)
    assert torch.allclose(vals.min(dim=1).values, low) and torch.allclose(vals.max(dim=1).values, up)


def _search(net: Network, lo: np.ndarray, hi: np.ndarray, C: np.ndarray, d: np.ndarray, owner: np.ndarray,
            **cfg: object) -> _InputSearch:
    lo_t, hi_t = torch.from_numpy(lo)[None], torch.from_numpy(hi)[None]
    root, _ = crown_bounds(net, lo_t, hi_t)
    return _InputSearch(net, lo_t, hi_t, C, d, owner, 1e-4, InputSplitConfig(**cfg), lambda x: None,  # type: ignore[arg-type]
                        float("inf"), root)


@pytest.mark.parametrize("seed", range(4))
def test_shrunk_boxes_keep_every_point_that_can_violate(seed: int) -> None:
    """Bound sub-boxes of a property with one-row and two-row disjuncts, shrink them, and check
    that every sampled point violating (in the float64 net) lies in its shrunk box, and that
    the shrinking cut something away."""
    net = _net(seed, (3, 16, 16, 3))
    rng = np.random.default_rng(seed)
    lo0, hi0 = -np.ones(3), np.ones(3)
    pts = torch.from_numpy(rng.uniform(lo0, hi0, size=(4000, 3)))
    y = net.forward(pts)
    # disjunct 0: y0 - y1 <= t0; disjunct 1: y2 <= t1 and -y0 <= t2 (thresholds at sample quantiles)
    C = np.array([[1.0, -1.0, 0.0], [0.0, 0.0, 1.0], [-1.0, 0.0, 0.0]])
    vals = (y @ torch.from_numpy(C).T).numpy()
    d = np.array([np.quantile(vals[:, 0], 0.05), np.quantile(vals[:, 1], 0.3), np.quantile(vals[:, 2], 0.5)])
    owner = np.array([0, 1, 1])
    search = _search(net, lo0, hi0, C, d, owner, bounds="symbolic")
    lo, hi = _boxes(seed + 10, 3, 64)
    lo, hi = lo.clamp(-1, 1), hi.clamp(-1, 1)
    boxes = _Boxes(lo, hi, torch.zeros(64, dtype=torch.long))
    b = search.bound(boxes)
    # the rows and the combined row of the two-row disjunct (the search's own shrinking)
    new_lo, new_hi, alive = shrink_boxes(lo, hi, b.A, b.lb, search.d_rows, search.rows, 1e-4, b.slack)
    assert bool((new_lo >= lo).all()) and bool((new_hi <= hi).all())
    x = _points(lo, hi, 2000, seed)
    yx = net.forward(x.reshape(-1, 3)).reshape(64, -1, 3)
    measure = violation_measure((search.d - yx @ search.C.T).reshape(-1, 3), search.groups).reshape(64, -1)
    violating = measure >= 0
    inside = ((x >= new_lo.unsqueeze(1)) & (x <= new_hi.unsqueeze(1))).all(dim=2) & alive.unsqueeze(1)
    assert int(violating.sum()) > 100
    assert bool(inside[violating].all())
    cut = ((new_lo > lo) | (new_hi < hi)).any(dim=1) | ~alive
    assert int(cut.sum()) > 5, int(cut.sum())


def test_shrinking_drops_a_box_only_when_no_row_group_can_hold() -> None:
    lo, hi = torch.zeros(2, 2, dtype=torch.float64), torch.ones(2, 2, dtype=torch.float64)
    A = torch.tensor([[[1.0, 0.0]], [[1.0, 1.0]]], dtype=torch.float64)  # one row: C y >= a.x + lb
    lb = torch.tensor([[0.0], [0.0]], dtype=torch.float64)
    d = torch.tensor([0.5], dtype=torch.float64)
    groups = disjunct_rows(np.array([0]))
    new_lo, new_hi, alive = shrink_boxes(lo, hi, A, lb, d, groups, 0.0, torch.zeros(1, 1, dtype=torch.float64))
    assert bool(alive.all())
    assert abs(float(new_hi[0, 0]) - 0.5) < 1e-12 and float(new_hi[0, 1]) == 1.0  # x0 <= 0.5, x1 free
    assert abs(float(new_hi[1, 0]) - 0.5) < 1e-12 and abs(float(new_hi[1, 1]) - 0.5) < 1e-12
    assert bool((new_hi[0] >= 0.5).all())  # outward: never below the exact cut
    _, _, alive = shrink_boxes(lo, hi, A, lb + 0.6, d, groups, 0.0, torch.zeros(1, 1, dtype=torch.float64))
    assert not bool(alive.any())


def test_gradient_search_stays_in_its_boxes_and_climbs() -> None:
    net = _net(3, (2, 20, 20, 2))
    module = net.to_torch().float()
    lo, hi = _boxes(3, 2, 16)
    C = torch.tensor([[1.0, -1.0]], dtype=torch.float64)
    d = torch.tensor([-50.0], dtype=torch.float64)  # never met: the search only climbs
    groups = disjunct_rows(np.array([0]))
    starts = (lo + hi) / 2
    x, value = gradient_search(module, lo, hi, starts, C, d, groups, steps=10)
    assert bool((x >= lo).all()) and bool((x <= hi).all())
    start_value = violation_measure(d.float() - module(starts.float()) @ C.float().T, groups)
    assert bool((value >= start_value - 1e-6).all()) and bool((value > start_value + 1e-6).any())
