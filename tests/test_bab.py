"""Branch and bound over ReLU splits (robustkit.verification.bab), against independent answers.

* Split mechanics: every sampled point of a child domain (the split neuron's sign as decided)
  lies inside that child's bounds, on every layer.
* The final pass: with no split multipliers it equals CROWN's spec bound; with optimised slopes
  and multipliers it is never looser, and never above the true minimum over the domain's points.
* Complete answers: on random small nets BaB agrees with the MILP (the other complete method),
  and its ``sat`` witnesses replay in onnxruntime; the exact-radius checks of test_milp run BaB too.
* A VNN-COMP instance (ground truth unsat) that the bounds alone leave open is decided by BaB.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from robustkit.bounds.crown import crown_bounds, pre_bounds, spec_lower
from robustkit.bounds.types import NetBounds
from robustkit.network import Dense, Network, ReLU
from robustkit.spec import InputBox, robustness_spec
from robustkit.verification import ModelContext, VerifyConfig, verify_spec
from robustkit.bounds.beta_crown import spec_backward
from robustkit.verification.bab import BabConfig, _Search, branch_and_bound
from robustkit.verification.domains import Domains


def _random_net(seed: int, sizes: tuple[int, ...] = (4, 12, 12, 3)) -> Network:
    rng = np.random.default_rng(seed)
    layers: list = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(Dense(torch.from_numpy(rng.normal(size=(b, a)) / np.sqrt(a)),
                            torch.from_numpy(rng.normal(size=b) * 0.2)))
        if i < len(sizes) - 2:
            layers.append(ReLU(b))
    return Network(tuple(layers), (sizes[0],), (1, sizes[0]))


def _box(net: Network, seed: int, eps: float) -> tuple[np.ndarray, np.ndarray]:
    x0 = np.random.default_rng(seed + 1000).uniform(-1, 1, size=net.in_dim)
    return x0 - eps, x0 + eps


def _points(lo: np.ndarray, hi: np.ndarray, n: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    pts = rng.uniform(lo, hi, size=(n, lo.size))
    corners = np.where(rng.random((n // 4, lo.size)) < 0.5, lo, hi)
    return torch.from_numpy(np.concatenate([pts, corners]))


def _search(net: Network, lo: np.ndarray, hi: np.ndarray, C: np.ndarray, d: np.ndarray, cfg: BabConfig,
            deadline: float = float("inf")) -> _Search:
    return _Search(net, torch.from_numpy(lo), torch.from_numpy(hi), C, d, np.arange(C.shape[0]), 1e-4, cfg,
                   lambda x: None, deadline)


def _root(net: Network, search: _Search) -> Domains:
    nb, _ = crown_bounds(net, search.lo, search.hi)
    return Domains(nb.lower, nb.upper, {r: torch.zeros(1, net.layers[r].in_dim, dtype=torch.int8) for r in search.relus},
                    torch.full((1,), -1, dtype=torch.long), torch.zeros(1, dtype=torch.long))


def _split_and_check(net: Network, search: _Search, dom: Domains, acts: list[torch.Tensor], seed: int) -> int:
    """Three rounds of splitting (every unstable neuron scored alike), each batch of children
    bounded as BaB bounds them (:meth:`_Search._intermediate`: CROWN from each child's split
    layer, with ``search.slopes``); every sampled point inside a child (its split neurons' signs
    as decided) must lie inside that child's bounds on every layer. Returns the children checked."""
    checked = 0
    for _ in range(3):
        dom.rows = torch.full((len(dom), 1), -1e9, dtype=torch.float64)
        search._choose_splits(dom, torch.arange(1),
                              {r: -torch.ones(len(dom), 1, net.layers[r].in_dim, dtype=torch.float64) for r in search.relus})
        dom = dom.take(torch.nonzero(dom.relu >= 0).flatten())
        if len(dom) == 0:
            break
        children = search.split(dom)
        nb = search._intermediate(children)
        for c in range(len(children)):
            inside = torch.ones(acts[0].shape[0], dtype=torch.bool)
            for r, sg in children.signs.items():
                for j in torch.nonzero(sg[c]).flatten().tolist():
                    z = acts[r - 1][:, j]
                    inside &= (z >= 0) if int(sg[c, j]) > 0 else (z <= 0)
            if not bool(inside.any()):
                continue
            checked += 1
            for i, a in enumerate(acts):
                assert bool((a[inside] >= nb.lower[i][c] - 1e-9).all()), (seed, c, i)
                assert bool((a[inside] <= nb.upper[i][c] + 1e-9).all()), (seed, c, i)
        dom = Domains(nb.lower, nb.upper, children.signs, children.relu.clone(), children.neuron)
    return checked


