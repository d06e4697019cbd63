"""What input splitting carries from box to box (issue 36): the float error model of each box
(tracked through the symbolic pass), the parent's affine bounds minimised over a child
(:func:`relinearize`), the look-ahead's children bounds, the combined rows of multi-row
disjuncts, the corners handed to the witness check, and the parts of one instance searched on
several cores. Every bound is checked at dense samples and corners, in float32 and float64."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest
import torch

from robustkit.bounds.crown import crown_bounds
from robustkit.bounds.symbolic import dense_maps, relinearize, symbolic_bounds
from robustkit.network import Dense, Network, ReLU
from robustkit.spec import InputBox, LinearConstraints, OutputSpec, Specification
from robustkit.verification.box_tools import combine_weights
from robustkit.verification.domains import disjunct_rows, violation_measure
from robustkit.verification.input_split import InputSplitConfig, _Boxes, _InputSearch, input_split
from robustkit.vnnlib.instance import combine_parts, spec_part


def _net(seed: int, sizes: tuple[int, ...], scale: float = 1.0) -> Network:
    rng = np.random.default_rng(seed)
    layers: list = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(Dense(torch.from_numpy((rng.normal(size=(b, a)) * scale / np.sqrt(a)).astype(np.float32)),
                            torch.from_numpy((rng.normal(size=b) * 0.3 * scale).astype(np.float32))))
        if i < len(sizes) - 2:
            layers.append(ReLU(b))
    return Network(tuple(layers), (sizes[0],), (1, sizes[0]))


def _points(lo: torch.Tensor, hi: torch.Tensor, samples: int, seed: int) -> torch.Tensor:
    """``(B, samples + 2**n, n)``: uniform samples and every corner of each box."""
    B, n = lo.shape
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(B, samples, n, generator=gen, dtype=torch.float64)
    inner = lo.unsqueeze(1) + u * (hi - lo).unsqueeze(1)
    up = torch.tensor(list(itertools.product((False, True), repeat=n))).unsqueeze(0)
    return torch.cat([inner.clamp(lo.unsqueeze(1), hi.unsqueeze(1)), torch.where(up, hi.unsqueeze(1), lo.unsqueeze(1))],
                     dim=1)


def _assert_layers_inside(net: Network, lower: list[torch.Tensor], upper: list[torch.Tensor], x: torch.Tensor,
                          layers: list[int] | None = None) -> None:
    """Every layer's value at the points ``x`` (``(B, P, n)``), float64 and float32, is inside
    ``[lower[i], upper[i]]`` (``(B, d_i)``)."""
    B, P, n = x.shape
    for dtype in (torch.float64, torch.float32):
        h = x.reshape(-1, n).to(dtype)
        for i, layer in enumerate(net.layers):
            h = layer.forward(h)
            if layers is not None and i not in layers:
                continue
            v = h.double().reshape(B, P, -1)
            assert bool((v >= lower[i].unsqueeze(1)).all()), (i, dtype, float((lower[i].unsqueeze(1) - v).max()))
            assert bool((v <= upper[i].unsqueeze(1)).all()), (i, dtype, float((v - upper[i].unsqueeze(1)).max()))


@pytest.mark.parametrize("seed", range(3))
def test_tracked_errors_hold_on_points_and_shrink_with_the_box(seed: int) -> None:
    """Degenerate boxes (``lo == hi``) leave the bounds nothing but the float error charge: the
    float32 network's values at those points must still be inside, with each box's own error
    model (which must be no larger than the root box's, and smaller for boxes away from the
    root's largest values)."""
    net = _net(seed, (3, 40, 40, 40, 4), scale=3.0)
    lo0, hi0 = -torch.ones(1, 3, dtype=torch.float64) * 4, torch.ones(1, 3, dtype=torch.float64) * 4
    root, _ = crown_bounds(net, lo0, hi0)
    errs = root.float_errors(net)
    x = torch.from_numpy(np.random.default_rng(seed).uniform(-0.5, 0.5, size=(64, 3)))
    x32 = x.float().double()  # points the float32 network can be fed exactly
    for width in (0.0, 1e-3):
        lo, hi = x32 - width, x32 + width
        sb = symbolic_bounds(net, dense_maps(net), lo, hi, errs, window=len(net.layers), track=True)  # type: ignore[arg-type]
        _assert_layers_inside(net, sb.lower, sb.upper, _points(lo, hi, 50 if width else 0, seed))
        for i in range(len(net.layers)):
            assert bool((sb.errs.rounding[i] <= errs.rounding[i]).all())
        last = len(net.layers) - 1
        assert float(sb.errs.rounding[last].max()) < 0.5 * float(errs.rounding[last].max())
        assert bool((sb.errs.spec_slack(torch.eye(4, dtype=torch.float64).unsqueeze(0).expand(64, -1, -1))
                     <= errs.spec_slack(torch.eye(4, dtype=torch.float64).unsqueeze(0))).all())


@pytest.mark.parametrize("seed", range(3))
def test_parent_affine_bounds_hold_on_its_parts(seed: int) -> None:
    """The affine bounds a parent box's pass returns (:attr:`SymbolicBounds.lin`), minimised over
    sub-boxes (:func:`relinearize`), hold at dense samples and corners of the sub-boxes, and
    tighten the parent's concrete bounds there."""
    net = _net(seed, (3, 30, 30, 30, 3))
    rng = np.random.default_rng(seed)
    center = torch.from_numpy(rng.uniform(-1, 1, size=(16, 3)))
    half = torch.from_numpy(rng.uniform(0.2, 0.6, size=(16, 3)))
    lo, hi = center - half, center + half
    root, _ = crown_bounds(net, lo.min(dim=0, keepdim=True).values, hi.max(dim=0, keepdim=True).values)
    parent = symbolic_bounds(net, dense_maps(net), lo, hi, root.float_errors(net), window=len(net.layers),  # type: ignore[arg-type]
                             track=True, linear=True)
    assert parent.lin is not None and set(parent.lin) == {0, 2, 4}
    u = torch.from_numpy(rng.uniform(0, 1, size=(16, 2, 3)))
    a, b = torch.minimum(u[:, 0], u[:, 1]), torch.maximum(u[:, 0], u[:, 1])
    sub_lo, sub_hi = lo + a * (hi - lo) * 0.9, lo + (b * 0.9 + 0.1) * (hi - lo)
    known = {i: (parent.lower[i], parent.upper[i]) for i in parent.lin}
    got = relinearize(parent.lin, sub_lo, sub_hi, known)
    lower = [got.get(i, (parent.lower[i], parent.upper[i]))[0] for i in range(len(net.layers))]
    upper = [got.get(i, (parent.lower[i], parent.upper[i]))[1] for i in range(len(net.layers))]
    _assert_layers_inside(net, lower, upper, _points(sub_lo, sub_hi, 400, seed), layers=sorted(parent.lin))
    for i, (l, h) in got.items():
        assert bool((l >= parent.lower[i]).all()) and bool((h <= parent.upper[i]).all())
    tighter = sum(float((got[i][1] - got[i][0]).mean()) for i in got)
    wider = sum(float((parent.upper[i] - parent.lower[i]).mean()) for i in got)
    assert tighter < 0.9 * wider, (tighter, wider)


def _anti_net(seed: int) -> tuple[Network, float]:
    """A net whose second output is ``c`` minus its first, ``c`` the first output's median on
    ``[-1, 1]^2`` (in float32): ``y0 <= d0`` and ``y1 <= 0`` hold together only where
    ``c <= y0 <= d0``."""
    net = _net(seed, (2, 24, 24, 1))
    y0 = net.forward(torch.from_numpy(np.random.default_rng(seed).uniform(-1, 1, size=(20000, 2))))[:, 0]
    c = float(np.float32(float(y0.median())))
    last = net.layers[-1]
    w, b = last.weight, last.bias
    anti = Dense(torch.cat([w, -w]), torch.cat([b, -b + c]))
    return Network(tuple(net.layers[:-1]) + (anti,), (2,), (1, 2)), c


def _conjunction(d0: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The box ``[-1, 1]^2`` and one disjunct of two rows: ``y0 <= d0`` and ``y1 <= 0``."""
    return -np.ones(2), np.ones(2), np.eye(2), np.array([d0, 0.0]), np.zeros(2, dtype=int)


@pytest.mark.parametrize("seed", range(3))
def test_combined_rows_close_only_boxes_without_violations(seed: int) -> None:
    """A disjunct of two rows is refuted on a box where every point fails one row or the other,
    which neither row shows alone where ``y0`` crosses its threshold; the combined row closes such
    boxes (more than the rows alone), and never a box with a sampled violation."""
    net, c = _anti_net(seed)
    lo_t, hi_t = -torch.ones(1, 2, dtype=torch.float64), torch.ones(1, 2, dtype=torch.float64)
    root, _ = crown_bounds(net, lo_t, hi_t)
    g = torch.linspace(0, 1, 9, dtype=torch.float64)
    corners = torch.stack(torch.meshgrid(g[:-1], g[:-1], indexing="ij"), -1).reshape(-1, 2)
    blo = lo_t + corners * (hi_t - lo_t)
    boxes = _Boxes(blo, blo + (hi_t - lo_t) / 8, torch.zeros(blo.shape[0], dtype=torch.long))
    x = _points(boxes.lo, boxes.hi, 400, seed)
    y = net.forward(x.reshape(-1, 2)).reshape(x.shape[0], x.shape[1], 2)
    for d0, more in ((c + 0.01, False), (c - 0.01, True)):  # violated where c <= y0 <= c + 0.01; nowhere
        _, _, C, d, owner = _conjunction(d0)
        closed = {}
        for flag in (False, True):
            search = _InputSearch(net, lo_t, hi_t, C, d, owner, 1e-4, InputSplitConfig(combine=flag),
                                  lambda x: None, float("inf"), root)
            with torch.no_grad():
                closed[flag] = search.bound(boxes).measure < -1e-4
        assert bool((closed[True] | ~closed[False]).all())  # the combination only adds
        measure = violation_measure((torch.from_numpy(d) - y @ torch.from_numpy(C).T).reshape(-1, 2),
                                    disjunct_rows(owner)).reshape(x.shape[0], -1)
        violated = (measure >= 0).any(dim=1)
        assert not bool((closed[True] & violated).any())
        if more:
            assert int(closed[True].sum()) > int(closed[False].sum()), (int(closed[True].sum()), int(closed[False].sum()))
        else:
            assert int(violated.sum()) > 0


def test_combine_weights_find_the_refuting_combination() -> None:
    """Two rows whose linear bounds each dip below their threshold on one side of the box but
    whose average stays above it: the weights put on both rows find it."""
    A = torch.tensor([[[1.0, 0.0], [-1.0, 0.0]]], dtype=torch.float64)  # rows: x0 + c, -x0 + c
    lb = torch.tensor([[-1.0, -1.0]], dtype=torch.float64)  # min over [-1, 1]^2 of x0 and -x0
    d = torch.tensor([-0.5, -0.5], dtype=torch.float64)  # refuted where the row's value > -0.5
    radius = torch.ones(1, 2, dtype=torch.float64)
    lam = combine_weights(A, lb, d, [torch.tensor([0, 1])], radius)
    assert lam.shape == (1, 1, 2) and abs(float(lam.sum()) - 1.0) < 1e-12
    # (x0 - x0) / 2 = 0 > -0.5 everywhere: only equal weights refute
    assert abs(float(lam[0, 0, 0]) - 0.5) < 0.05, lam


def test_look_ahead_children_keep_bounds_that_hold() -> None:
    """The children the look-ahead bounds in full keep those bounds (no second pass): each
    child's violation bound is above every sampled point's violation."""
    net = _net(4, (3, 20, 20, 3))
    lo, hi = -np.ones(3) * 0.8, np.ones(3) * 0.8
    C = np.array([[1.0, -1.0, 0.0], [1.0, 0.0, -1.0]])
    d = np.array([-0.2, -0.2])
    lo_t, hi_t = torch.from_numpy(lo)[None], torch.from_numpy(hi)[None]
    root, _ = crown_bounds(net, lo_t, hi_t)
    search = _InputSearch(net, lo_t, hi_t, C, d, np.arange(2), 1e-4, InputSplitConfig(lookahead_refined=128),
                          lambda x: None,
                          float("inf"), root)
    boxes = _Boxes(lo_t, hi_t, torch.zeros(1, dtype=torch.long))
    kept = 0
    with torch.no_grad():
        b = search.bound(boxes)
        for _ in range(5):
            halves, _ = search.split(boxes, b)
            if halves.bounded is None:
                b = search.bound(halves)
            else:
                b, kept = halves.bounded, kept + 1
            x = _points(halves.lo, halves.hi, 300, 0)
            y = net.forward(x.reshape(-1, 3)).reshape(x.shape[0], x.shape[1], 3)
            measure = ((torch.from_numpy(d) - y @ torch.from_numpy(C).T).max(dim=2).values)  # one-row disjuncts
            assert bool((measure <= b.measure.unsqueeze(1) + 1e-9).all())
            boxes = halves
    assert kept > 0


def test_every_corner_of_a_low_dimensional_box_is_tried() -> None:
    """With at most ``corners_dim`` inputs each open box's corners go to the witness check (a
    property violated everywhere: every point offered is a candidate)."""
    net = _net(5, (3, 8, 2))
    lo, hi = np.zeros(3), np.ones(3)
    seen: list[np.ndarray] = []
    lo_t, hi_t = torch.from_numpy(lo)[None], torch.from_numpy(hi)[None]
    root, _ = crown_bounds(net, lo_t, hi_t)
    C, d = np.array([[1.0, 0.0]]), np.array([1e6])
    for dim_max, expected in ((6, 8), (2, 0)):
        seen.clear()
        search = _InputSearch(net, lo_t, hi_t, C, d, np.zeros(1, dtype=int), 1e-4,
                              InputSplitConfig(candidates=100, corners_dim=dim_max),
                              lambda x: seen.append(x.copy()), float("inf"), root)
        boxes = _Boxes(lo_t, hi_t, torch.zeros(1, dtype=torch.long))
        with torch.no_grad():
            search.falsify(boxes, search.bound(boxes))
        corners = {tuple(p) for p in seen if np.all((p == 0) | (p == 1))}
        assert len(corners) >= expected and (expected or len(corners) <= 1)


@pytest.mark.parametrize("cfg", [{}, {"keep_parent": False}, {"lookahead_refined": 128}])
def test_input_split_decides_conjunctions_both_ways(cfg: dict) -> None:
    net, c = _anti_net(2)
    lo_t, hi_t = -torch.ones(1, 2, dtype=torch.float64), torch.ones(1, 2, dtype=torch.float64)
    root, _ = crown_bounds(net, lo_t, hi_t)
    for d0, expected in ((c + 1e-3, "sat"), (c - 1e-3, "unsat")):
        lo, hi, C, d, owner = _conjunction(d0)

        def check(x: np.ndarray, C=C, d=d) -> np.ndarray | None:  # type: ignore[no-untyped-def]
            y = net.forward(torch.from_numpy(x[None])).reshape(-1).numpy()
            return x if bool((C @ y <= d).all()) else None

        res = input_split(net, lo, hi, C, d, owner, root, time.perf_counter() + 60, check,
                          cfg=InputSplitConfig(**cfg))
        assert res.status == expected, (d0, res.status, res.stats)
        if expected == "sat":
            assert check(np.asarray(res.witness)) is not None


def test_parts_cover_the_box_and_keep_its_strict_sides() -> None:
    box = InputBox(np.array([0.0, -1.0, 2.0]), np.array([1.0, 3.0, 2.0]), np.array([True, False, False]),
                   np.array([False, True, False]))
    out = OutputSpec((LinearConstraints(np.array([[1.0]]), np.array([0.0])),))
    spec = Specification(((box, out),))
    parts = [spec_part(spec, i, 3) for i in range(3)]
    boxes = [p.regions[0][0] for p in parts]
    assert [float(b.lower[1]) for b in boxes] == [-1.0, pytest.approx(1 / 3), pytest.approx(5 / 3)]
    assert [float(b.upper[1]) for b in boxes] == [pytest.approx(1 / 3), pytest.approx(5 / 3), 3.0]
    def strict(flags: np.ndarray | None, i: int) -> bool:
        return flags is not None and bool(flags[i])

    for b in boxes:  # the widest input is cut; the others are the box's
        assert b.lower[0] == 0.0 and b.upper[0] == 1.0 and b.lower[2] == b.upper[2] == 2.0
        assert strict(b.lower_strict, 0) and not strict(b.upper_strict, 0)
    assert [strict(b.upper_strict, 1) for b in boxes] == [False, False, True]
    assert [strict(b.lower_strict, 1) for b in boxes] == [False, False, False]
    assert boxes[0].upper[1] == boxes[1].lower[1]  # the cut face in both parts
    pts = np.random.default_rng(0).uniform(box.lower, box.upper, size=(2000, 3))
    assert all(any(b.contains(p) for b in boxes) for p in pts if box.contains(p))


def test_parts_combine_to_one_answer() -> None:
    unsat = [{"key": f"part{i}", "status": "unsat", "time": 1.0 + i} for i in range(2)]
    assert combine_parts(unsat, 2)["status"] == "unsat"
    assert combine_parts(unsat[:1], 2)["status"] == "timeout"  # a part without an answer: not a proof
    mixed = [unsat[0], {"key": "part1", "status": "timeout", "time": 9.0}]
    assert combine_parts(mixed, 2)["status"] == "timeout"
    sat = [unsat[0], {"key": "part1", "status": "sat", "x": [0.0], "y": [1.0], "time": 2.0}]
    got = combine_parts(sat, 2)
    assert got["status"] == "sat" and got["x"] == [0.0] and len(got["parts"]) == 2
    assert combine_parts([{"key": "part0", "status": "error", "error": "boom"}, unsat[1]], 2)["status"] == "error"
