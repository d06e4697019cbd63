"""Bound propagation: soundness against sampled inputs and box corners, ordering of the methods,
batching, monotonicity in eps, exactness at eps = 0 and on tiny nets, LP/MILP tightening,
stability statistics, the CLI, and (when installed) agreement with auto_LiRPA."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from robustkit.bounds import (
    AlphaCrownConfig,
    BoundMethod,
    CrownConfig,
    LpConfig,
    alpha_crown_bounds,
    compute_bounds,
    count_unstable,
    crown_bounds,
    interval_bounds,
    lirpa_available,
    lp_tighten,
    margin_matrix,
    relu_stability,
    run_bounds,
)
from robustkit.bounds.types import NetBounds
from robustkit.errors import InputError
from robustkit.network import Conv2d, Dense, Elementwise, LinearLayer, Network, ReLU

METHODS = ("interval", "crown", "alpha-crown", "lp")
# float64 evaluation of the float32 weights vs. widened bounds: anything beyond rounding is a bug
TOL = 1e-9


# -- networks ------------------------------------------------------------------------------------
def _dense(gen: torch.Generator, n_in: int, n_out: int, scale: float = 1.0) -> Dense:
    w = torch.randn(n_out, n_in, generator=gen) * scale / n_in**0.5
    b = torch.randn(n_out, generator=gen) * 0.3
    return Dense(w.float(), b.float())


def random_mlp(seed: int, dims: tuple[int, ...]) -> Network:
    gen = torch.Generator().manual_seed(seed)
    layers: list = []
    for k in range(len(dims) - 1):
        layers.append(_dense(gen, dims[k], dims[k + 1], 2.0))
        if k < len(dims) - 2:
            layers.append(ReLU(dims[k + 1]))
    return Network(tuple(layers), (dims[0],), (1, dims[0]))


def small_conv(seed: int) -> Network:
    """Normalization -> conv (stride 2, symmetric padding) -> ReLU -> conv (asymmetric padding)
    -> ReLU -> dense -> ReLU -> dense, on (2, 6, 6) inputs."""
    gen = torch.Generator().manual_seed(seed)
    shape = (2, 6, 6)
    n = int(np.prod(shape))
    scale = (torch.tensor([1 / 0.3, 1 / 0.2]).repeat_interleave(36)).double()
    norm = Elementwise(scale, -torch.tensor([0.5, 0.4]).repeat_interleave(36).double() * scale)
    c1 = Conv2d(torch.randn(3, 2, 3, 3, generator=gen) * 0.3, torch.randn(3, generator=gen) * 0.2, shape,
                stride=(2, 2), padding=(1, 1, 1, 1))
    c2 = Conv2d(torch.randn(4, 3, 2, 2, generator=gen) * 0.3, torch.randn(4, generator=gen) * 0.2, c1.out_shape,
                stride=(1, 1), padding=(0, 1, 1, 0))
    d1 = _dense(gen, c2.out_dim, 12, 2.0)
    d2 = _dense(gen, 12, 4, 2.0)
    layers = (norm, c1, ReLU(c1.out_dim), c2, ReLU(c2.out_dim), d1, ReLU(12), d2)
    return Network(layers, shape, (1, *shape))


NETS = {
    "mlp5": lambda: random_mlp(1, (5, 12, 10, 4)),
    "mlp3deep": lambda: random_mlp(2, (3, 8, 8, 8, 3)),
    "conv": lambda: small_conv(3),
}


def boxes(net: Network, eps: float, batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, net.in_dim, generator=gen, dtype=torch.float64)
    return (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)


def spec_for(net: Network, batch: int) -> torch.Tensor:
    return margin_matrix(torch.arange(batch) % net.out_dim, net.out_dim)


def samples(lo: torch.Tensor, hi: torch.Tensor, n: int = 10_000, seed: int = 1) -> torch.Tensor:
    """``n`` uniform points, ``n // 4`` random vertices, and every corner when the box is small."""
    gen = torch.Generator().manual_seed(seed)
    d = lo.numel()
    pts = [lo + (hi - lo) * torch.rand(n, d, generator=gen, dtype=torch.float64)]
    pts.append(torch.where(torch.rand(n // 4, d, generator=gen) < 0.5, lo, hi))
    if d <= 10:
        corners = torch.tensor(list(itertools.product([0.0, 1.0], repeat=d)), dtype=torch.float64)
        pts.append(lo + (hi - lo) * corners)
    return torch.cat(pts)


def assert_contains(net: Network, bounds: NetBounds, spec_lo, spec_hi, C, lo, hi, what: str) -> None:
    for b in range(lo.shape[0]):
        x = samples(lo[b], hi[b])
        outs = net.forward_all(x)
        outs32 = net.forward_all(x.float())
        for i, (o, o32) in enumerate(zip(outs, outs32)):
            for val in (o, o32.double()):
                assert bool((val >= bounds.lower[i][b] - TOL).all()), f"{what}: layer {i} below lower bound"
                assert bool((val <= bounds.upper[i][b] + TOL).all()), f"{what}: layer {i} above upper bound"
        if spec_lo is not None:
            m = outs[-1] @ C[b].T
            assert bool((m >= spec_lo[b] - TOL).all()), f"{what}: margin below its lower bound"
            assert bool((m <= spec_hi[b] + TOL).all()), f"{what}: margin above its upper bound"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small problems: threads only add contention (and the machine is shared)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


_CACHE: dict = {}


def all_methods(name: str, eps: float):
    """Bounds of every method for the net ``name`` at ``eps`` (computed once per test session)."""
    key = (name, eps)
    if key not in _CACHE:
        net = NETS[name]()
        lo, hi = boxes(net, eps)
        C = spec_for(net, lo.shape[0])
        res = {m: compute_bounds(net, lo, hi, m, C) for m in METHODS}
        _CACHE[key] = (net, lo, hi, C, res)
    return _CACHE[key]


# -- soundness and ordering --------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(NETS))
@pytest.mark.parametrize("eps", [0.02, 0.1, 0.4])
def test_sound_on_samples_and_corners(name: str, eps: float) -> None:
    net, lo, hi, C, res = all_methods(name, eps)
    for method, (nb, spec) in res.items():
        assert_contains(net, nb, spec.lower, spec.upper, C, lo, hi, f"{name} eps={eps} {method}")


@pytest.mark.parametrize("name", list(NETS))
@pytest.mark.parametrize("eps", [0.02, 0.1, 0.4])
def test_methods_are_ordered(name: str, eps: float) -> None:
    net, lo, hi, C, res = all_methods(name, eps)
    ibp, crown, alpha, lp = (res[m][1] for m in METHODS)
    assert bool((crown.lower >= ibp.lower - 1e-9).all()) and bool((crown.upper <= ibp.upper + 1e-9).all())
    assert bool((alpha.lower >= crown.lower - 1e-9).all()) and bool((alpha.upper <= crown.upper + 1e-9).all())
    assert bool((lp.lower >= alpha.lower - 1e-9).all())
    # LP-tightened layer bounds lie inside CROWN's, and tighten something at the larger radii
    nb_c, nb_lp = res["crown"][0], res["lp"][0]
    for i in range(len(net.layers)):
        assert bool((nb_lp.lower[i] >= nb_c.lower[i] - 1e-12).all())
        assert bool((nb_lp.upper[i] <= nb_c.upper[i] + 1e-12).all())
    assert count_unstable(net, res["lp"][0]) <= count_unstable(net, res["crown"][0]) <= count_unstable(net, res["interval"][0])
    if eps >= 0.1:
        assert float((crown.lower - ibp.lower).max()) > 1e-3, "CROWN should beat IBP somewhere"


def test_crown_tighter_than_interval_on_deep_net() -> None:
    net, lo, hi, C, res = all_methods("mlp3deep", 0.1)
    assert float(res["crown"][1].lower.sum()) > float(res["interval"][1].lower.sum()) + 1e-3


# -- exactness ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(NETS))
def test_eps_zero_gives_the_point(name: str) -> None:
    net = NETS[name]()
    lo, hi = boxes(net, 0.0)
    C = spec_for(net, 2)
    y = net.forward(lo)
    for m in METHODS:
        nb, spec = compute_bounds(net, lo, hi, m, C)
        errs = nb.float_errors(net)
        # the width at a point is the float error model alone: CROWN-based bounds charge the
        # accumulated float32 rounding E (at most) plus the float64 slack; interval arithmetic
        # also compounds each layer's slack through the layers
        band = errs.accumulated[-1] + errs.slack[-1]
        if m == "interval":
            d = torch.zeros_like(lo)
            for i, layer in enumerate(net.layers):
                d = layer.abs_forward(d) + errs.rounding[i] + errs.slack[i] if isinstance(layer, LinearLayer) else d
            band = d
        tol = 1.001 * band + 1e-12
        assert bool(((nb.lower[-1] - y).abs() <= tol).all()) and bool(((nb.upper[-1] - y).abs() <= tol).all()), m
        loose = 1e-3 if m == "interval" else 1e-4
        assert bool((band <= loose * (1 + y.abs())).all()), m  # and the model is not absurdly loose
        margin = (C @ y.unsqueeze(-1)).squeeze(-1)
        spec_tol = 1.001 * (C.abs() @ band.unsqueeze(-1)).squeeze(-1) + errs.spec_slack(C) + 1e-12
        assert bool(((spec.lower - margin).abs() <= spec_tol).all()), m


def _tiny_1d() -> Network:
    """1 input -> 6 -> 5 -> 2 outputs: its margin is piecewise linear in x."""
    return random_mlp(7, (1, 6, 5, 2))


def test_exact_extremes_of_a_tiny_net_lie_in_the_bounds_and_milp_finds_them() -> None:
    net = _tiny_1d()
    lo, hi = torch.tensor([[-1.0]], dtype=torch.float64), torch.tensor([[1.5]], dtype=torch.float64)
    C = torch.tensor([[[1.0, -1.0]]], dtype=torch.float64)
    # exact extremes: a fine grid plus every breakpoint of the first layer
    w, b = net.layers[0].weight.double().reshape(-1), net.layers[0].bias.double()
    kinks = (-b / w)[(w != 0)]
    grid = torch.cat([torch.linspace(-1.0, 1.5, 200_001, dtype=torch.float64), kinks[(kinks >= -1) & (kinks <= 1.5)]])
    m = (net.forward(grid.unsqueeze(1)) @ C[0].T).squeeze(1)
    exact_min, exact_max = float(m.min()), float(m.max())
    for method in ("interval", "crown", "alpha-crown", "lp", "milp"):
        _, spec = compute_bounds(net, lo, hi, method, C)
        assert float(spec.lower) <= exact_min + 1e-12, method
        assert float(spec.upper) >= exact_max - 1e-12, method
    _, spec = compute_bounds(net, lo, hi, "milp", C)
    assert float(spec.lower) == pytest.approx(exact_min, abs=1e-3)
    assert float(spec.upper) == pytest.approx(exact_max, abs=1e-3)


def test_lp_is_exact_for_one_hidden_layer_with_a_single_unstable_relu() -> None:
    """y = relu(x1 + x2) - 0.5 x1 over [-1, 1]^2: the triangle relaxation is the convex hull here,
    so the LP minimum of y is the true minimum -0.5 (at x1 = 1, x2 = -1)."""
    net = Network(
        (Dense(torch.tensor([[1.0, 1.0], [1.0, 0.0]]), torch.zeros(2)), ReLU(2),
         Dense(torch.tensor([[1.0, -0.5]]), torch.zeros(1))),
        (2,), (1, 2),
    )
    lo, hi = -torch.ones(1, 2, dtype=torch.float64), torch.ones(1, 2, dtype=torch.float64)
    C = torch.ones(1, 1, 1, dtype=torch.float64)
    _, spec = compute_bounds(net, lo, hi, "lp", C)
    assert float(spec.lower) == pytest.approx(-0.5, abs=1e-5)
    assert float(spec.lower) <= -0.5


# -- batching and monotonicity -----------------------------------------------------------------------
@pytest.mark.parametrize("name", ["mlp5", "conv"])
@pytest.mark.parametrize("method", ["crown", "alpha-crown", "lp"])
def test_batched_equals_per_sample(name: str, method: str) -> None:
    net = NETS[name]()
    lo, hi = boxes(net, 0.1, batch=3)
    C = spec_for(net, 3)
    nb, spec = compute_bounds(net, lo, hi, method, C)
    # alpha-CROWN's slopes (before lp too) are steered in float32, whose rounding depends on the batch layout:
    # the same bounds up to float32 precision (each one a float64 pass, valid either way)
    tol = 1e-6 if method in ("alpha-crown", "lp") else 1e-8
    for b in range(3):
        nb1, spec1 = compute_bounds(net, lo[b : b + 1], hi[b : b + 1], method, C[b : b + 1])
        torch.testing.assert_close(spec.lower[b : b + 1], spec1.lower, atol=tol, rtol=tol)
        torch.testing.assert_close(spec.upper[b : b + 1], spec1.upper, atol=tol, rtol=tol)
        for i in range(len(net.layers)):
            torch.testing.assert_close(nb.lower[i][b : b + 1], nb1.lower[i], atol=tol, rtol=tol)
            torch.testing.assert_close(nb.upper[i][b : b + 1], nb1.upper[i], atol=tol, rtol=tol)


@pytest.mark.parametrize("name", list(NETS))
@pytest.mark.parametrize("method", ["interval", "crown"])
def test_bounds_widen_with_eps(name: str, method: str) -> None:
    net = NETS[name]()
    gen = torch.Generator().manual_seed(5)
    x = torch.rand(2, net.in_dim, generator=gen, dtype=torch.float64) * 0.6 + 0.2  # no clipping below eps 0.2
    C = spec_for(net, 2)
    prev = None
    for eps in (0.0, 0.01, 0.05, 0.2):
        nb, spec = compute_bounds(net, x - eps, x + eps, method, C)
        if prev is not None:
            pnb, pspec = prev
            assert bool((spec.lower <= pspec.lower + 1e-12).all()) and bool((spec.upper >= pspec.upper - 1e-12).all())
            for i in range(len(net.layers)):
                assert bool((nb.lower[i] <= pnb.lower[i] + 1e-12).all())
                assert bool((nb.upper[i] >= pnb.upper[i] - 1e-12).all())
        prev = (nb, spec)


# -- CROWN details -----------------------------------------------------------------------------------
def test_crown_chunking_and_stable_skipping_agree() -> None:
    net = NETS["conv"]()
    lo, hi = boxes(net, 0.1)
    C = spec_for(net, 2)
    ref, rspec = crown_bounds(net, lo, hi, C)
    small, sspec = crown_bounds(net, lo, hi, C, CrownConfig(memory_mb=0.001))
    for i in range(len(net.layers)):
        torch.testing.assert_close(ref.lower[i], small.lower[i], atol=1e-10, rtol=0)
    torch.testing.assert_close(rspec.lower, sspec.lower, atol=1e-10, rtol=0)
    full, fspec = crown_bounds(net, lo, hi, C, CrownConfig(refine_stable=True))
    assert count_unstable(net, full) == count_unstable(net, ref)
    assert_contains(net, full, fspec.lower, fspec.upper, C, lo, hi, "crown refine_stable")
    # the first layer bounded by a backward pass has identical inputs in both modes, so
    # refining the stable neurons can only tighten it
    t = next(i for i in range(1, len(net.layers)) if isinstance(net.layers[i], (Dense, Conv2d)))
    assert bool((full.lower[t] >= ref.lower[t] - 1e-12).all()) and bool((full.upper[t] <= ref.upper[t] + 1e-12).all())
    assert float((full.upper[t] - full.lower[t]).sum()) < float((ref.upper[t] - ref.lower[t]).sum())


def test_alpha_crown_modes_are_sound_and_no_looser() -> None:
    net, lo, hi, C, res = all_methods("mlp3deep", 0.1)
    crown = res["crown"][1]
    for mode in ("fixed", "shared", "per-row"):
        nb, spec = alpha_crown_bounds(net, lo, hi, C, AlphaCrownConfig(intermediate=mode, iterations=15))
        assert bool((spec.lower >= crown.lower - 1e-9).all()), mode
        assert_contains(net, nb, spec.lower, spec.upper, C, lo, hi, f"alpha {mode}")
    with pytest.raises(ValueError):
        AlphaCrownConfig(intermediate="bogus")


@pytest.mark.parametrize("name", ["mlp3deep", "conv"])
def test_alpha_crown_float32_steps_only_steer(name: str) -> None:
    """Optimising in float32: sound, no looser than CROWN, as tight as float64 optimisation to
    0.1% of the width, and every bound returned is the float64 pass with the slopes reached (no
    float32 value leaks into a bound)."""
    from robustkit.bounds.alpha_crown import _Optimiser

    net = NETS[name]()
    lo, hi = boxes(net, 0.1)
    C = spec_for(net, 2)
    crown_nb, crown = crown_bounds(net, lo, hi, C)
    wide = {}
    for dt in ("float32", "float64"):
        cfg = AlphaCrownConfig(iterations=15, optimise_dtype=dt)
        nb, spec = alpha_crown_bounds(net, lo, hi, C, cfg)
        assert spec.lower.dtype == torch.float64
        assert bool((spec.lower >= crown.lower - 1e-9).all()), dt
        assert_contains(net, nb, spec.lower, spec.upper, C, lo, hi, f"alpha {dt}")
        wide[dt] = sum(float((u - l).sum()) for l, u in zip(nb.lower, nb.upper))
    assert abs(wide["float32"] - wide["float64"]) <= 1e-3 * wide["float64"]
    rows = torch.cat([C, -C], dim=1)
    opt = _Optimiser(net, lo, hi, crown_nb, rows, AlphaCrownConfig(iterations=15))
    best = opt.run(0.0, None)
    assert all(p.dtype == torch.float64 for p in opt.parameters())
    with torch.no_grad():
        again = opt._forward(opt.exact, track=False)
    torch.testing.assert_close(best, torch.maximum(again, best), rtol=0, atol=0)
    torch.testing.assert_close(best, again, rtol=0, atol=1e-12)
    with pytest.raises(ValueError):
        AlphaCrownConfig(optimise_dtype="float16")


# -- LP tightening -----------------------------------------------------------------------------------
def test_lp_zero_budget_keeps_bounds_and_stats_count() -> None:
    net, lo, hi, C, res = all_methods("mlp3deep", 0.1)
    nb, spec = res["crown"]
    same, sspec, stats = lp_tighten(net, nb, C, spec, LpConfig(), time_budget=0.0)
    assert stats.solved == 0
    for i in range(len(net.layers)):
        assert bool((same.lower[i] >= nb.lower[i]).all()) and bool((same.upper[i] <= nb.upper[i]).all())
    torch.testing.assert_close(sspec.lower, spec.lower)
    _, _, stats = lp_tighten(net, nb, C, spec, LpConfig())
    assert stats.solved > 0 and stats.not_optimal == 0 and stats.improved > 0


def test_run_bounds_reports_stages() -> None:
    net = NETS["mlp3deep"]()
    lo, hi = boxes(net, 0.1)
    result = run_bounds(net, lo, hi, "lp", spec_for(net, 2))
    assert [s.method for s in result.stages] == ["interval", "crown", "alpha-crown", "lp"]
    assert result.stages[-1].unstable == count_unstable(net, result.bounds)
    assert sum(s.removed for s in result.stages[1:]) == result.stages[0].unstable - result.stages[-1].unstable
    assert all(s.removed >= 0 for s in result.stages)


def test_method_names_and_input_errors() -> None:
    assert BoundMethod.parse("IBP") is BoundMethod.INTERVAL
    assert BoundMethod.parse("alpha_crown") is BoundMethod.ALPHA_CROWN
    assert [m.value for m in BoundMethod.LP.stages] == ["interval", "crown", "alpha-crown", "lp"]
    with pytest.raises(InputError, match="unknown bound method"):
        BoundMethod.parse("deeppoly")
    net = NETS["mlp5"]()
    with pytest.raises(InputError, match="entries per sample"):
        compute_bounds(net, torch.zeros(1, 3), torch.ones(1, 3), "crown")
    with pytest.raises(ValueError, match="exceeds"):
        compute_bounds(net, torch.ones(1, 5), torch.zeros(1, 5), "crown")
    with pytest.raises(InputError, match="time budget"):
        compute_bounds(net, torch.zeros(1, 5), torch.ones(1, 5), "lp", time_budget=-1)


def test_margin_matrix() -> None:
    C = margin_matrix(torch.tensor([2, 0]), 3)
    y = torch.tensor([1.0, 5.0, 3.0], dtype=torch.float64)
    assert (C[0] @ y).tolist() == [2.0, -2.0]
    assert (C[1] @ y).tolist() == [-4.0, -2.0]
    with pytest.raises(InputError):
        margin_matrix(torch.tensor([3]), 3)


# -- stability statistics ----------------------------------------------------------------------------
def test_relu_stability_counts() -> None:
    net, lo, hi, C, res = all_methods("mlp5", 0.1)
    nb = res["crown"][0]
    stats = relu_stability(net, nb)
    assert [s.position for s in stats] == net.split_indices
    for s in stats:
        l, u = nb.lower[s.position - 1], nb.upper[s.position - 1]
        assert (s.active + s.inactive + s.unstable == s.dim).all()
        assert s.unstable.tolist() == [int(((l[b] < 0) & (u[b] > 0)).sum()) for b in range(2)]
        np.testing.assert_allclose(s.mean_width, (u - l).mean(1).numpy())


# -- CLI ---------------------------------------------------------------------------------------------
def test_cli_bounds_on_a_model_with_metadata(tiny_mnist, capsys) -> None:
    from robustkit.cli.main import main

    rc = main(["bounds", str(tiny_mnist.path), "--eps", "0.01", "--n", "4", "--method", "ibp"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "stably active" in out and "margin lower bound" in out
    assert len(re.findall(r"^\| \d+ \(position", out, re.M)) == 2
    rc = main(["bounds", str(tiny_mnist.path), "--eps", "0.01", "--n", "4", "--method", "crown", "--format", "json"])
    assert rc == 0


def test_cli_bounds_errors(tmp_path: Path, save_onnx, onnx_kit) -> None:
    from robustkit.cli.main import main

    path = save_onnx(onnx_kit.mlp_model(onnx_kit.analytic_layers), "nometa.onnx")
    assert main(["bounds", str(path), "--eps", "0.1", "--n", "2"]) == 1  # no dataset metadata
    assert main(["bounds", str(path), "--eps", "0.1", "--n", "2", "--dataset", "mnist"]) == 1  # 2 inputs != 784
    assert main(["bounds", str(path), "--eps", "-1", "--dataset", "mnist"]) == 1
    assert main(["bounds", str(tmp_path / "missing.onnx"), "--eps", "0.1", "--dataset", "mnist"]) == 1


# -- the VNN-COMP MNIST net --------------------------------------------------------------------------
def _vnnlib_box(path: Path, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    lo, hi = np.full(n, np.nan), np.full(n, np.nan)
    for op, idx, val in re.findall(r"\(assert \((<=|>=) X_(\d+) ([-+0-9.eE]+)\)\)", path.read_text()):
        (hi if op == "<=" else lo)[int(idx)] = float(val)
    assert not np.isnan(lo).any() and not np.isnan(hi).any()
    return torch.from_numpy(lo).unsqueeze(0), torch.from_numpy(hi).unsqueeze(0)


def test_vnn_mnist_net(vnncomp_dir: Path) -> None:
    from robustkit.network import load_onnx

    bench = vnncomp_dir / "mnist_fc_2022"
    onnx_path, prop = bench / "onnx" / "mnist-net_256x2.onnx", bench / "vnnlib" / "prop_0_0.03.vnnlib"
    if not onnx_path.exists() or not prop.exists():
        pytest.skip(f"{onnx_path} or {prop} absent")
    net = load_onnx(onnx_path)
    lo, hi = _vnnlib_box(prop, net.in_dim)
    C = margin_matrix(torch.tensor([4]), 10)  # "Mnist property with label: 4"
    ibp, _ = compute_bounds(net, lo, hi, "interval", C)
    crown, cspec = compute_bounds(net, lo, hi, "crown", C)
    assert count_unstable(net, crown) < count_unstable(net, ibp)
    assert_contains(net, crown, cspec.lower, cspec.upper, C, lo, hi, "vnn crown")


# -- auto_LiRPA (optional) ---------------------------------------------------------------------------
_LIRPA_OK, _LIRPA_WHY = lirpa_available()
needs_lirpa = pytest.mark.skipif(not _LIRPA_OK, reason=f"auto_LiRPA not importable: {_LIRPA_WHY}")


@needs_lirpa
@pytest.mark.parametrize("name", list(NETS))
def test_agrees_with_auto_lirpa(name: str) -> None:
    from robustkit.bounds.lirpa_compat import lirpa_bounds, to_sequential

    net = NETS[name]()
    lo, hi = boxes(net, 0.1)
    C = spec_for(net, 2)
    seq = to_sequential(net)
    torch.testing.assert_close(seq(lo), net.forward(lo))

    def close(a: torch.Tensor, b: torch.Tensor) -> None:
        assert bool(((a - b).abs() <= 1e-4 * (1 + b.abs())).all()), (a, b)

    ibp = interval_bounds(net, lo, hi, safe=False)
    r = lirpa_bounds(net, lo, hi, "interval")
    close(ibp.lower[-1], r.lower)
    close(ibp.upper[-1], r.upper)
    plain = CrownConfig(intersect_interval=False, refine_stable=True)
    _, spec = crown_bounds(net, lo, hi, C, plain)
    r = lirpa_bounds(net, lo, hi, "crown", C, bound_opts={"sparse_intermediate_bounds": False})
    close(spec.lower, r.lower)
    close(spec.upper, r.upper)
    _, aspec = alpha_crown_bounds(net, lo, hi, C, AlphaCrownConfig(crown=plain))
    r = lirpa_bounds(net, lo, hi, "alpha-crown", C)
    # Two different optimisers (step size, schedule) on gains as small as 1e-4: compare the total
    # gain over CROWN and allow each entry a quarter of auto_LiRPA's gain, never looser than CROWN.
    gain = (r.lower - spec.lower).clamp(min=0)
    ours = aspec.lower - spec.lower
    assert bool((ours >= -1e-9).all()), (aspec.lower, spec.lower)
    assert float(ours.sum()) >= 0.8 * float(gain.sum()), (aspec.lower, r.lower, spec.lower)
    assert bool((aspec.lower >= r.lower - 0.25 * gain - 1e-4).all()), (aspec.lower, r.lower, spec.lower)


def test_certified_needs_the_safety_margin() -> None:
    from robustkit.bounds import BoundStatistics

    stats = BoundStatistics("crown", 0.1, [], np.array([5e-5, 1.0, 0.5]), np.array([True, True, False]), 0.0)
    assert stats.certified.tolist() == [False, True, False]