@pytest.mark.parametrize("seed", range(4))
def test_children_bounds_contain_their_points(seed: int) -> None:
    net = _random_net(seed)
    lo, hi = _box(net, seed, 0.5)
    C = np.eye(3)[[0]] - np.eye(3)[[1]]
    search = _search(net, lo, hi, C, np.zeros(1), BabConfig(iterations=0))
    dom = _root(net, search)
    pts = _points(lo, hi, 4000, seed)
    with torch.no_grad():
        acts = net.forward_all(pts)
    assert _split_and_check(net, search, dom, acts, seed) > 0


@pytest.mark.parametrize("seed", range(4))
def test_children_bounds_with_the_roots_slopes_contain_their_points(seed: int) -> None:
    """Children bounded with the intermediate slopes alpha-CROWN optimised over the root box (as
    BaB does) contain every sampled point of the child, on every layer."""
    from robustkit.bounds.alpha_crown import AlphaCrownConfig, alpha_crown_bounds

    net = _random_net(seed, (4, 16, 16, 16, 3))
    lo, hi = _box(net, seed, 0.6)
    C = torch.from_numpy(np.eye(3)[[0]] - np.eye(3)[[1]]).unsqueeze(0)
    root, _ = alpha_crown_bounds(net, torch.from_numpy(lo)[None], torch.from_numpy(hi)[None], C,
                                 AlphaCrownConfig(iterations=20, intermediate="per-row"))
    assert root.slopes, "alpha-CROWN kept no intermediate slopes"
    box_lo, box_hi = torch.from_numpy(lo)[None], torch.from_numpy(hi)[None]
    shell = NetBounds(box_lo, box_hi, root.lower, root.upper, "bab", root.errors)
    plain, _ = crown_bounds(net, box_lo, box_hi, None, base=shell, start=1)
    with_slopes, _ = crown_bounds(net, box_lo, box_hi, None, base=shell, start=1, slopes=root.slopes)
    assert any(not torch.equal(a, b) for a, b in zip(with_slopes.lower, plain.lower)), "the slopes were not used"
    search = _search(net, lo, hi, C[0].numpy(), np.zeros(1), BabConfig(iterations=0))
    search.slopes = root.slopes
    dom = Domains([t.clone() for t in root.lower], [t.clone() for t in root.upper],
                   {r: torch.zeros(1, net.layers[r].in_dim, dtype=torch.int8) for r in search.relus},
                   torch.full((1,), -1, dtype=torch.long), torch.zeros(1, dtype=torch.long))
    pts = _points(lo, hi, 4000, seed)
    with torch.no_grad():
        acts = net.forward_all(pts)
    assert _split_and_check(net, search, dom, acts, seed) > 0


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_final_pass_is_crown_and_optimising_stays_valid(seed: int, dtype: str) -> None:
    """Optimised bounds (Adam in float32 or float64; a float64 pass decides) stay valid on points."""
    net = _random_net(seed, (5, 16, 16, 4))
    lo, hi = _box(net, seed, 0.4)
    C = np.stack([np.eye(4)[0] - np.eye(4)[j] for j in (1, 2, 3)])
    search = _search(net, lo, hi, C, np.zeros(3), BabConfig(iterations=20, optimise_dtype=dtype))
    dom = _root(net, search)
    nb, _ = crown_bounds(net, search.lo, search.hi)
    pre = pre_bounds(net, nb)
    Ct = torch.from_numpy(C).unsqueeze(0)
    plain, _, _ = spec_backward(net, Ct, search.lo, search.hi, pre)
    torch.testing.assert_close(plain, spec_lower(net, Ct, search.lo, search.hi, pre))
    # split one unstable neuron of the last hidden layer both ways; optimise; check on points
    r = net.split_indices[-1]
    unstable = torch.nonzero((nb.lower[r - 1][0] < 0) & (nb.upper[r - 1][0] > 0)).flatten()
    assert unstable.numel() > 0
    dom.relu[:] = r
    dom.neuron[:] = int(unstable[0])
    children = search.split(dom)
    pts = _points(lo, hi, 20000, seed)
    with torch.no_grad():
        z = net.forward_all(pts)[r - 1][:, int(unstable[0])]
        y = net.forward(pts) @ torch.from_numpy(C).T
    box_lo, box_hi = search.lo.expand(2, -1), search.hi.expand(2, -1)
    nb2, _ = crown_bounds(net, box_lo, box_hi, None, search.cfg.crown,
                          NetBounds(box_lo, box_hi, children.lower, children.upper, "bab"), r)
    rows, known = torch.arange(3), torch.full((2, 3), -torch.inf, dtype=torch.float64)
    opt_lb = search._spec_bound(nb2, children, rows, known)[0]
    flat_lb = _search(net, lo, hi, C, np.zeros(3), BabConfig(iterations=0))._spec_bound(nb2, children, rows, known)[0]
    assert bool((opt_lb >= flat_lb - 1e-9).all())
    for child, side in ((0, z <= 0), (1, z >= 0)):
        if bool(side.any()):
            assert bool((opt_lb[child] <= y[side].min(dim=0).values + 1e-9).all()), (child, opt_lb[child])
    assert float((opt_lb - flat_lb).max()) > 0, "optimising slopes and multipliers gained nothing"
    assert opt_lb.dtype == torch.float64
    # past the deadline the optimisation stops after its first evaluation (CROWN's own slopes)
    late = _search(net, lo, hi, C, np.zeros(3), BabConfig(iterations=20, optimise_dtype=dtype), deadline=-float("inf"))
    torch.testing.assert_close(late._spec_bound(nb2, children, rows, known)[0], flat_lb)


@pytest.mark.parametrize("seed", range(12))
def test_bab_agrees_with_the_milp(seed: int, tmp_path: Path, onnx_kit, save_onnx) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    sizes = (3, 8, 8, 3)
    mats = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        mats.append(((rng.normal(size=(b, a)) / np.sqrt(a)).astype(np.float32), (rng.normal(size=b) * 0.2).astype(np.float32)))
    path = save_onnx(onnx_kit.mlp_model(mats), f"net{seed}.onnx")
    ctx = ModelContext.from_path(path)
    x0 = rng.uniform(0.3, 0.7, size=3)
    y0 = ctx.net.forward(torch.from_numpy(x0[None])).reshape(-1).numpy()
    label = int(np.argmax(y0))
    answers = {}
    for eps in (0.05, 0.15, 0.3):
        box = InputBox(np.clip(x0 - eps, 0, 1), np.clip(x0 + eps, 0, 1))
        spec = robustness_spec(label, 3, box)
        got = {}
        for method in ("milp", "bab"):
            v = verify_spec(ctx, spec, VerifyConfig(method=method, attack_steps=0, tighten="interval", timeout=60,
                                                    **({"bab_split": "relu"} if method == "bab" else {})))
            got[method] = v.result
            if v.result == "sat":
                assert v.witness is not None and box.contains(v.witness.x.astype(np.float64))
                assert spec.is_violated_by(v.witness.x.astype(np.float64), v.witness.y)
        assert got["milp"] in ("sat", "unsat"), got
        assert got["bab"] == got["milp"], (seed, eps, got)
        answers[eps] = got["bab"]
    assert set(answers.values()) <= {"sat", "unsat"}


def test_optimise_dtype_is_validated() -> None:
    with pytest.raises(ValueError):
        BabConfig(optimise_dtype="float16")
    with pytest.raises(ValueError):
        BabConfig(intermediate="sometimes")


def _first_choice(net: Network, lo: np.ndarray, hi: np.ndarray, cfg: BabConfig,
                  decided: int) -> tuple[tuple[int, int], list]:
    """The split of the root's box after 10 children whose recomputed bounds decided ``decided``
    ReLUs (every open row's coefficient -1: a neuron's score is its intercept, times its layer's
    weight where that applies), and the best expected (score, layer, neuron) of each layer."""
    search = _search(net, lo, hi, np.eye(3)[[0]] - np.eye(3)[[1]], np.zeros(1), cfg)
    search.stats.update(recomputed=10, stabilised=decided)
    weighted = cfg.intermediate == "recompute" and decided / 10 >= cfg.auto_stabilised
    dom = _root(net, search)
    dom.rows = torch.full((1, 1), -1e9, dtype=torch.float64)
    search._choose_splits(dom, torch.arange(1),
                          {r: -torch.ones(1, 1, net.layers[r].in_dim, dtype=torch.float64) for r in search.relus})
    expected = []
    for k, r in enumerate(search.relus):
        l, u = dom.lower[r - 1][0], dom.upper[r - 1][0]
        unstable = (l < 0) & (u > 0)
        assert bool(unstable.any()), r  # every hidden layer has a candidate
        scale = float(len(search.relus) - k) ** cfg.depth_weight if weighted else 1.0
        score = torch.where(unstable, -l * u / (u - l) * scale, torch.full_like(u, -1.0))
        expected.append((float(score.max()), r, int(score.argmax())))
    return (int(dom.relu[0]), int(dom.neuron[0])), expected


def test_branching_weights_early_layers_while_recomputing_decides_relus() -> None:
    """``(1 + later ReLU layers) ** depth_weight`` scales the intercept score while children are
    recomputed and that decided at least ``auto_stabilised`` ReLUs per child so far; not when
    it decided fewer, nor when children keep their parent's bounds, nor at the root (no child
    seen). Here the weight moves the split from the last hidden layer to an earlier one."""
    net = _random_net(0, (5, 20, 20, 20, 3))
    lo, hi = _box(net, 0, 0.6)
    chosen = {}
    for mode, weight, decided in (("recompute", 3.0, 10), ("recompute", 0.0, 10), ("fixed", 3.0, 10),
                                  ("recompute", 3.0, 2)):
        cfg = BabConfig(intermediate=mode, depth_weight=weight)
        chosen[mode, weight, decided], expected = _first_choice(net, lo, hi, cfg, decided)
        assert chosen[mode, weight, decided] == max(expected)[1:], (mode, weight, decided, expected, chosen)
    plain = chosen["recompute", 0.0, 10]
    assert chosen["fixed", 3.0, 10] == plain and chosen["recompute", 3.0, 2] == plain, chosen
    assert chosen["recompute", 3.0, 10][0] < plain[0], chosen
    root = _search(net, lo, hi, np.eye(3)[[0]] - np.eye(3)[[1]], np.zeros(1), BabConfig(intermediate="recompute"))
    assert not root._weighted()  # the root's split: no child seen yet


def test_depth_weight_is_validated() -> None:
    with pytest.raises(ValueError):
        BabConfig(depth_weight=-1.0)
    with pytest.raises(ValueError):
        BabConfig(depth_weight=float("nan"))


def _run_auto(net: Network, seed: int, eps: float, limit: float) -> dict:
    lo, hi = _box(net, seed, eps)
    C = np.eye(3)[[0]] - np.eye(3)[[1]]
    nb, _ = crown_bounds(net, torch.from_numpy(lo[None]), torch.from_numpy(hi[None]))
    y = net.forward(torch.from_numpy(np.random.default_rng(0).uniform(lo, hi, size=(4000, net.in_dim)))) @ torch.from_numpy(C).T
    d = np.array([float(y.min()) - 0.01])  # no sampled point violates: a search that takes a while
    cfg = BabConfig(intermediate="auto", auto_domains=64, iterations=5)
    res = branch_and_bound(net, lo, hi, C, d, np.zeros(1, dtype=np.int64), nb, time.perf_counter() + limit,
                           lambda x: None, cfg=cfg)
    return res.stats


def test_auto_intermediate_keeps_recomputing_where_it_decides_relus() -> None:
    """A deep net with a wide box: a split decides ReLUs in the layers after it, so ``auto``
    keeps recomputing; with one hidden layer there is nothing after a split to decide, so
    ``auto`` switches to keeping the parent's bounds once it has seen enough children."""
    deep = _run_auto(_random_net(4, (6, 30, 30, 30, 30, 3)), 4, 0.4, 5.0)
    assert deep["recomputed"] >= 64, deep
    assert deep["stabilised"] / deep["recomputed"] >= 0.5 and "fixed_from" not in deep, deep
    shallow = _run_auto(_random_net(5, (6, 60, 3)), 5, 0.8, 10.0)
    if shallow.get("domains", 0) < 64:
        pytest.skip(f"the search ended before {64} children: {shallow}")
    assert shallow["stabilised"] == 0 and shallow["fixed_from"] >= 64, shallow
    assert shallow["recomputed"] == shallow["fixed_from"], shallow  # none recomputed after the switch


def test_fixed_children_take_fixed_iterations() -> None:
    """While the children keep their parent's bounds, a batch takes at most ``fixed_iterations``
    Adam steps; recomputing, up to ``iterations``."""
    net = _random_net(6, (4, 16, 16, 16, 3))
    lo, hi = _box(net, 6, 0.5)
    C = np.eye(3)[[0]] - np.eye(3)[[1]]
    steps = {}
    for mode in ("fixed", "recompute"):
        search = _search(net, lo, hi, C, np.full(1, 1e6), BabConfig(iterations=12, fixed_iterations=3,
                                                                      intermediate=mode))
        dom = _root(net, search)
        for _ in range(3):  # the root, then two rounds of children (nothing closes: every point violates)
            dom, _, _, _ = search.bound(dom)
            dom = search.split(dom.take(torch.nonzero(dom.relu >= 0).flatten()))
        steps[mode] = search.stats["adam_steps"]
    assert steps["fixed"] == 3 * 3 and steps["recompute"] == 3 * 12, steps


def test_fixed_batches_take_every_step_once_the_tree_reaches_its_leaves() -> None:
    """Keeping the parent's bounds, a batch takes ``fixed_iterations`` Adam steps until
    ``leaf_domains`` domains have reached the leaves (every ReLU decided, the bound still open),
    then the full ``iterations``; ``full_steps_from`` records when."""
    net = _random_net(6, (4, 16, 16, 16, 3))
    lo, hi = _box(net, 6, 0.5)
    search = _search(net, lo, hi, np.eye(3)[[0]] - np.eye(3)[[1]], np.full(1, 1e6),
                     BabConfig(iterations=12, fixed_iterations=3, intermediate="fixed", leaf_domains=5))
    dom = _root(net, search)
    taken = []
    for leaves in (0, 4, 5, 9):
        search.stats["leaves"] = leaves  # as if that many domains had been settled as leaves
        search.stats["domains"] = 100 + leaves  # (bounded so far: the search loop counts them)
        before = search.stats.get("adam_steps", 0)
        dom, _, _, _ = search.bound(dom)
        taken.append(search.stats["adam_steps"] - before)
        if leaves < 5:
            assert "full_steps_from" not in search.stats
        dom = search.split(dom.take(torch.nonzero(dom.relu >= 0).flatten()))
    assert taken == [3, 3, 12, 12], taken
    assert search.stats["full_steps_from"] == 105  # when the rule first applied, not later
    with pytest.raises(ValueError):
        BabConfig(leaf_domains=-1)


@pytest.mark.parametrize("seed", range(2))
def test_children_recomputed_past_the_deadline_keep_their_parents_bounds(seed: int, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Past the search's deadline a recomputing search runs no CROWN backward pass for its
    children (it stops on time): each layer keeps the parent's bounds met with one interval
    step, never wider than the parent's and still holding every sampled point of the child."""
    import robustkit.bounds.crown as crown

    net = _random_net(seed, (4, 16, 16, 16, 3))
    lo, hi = _box(net, seed, 0.6)
    C = np.eye(3)[[0]] - np.eye(3)[[1]]
    calls = {"n": 0}
    real = crown._tighten_layer

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(crown, "_tighten_layer", counted)
    pts = _points(lo, hi, 4000, seed)
    with torch.no_grad():
        acts = net.forward_all(pts)
    on_time = _search(net, lo, hi, C, np.zeros(1), BabConfig(iterations=0, intermediate="recompute"))
    dom = _root(net, on_time)
    calls["n"] = 0
    assert _split_and_check(net, on_time, dom, acts, seed) > 0
    assert calls["n"] > 0  # before the deadline the children's later layers get backward passes
    late = _search(net, lo, hi, C, np.zeros(1), BabConfig(iterations=0, intermediate="recompute"),
                   deadline=-float("inf"))
    calls["n"] = 0
    assert _split_and_check(net, late, dom, acts, seed) > 0
    assert calls["n"] == 0
    dom.rows = torch.full((1, 1), -1e9, dtype=torch.float64)
    late._choose_splits(dom, torch.arange(1),
                        {r: -torch.ones(1, 1, net.layers[r].in_dim, dtype=torch.float64) for r in late.relus})
    children = late.split(dom)
    nb = late._intermediate(children)
    for i in range(len(nb.lower)):
        assert bool((nb.lower[i] >= children.lower[i]).all()) and bool((nb.upper[i] <= children.upper[i]).all()), i


def test_leaves_past_the_deadline_are_left_and_end_in_timeout() -> None:
    net = _random_net(5, (2, 5, 5, 2))
    lo, hi = np.array([-1.0, -1.0]), np.array([1.0, 1.0])
    search = _search(net, lo, hi, np.array([[1.0, -1.0]]), np.zeros(1), BabConfig(iterations=0), deadline=-float("inf"))
    dom = _root(net, search)
    dom.relu = torch.full((1,), -1, dtype=torch.long)  # as if fully split
    assert search.leaves(dom) is None
    assert search.stats["late"] == 1 and search.stats["leaves"] == 0 and search.stats["undecided"] == 0


def test_deadline_passed_gives_timeout() -> None:
    net = _random_net(3, (6, 40, 40, 40, 3))
    lo, hi = _box(net, 3, 1.0)
    C = np.eye(3)[[0]] - np.eye(3)[[1]]
    nb, _ = crown_bounds(net, torch.from_numpy(lo[None]), torch.from_numpy(hi[None]))
    y = net.forward(torch.from_numpy(np.random.default_rng(0).uniform(lo, hi, size=(2000, 6)))) @ torch.from_numpy(C).T
    d = np.array([float(y.min()) - 0.01])  # no sampled point violates; the bound is far from proving it
    res = branch_and_bound(net, lo, hi, C, d, np.zeros(1, dtype=np.int64), nb, time.perf_counter(), lambda x: None)
    assert res.status in ("timeout", "unsat")
    if res.status == "unsat":
        pytest.skip("the root bound closed this instance; nothing to time out")
    assert res.stats["iterations"] == 0
    assert res.stats["open_share"] == 1.0  # the root alone is open


def test_open_share_counts_each_open_domain_by_its_depth() -> None:
    from robustkit.verification.domains import open_share

    def block(signs: list[list[int]]) -> Domains:
        n = len(signs)
        sg = torch.tensor(signs, dtype=torch.int8)
        return Domains([torch.zeros(n, 2)], [torch.ones(n, 2)], {1: sg}, torch.zeros(n, dtype=torch.long),
                        torch.zeros(n, dtype=torch.long))

    assert open_share([]) == 0.0
    assert open_share([block([[0, 0]])]) == 1.0
    # one child of the root closed, the other split once more with one grandchild closed
    assert open_share([block([[1, 0]]), block([[-1, 1]])]) == pytest.approx(0.5 + 0.25)


def test_vnncomp_instance_left_open_by_bounds(vnncomp_dir: Path) -> None:
    """mnist_fc 256x2 prop_6 (ground truth unsat): CROWN leaves it open, BaB proves it."""
    from robustkit.vnnlib.instance import load_instance

    folder = vnncomp_dir / "mnist_fc_2022"
    ctx, spec = load_instance(folder / "onnx" / "mnist-net_256x2.onnx", folder / "vnnlib" / "prop_6_0.03.vnnlib")
    incomplete = verify_spec(ctx, spec, VerifyConfig(method="crown", attack_steps=0))
    assert incomplete.result == "unknown"
    v = verify_spec(ctx, spec, VerifyConfig(method="bab", tighten="crown", attack_steps=0, timeout=60))
    assert (v.result, v.stage) == ("unsat", "bab"), v.details
    stats = v.details["bab"]
    assert stats["domains"] > 1
    # the stage shares: each stage timed, together within the search's own time
    stages = {k: t for k, t in stats.items() if k.startswith("time_")}
    assert {"time_intermediate", "time_optimise", "time_branching", "time_split", "time_falsify"} <= set(stages)
    assert all(t >= 0 for t in stages.values()) and sum(stages.values()) <= stats["time"] + 1e-6
    assert stats["domains_per_s"] == pytest.approx(stats["domains"] / stats["time"])


def test_bab_intermediate_setting_reaches_the_search(vnncomp_dir: Path) -> None:
    """``VerifyConfig.bab_intermediate`` decides how the children are bounded: ``fixed`` never
    recomputes a child's intermediate bounds, ``recompute`` does; both prove the instance."""
    from robustkit.vnnlib.instance import load_instance

    folder = vnncomp_dir / "mnist_fc_2022"
    ctx, spec = load_instance(folder / "onnx" / "mnist-net_256x2.onnx", folder / "vnnlib" / "prop_6_0.03.vnnlib")
    seen = {}
    for mode in ("fixed", "recompute"):
        v = verify_spec(ctx, spec, VerifyConfig(method="bab", tighten="crown", attack_steps=0, timeout=60,
                                                bab_intermediate=mode))
        assert (v.result, v.stage) == ("unsat", "bab"), (mode, v.details)
        seen[mode] = v.details["bab"].get("recomputed", 0)
    assert seen["fixed"] == 0 and seen["recompute"] > 0, seen


def test_bab_depth_weight_reaches_the_search(vnncomp_dir: Path) -> None:
    """``VerifyConfig.bab_depth_weight`` moves the splits to the earlier layer while children are
    recomputed (``split_layer_mean``: 0 for the first of the two hidden layers, 1 for the
    second); both settings prove the instance."""
    from robustkit.vnnlib.instance import load_instance

    folder = vnncomp_dir / "mnist_fc_2022"
    ctx, spec = load_instance(folder / "onnx" / "mnist-net_256x2.onnx", folder / "vnnlib" / "prop_6_0.03.vnnlib")
    mean = {}
    for weight in (0.0, 6.0):
        v = verify_spec(ctx, spec, VerifyConfig(method="bab", tighten="crown", attack_steps=0, timeout=60,
                                                bab_intermediate="recompute", bab_depth_weight=weight))
        assert (v.result, v.stage) == ("unsat", "bab"), (weight, v.details)
        st = v.details["bab"]
        assert st["splits"] > 0 and 0 <= st["split_layer_mean"] <= 1, st
        mean[weight] = st["split_layer_mean"]
    assert mean[6.0] < mean[0.0], mean


@pytest.mark.parametrize("mode", ["recompute", "fixed"])
def test_leaf_lp_decides_fully_split_domains(mode: str) -> None:
    """Domains with every ReLU decided are settled by the LP over the affine piece: on a tiny net
    split down to the leaves, closed leaves contain no violating sampled point and a candidate is
    a real violation."""
    net = _random_net(5, (2, 5, 5, 2))
    lo, hi = np.array([-1.0, -1.0]), np.array([1.0, 1.0])
    C = np.array([[1.0, -1.0]])
    pts = _points(lo, hi, 40000, 5)
    with torch.no_grad():
        acts = net.forward_all(pts)
        margin = (net.forward(pts) @ torch.from_numpy(C).T).reshape(-1)
    d = np.array([float(margin.min()) + 0.3 * float(margin.max() - margin.min())])  # some points violate
    search = _search(net, lo, hi, C, d, BabConfig(iterations=0, intermediate=mode))
    dom = _root(net, search)
    settled = {"closed": 0, "candidate": 0}
    frontier = [dom]
    while frontier:
        cur = frontier.pop()
        bounded, _, _, _ = search.bound(cur)
        for i in range(len(bounded)):
            if int(bounded.relu[i]) >= 0:
                continue
            verdict, x = search._leaf_lp(bounded, i)
            assert verdict in settled, verdict
            settled[verdict] += 1
            inside = torch.ones(pts.shape[0], dtype=torch.bool)
            for r, sg in bounded.signs.items():
                for j in torch.nonzero(sg[i]).flatten().tolist():
                    z = acts[r - 1][:, j]
                    inside &= (z >= 0) if int(sg[i, j]) > 0 else (z <= 0)
            if verdict == "closed":
                assert not bool((margin[inside] <= float(d[0]) - 1e-6).any()), "a closed leaf holds a violating point"
            else:
                y = net.forward(torch.from_numpy(x[None])).reshape(-1).numpy()
                assert float(C[0] @ y) <= float(d[0]) + 1e-6
        rest = bounded.take(torch.nonzero(bounded.relu >= 0).flatten())
        if len(rest):
            frontier.append(search.split(rest))
    assert settled["closed"] > 0 and settled["candidate"] > 0, settled


def test_wide_attack_steps_falsify_a_flat_instance(vnncomp_dir: Path) -> None:
    """mnist_fc 256x4 prop_6_0.05 (ground truth sat): its counterexamples lie where few ReLUs are
    on; PGD with small steps stalls there, the corner-to-corner restart finds one at once."""
    from robustkit.vnnlib.instance import load_instance, replay_counterexample

    folder = vnncomp_dir / "mnist_fc_2022"
    onnx_path = folder / "onnx" / "mnist-net_256x4.onnx"
    ctx, spec = load_instance(onnx_path, folder / "vnnlib" / "prop_6_0.05.vnnlib")
    v = verify_spec(ctx, spec, VerifyConfig(method="crown", attack_steps=50, attack_restarts=2))
    assert (v.result, v.stage) == ("sat", "attack")
    assert replay_counterexample(onnx_path, spec, v.witness.x).exact
