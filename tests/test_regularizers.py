"""Tests of the training regularizers against independent computations (CPU, tiny nets).

Every closed form is checked against autograd or a direct re-computation; the short-budget
training tests read the raw MNIST IDX files from ``../shared/data/mnist`` and skip without them.
"""

from __future__ import annotations

import copy
import gzip
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustkit.errors import InputError
from robustkit.nets import NetConfig, Normalize, build_net, forward_with_activations
from robustkit.regularizers import (
    MAT,
    AdvPropConfig,
    ContractiveConfig,
    JinRinard,
    JinRinardConfig,
    MATConfig,
    MRnetConfig,
    PGDConfig,
    ReluStabilityConfig,
    ScheduleState,
    build_regularizers,
    describe_regularizers,
    hamming_relaxation,
    interval_preactivations,
    layer_frobenius_norms,
    regularizer_names,
    worst_case_margins,
)
from robustkit.regularizers.advprop import advprop_input
from robustkit.regularizers.jin_rinard import hamming_term
from robustkit.regularizers.mrnet import mrnet_adversarial
from robustkit.regularizers.perturb import power_iteration, random_corner
from robustkit.regularizers.pgd import pgd_linf

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
MNIST = SHARED / "data" / "mnist"


def _state(epoch: float = 0.0, eps: float = 0.1, total: int = 100) -> ScheduleState:
    return ScheduleState(epoch=epoch, step=0, eps=eps, total_epochs=total)


def _total(out) -> torch.Tensor:  # noqa: ANN001
    return sum(out.terms.values(), torch.zeros((), dtype=torch.float64))


# ----------------------------------------------------------------------------------------------
# Deep Contractive Networks: closed form == ||autograd Jacobian||_F^2 per layer
# ----------------------------------------------------------------------------------------------


def _blocks(model: nn.Sequential, with_softmax: bool = True) -> list[nn.Module]:
    """Split the Sequential into h_{j-1} -> h_j maps (each ends at a ReLU; last adds softmax)."""
    blocks, current = [], []
    for layer in model:
        current.append(layer)
        if isinstance(layer, nn.ReLU):
            blocks.append(nn.Sequential(*current))
            current = []
    last = nn.Sequential(*current, nn.Softmax(dim=1)) if with_softmax else nn.Sequential(*current)
    blocks.append(last)
    return blocks


def _autograd_frobenius(model: nn.Sequential, x: torch.Tensor, with_softmax: bool = True) -> list[torch.Tensor]:
    out = []
    h = x
    for block in _blocks(model, with_softmax):
        per_sample = []
        for i in range(h.shape[0]):
            jac = torch.autograd.functional.jacobian(
                lambda v: block(v.unsqueeze(0)).squeeze(0), h[i], vectorize=True
            )
            per_sample.append(jac.pow(2).sum())
        out.append(torch.stack(per_sample))
        h = block(h).detach()
    return out


def _check_dcn(model: nn.Sequential, x: torch.Tensor, output: str = "softmax") -> None:
    model = model.double()
    x = x.double()
    clean = forward_with_activations(model, x)
    closed = layer_frobenius_norms(model, clean, output)
    reference = _autograd_frobenius(model, x, with_softmax=(output == "softmax"))
    assert len(closed) == len(reference)
    for j, (c, r) in enumerate(zip(closed, reference)):
        assert torch.allclose(c, r, rtol=1e-9, atol=1e-12), f"layer {j}: {c} vs {r}"
        assert float(r.min()) > 0  # a layer with no active unit would test nothing


def test_dcn_closed_form_matches_autograd_mlp_with_normalize() -> None:
    torch.manual_seed(0)
    net = build_net(NetConfig("mlp", (2, 3, 3), num_classes=4, hidden=(7, 5), mean=(0.1, 0.2), std=(0.5, 2.0)))
    _check_dcn(net, torch.rand(5, 2, 3, 3))


def test_dcn_closed_form_matches_autograd_conv_padding_stride() -> None:
    torch.manual_seed(1)
    net = nn.Sequential(
        Normalize((0.4, 0.5, 0.6), (0.3, 0.7, 1.5)),
        nn.Conv2d(3, 4, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 3, 4, stride=1, padding=2),
        nn.ReLU(),
        nn.Conv2d(3, 2, 3, stride=2, padding=2, dilation=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(2 * 3 * 3, 6),
        nn.ReLU(),
        nn.Linear(6, 3),
    )
    x = torch.rand(3, 3, 7, 7)
    # shapes: 7 -> 4 -> 5 -> 3 (a padded border is where the tap count varies)
    _check_dcn(net, x)


def test_dcn_conv_row_energy_counts_padding() -> None:
    """A 3x3 all-ones kernel with padding 1: corners see 4 taps, edges 6, the interior 9 (the rows'
    squared norms the contractive penalty reads from the operator, ``Conv2d.row_energy``)."""
    from robustkit.network import Conv2d

    conv = Conv2d(torch.ones(1, 1, 3, 3), torch.zeros(1), (1, 4, 4), (1, 1), (1, 1, 1, 1))
    tap = conv.row_energy(torch.ones(1, 16)).reshape(4, 4)
    expected = torch.tensor([[4, 6, 6, 4], [6, 9, 9, 6], [6, 9, 9, 6], [4, 6, 6, 4]], dtype=tap.dtype)
    assert torch.equal(tap, expected)


def test_dcn_softmax_and_logit_output_layer() -> None:
    torch.manual_seed(2)
    net = build_net(NetConfig("mlp", (1, 2, 2), num_classes=5, hidden=(6,)))
    _check_dcn(net, torch.randn(4, 1, 2, 2) * 3, output="softmax")
    _check_dcn(net, torch.randn(4, 1, 2, 2), output="logits")


def test_contractive_term_is_weighted_layer_sum() -> None:
    torch.manual_seed(3)
    net = build_net(NetConfig("small", (1, 28, 28)))
    x = torch.rand(6, 1, 28, 28)
    clean = forward_with_activations(net, x)
    norms = layer_frobenius_norms(net, clean)
    (reg,) = build_regularizers(["contractive=0.01:layer_weights=1,2,3,4"])
    out = reg(net, x, torch.zeros(6, dtype=torch.long), _state(), clean)
    expected = 0.01 * sum(w * n.mean() for w, n in zip((1, 2, 3, 4), norms))
    assert torch.allclose(out.terms["contractive"], expected)
    with pytest.raises(InputError, match="layer_weights"):
        build_regularizers(["contractive:layer_weights=1,2"])[0](net, x, torch.zeros(6, dtype=torch.long), _state(), clean)


# ----------------------------------------------------------------------------------------------
# Jin & Rinard: Hamming relaxation and intrinsic term
# ----------------------------------------------------------------------------------------------


def test_hamming_zero_when_corners_coincide() -> None:
    torch.manual_seed(4)
    net = build_net(NetConfig("small", (1, 28, 28)))
    x = torch.rand(4, 1, 28, 28)
    z = torch.randn(4, 30)
    assert float(hamming_term([z], [z.clone()], 8.0).abs().max()) == 0.0
    reg = JinRinard(JinRinardConfig())
    out = reg(net, x, torch.zeros(4, dtype=torch.long), _state(eps=0.0), forward_with_activations(net, x))
    assert float(out.terms["hamming"].detach()) == 0.0
    assert float(out.terms["intrinsic"].detach()) == 0.0


def test_hamming_relaxation_tends_to_true_hamming_distance() -> None:
    gen = torch.Generator().manual_seed(5)
    zp = torch.randn(8, 50, generator=gen)
    zm = torch.randn(8, 50, generator=gen)
    keep = (zp.abs() > 0.05) & (zm.abs() > 0.05)  # away from the kink, so the limit is reached
    zp, zm = torch.where(keep, zp, 1.0), torch.where(keep, zm, 1.0)
    true = ((zp > 0) != (zm > 0)).sum(dim=1).double()
    assert float(true.min()) > 0
    errors = []
    for alpha in (1.0, 8.0, 64.0, 512.0):
        scaled = hamming_relaxation(zp.double(), zm.double(), alpha).sum(dim=1) / 2
        errors.append(float((scaled - true).abs().max()))
        # the layer term: ||H_alpha||_2 / (2 n) -> sqrt(true) / n
        layer = hamming_term([zp.double()], [zm.double()], alpha) * 50
        if alpha == 512.0:
            assert torch.allclose(layer.pow(2), true, atol=1e-6)
    assert errors == sorted(errors, reverse=True)
    assert errors[-1] < 1e-6 < errors[0]


def test_jin_rinard_terms_match_separate_forward_passes() -> None:
    """The terms == a direct re-computation from two separate forward passes of x+ and x-."""
    torch.manual_seed(6)
    net = build_net(NetConfig("small", (1, 28, 28)))
    x = torch.rand(5, 1, 28, 28)
    cfg = JinRinardConfig(intrinsic_weight=0.4, hamming_weight=9000.0)
    torch.manual_seed(123)
    out = JinRinard(cfg)(net, x, torch.zeros(5, dtype=torch.long), _state(epoch=50.0, eps=0.1), forward_with_activations(net, x))
    torch.manual_seed(123)
    rho = random_corner(x, 0.1)  # the same draw from the global generator as corner_pair's
    xp, xm = (x + rho).clamp(0, 1), (x - rho).clamp(0, 1)
    ap, am = forward_with_activations(net, xp), forward_with_activations(net, xm)
    ramp = 1 + 9 * (50 - 20) / 60
    intrinsic = (ap.logits - am.logits).pow(2).sum(1).mean()
    layers = []
    for zp, zm in zip(ap.preacts, am.preacts):
        h = (torch.tanh(8 * zp) - torch.tanh(8 * zm)).abs().flatten(1)
        layers.append(h.norm(dim=1) / (2 * h.shape[1]))
    hamming = torch.stack(layers).mean(0).mean()
    assert torch.allclose(out.terms["intrinsic"], 0.4 * ramp * intrinsic, rtol=1e-5)
    assert torch.allclose(out.terms["hamming"], 9000 * ramp * hamming, rtol=1e-5)
    assert float(hamming.detach()) > 0 and float(intrinsic.detach()) > 0
    # corners: every coordinate moved by exactly eps unless clipped
    assert torch.all((xp - x).abs() <= 0.1 + 1e-7)


def test_jin_rinard_schedule_appendix_b() -> None:
    cfg = JinRinardConfig()
    assert cfg.ramp(0, 100) == 1.0 and cfg.ramp(20, 100) == 1.0
    assert math.isclose(cfg.ramp(50, 100), 5.5) and cfg.ramp(80, 100) == 10.0 and cfg.ramp(99, 100) == 10.0
    assert math.isclose(cfg.ramp(5, 10), 5.5)  # scaled to a 10-epoch run
    assert math.isclose(JinRinardConfig(reference_epochs=0).ramp(50, 10), 5.5)  # absolute epochs
    large = build_regularizers(["jin-rinard-large"])[0].config
    assert (large.intrinsic_weight, large.hamming_weight, large.alpha) == (0.8, 2400.0, 8.0)
    small = build_regularizers(["jin-rinard"])[0].config
    assert (small.intrinsic_weight, small.hamming_weight) == (0.4, 9000.0)


# ----------------------------------------------------------------------------------------------
# MAT: Proposition III.1 and the power method
# ----------------------------------------------------------------------------------------------


def test_mat_identity_covariance_information_is_center_loss_plus_constant() -> None:
    torch.manual_seed(7)
    net = build_net(NetConfig("mlp", (1, 4, 4), num_classes=3, hidden=(8, 6)))
    x = torch.rand(12, 1, 4, 4)
    y = torch.tensor([0, 1, 2] * 4)
    clean = forward_with_activations(net, x)
    reg = MAT(MATConfig(covariance="identity", info_weight=1.0, weight=0.0))
    out = reg(net, x, y, _state(), clean)  # first call: centers = per-class batch means
    z = clean.last_hidden.detach().numpy().astype(np.float64)
    centers = np.stack([z[y.numpy() == k].mean(0) for k in range(3)])
    center_loss = 0.5 * ((z - centers[y.numpy()]) ** 2).sum(1)
    const = 0.5 * z.shape[1] * math.log(2 * math.pi)
    assert math.isclose(out.metrics["mat_info_raw"], float(center_loss.mean() + const), rel_tol=1e-5)
    # gradient w.r.t. z is the center-loss gradient z - c_y
    zt = clean.last_hidden.detach().clone().requires_grad_(True)
    reg.information_term(zt, y).sum().backward()
    assert np.allclose(zt.grad.numpy(), z - centers[y.numpy()], atol=1e-5)


def test_mat_posterior_information_and_gmm_update() -> None:
    torch.manual_seed(8)
    z1, z2 = torch.randn(20, 4), torch.randn(20, 4) + 1
    y = torch.arange(20) % 2
    reg = MAT(MATConfig(information="posterior", gmm_rate=0.25, var_floor=1e-3))
    gmm = reg._mixture(2)
    gmm.update(z1, y)
    gmm.update(z2, y)
    for k in range(2):
        m1, m2 = z1[y == k].mean(0), z2[y == k].mean(0)
        v1, v2 = z1[y == k].var(0, unbiased=False), z2[y == k].var(0, unbiased=False)
        assert torch.allclose(gmm.means[k], 0.75 * m1 + 0.25 * m2, atol=1e-6)
        assert torch.allclose(gmm.variances[k], 0.75 * v1 + 0.25 * v2, atol=1e-6)
    # -log p(y|z) under the mixture, recomputed with scipy-free numpy
    zz = z2.double().numpy()
    mu, var = gmm.means.double().numpy(), gmm.variances.double().numpy()
    logn = -0.5 * (((zz[:, None, :] - mu[None]) ** 2 / var[None]).sum(2) + np.log(var).sum(1)[None] + 4 * math.log(2 * math.pi))
    post = logn - np.logaddexp(logn[:, 0], logn[:, 1])[:, None]
    expected = -post[np.arange(20), y.numpy()]
    assert np.allclose(reg.information_term(z2, y).double().numpy(), expected, atol=1e-4)


def test_power_iteration_finds_dominant_eigenvector() -> None:
    gen = torch.Generator().manual_seed(9)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=gen, dtype=torch.float64))
    eig = torch.tensor([5.0, 2.0, 1.0, 0.5, 0.2, 0.1], dtype=torch.float64)
    a = q @ torch.diag(eig) @ q.t()

    def divergence(r: torch.Tensor) -> torch.Tensor:  # 0.5 r^T A r per sample, summed
        flat = r.flatten(1)
        return 0.5 * ((flat @ a) * flat).sum()

    start = torch.randn(3, 2, 3, generator=gen, dtype=torch.float64)
    d = power_iteration(divergence, start, xi=1e-3, iterations=40)
    cos = (d.flatten(1) @ q[:, 0]).abs()
    assert torch.allclose(cos, torch.ones(3, dtype=torch.float64), atol=1e-9)
    one = power_iteration(divergence, start, xi=1e-3, iterations=1)
    manual = start.flatten(1) / start.flatten(1).norm(dim=1, keepdim=True) @ a
    manual = manual / manual.norm(dim=1, keepdim=True)
    assert torch.allclose(one.flatten(1), manual, atol=1e-12)


def test_mat_semi_supervised_unlabelled_only_smoothness() -> None:
    torch.manual_seed(10)
    net = build_net(NetConfig("mlp", (1, 4, 4), num_classes=3, hidden=(8, 6)))
    x = torch.rand(6, 1, 4, 4)
    y = torch.full((6,), -1)
    reg = MAT(MATConfig(semi_supervised=True))
    out = reg(net, x, y, _state(), forward_with_activations(net, x))
    assert out.terms == {}  # no labelled sample yet: no mixture, nothing to smooth against
    y2 = torch.tensor([0, 1, 2, -1, -1, -1])
    out = reg(net, x, y2, _state(), forward_with_activations(net, x))
    assert set(out.terms) == {"mat_info", "mat_smooth"}
    assert float(out.terms["mat_smooth"].detach()) > 0


# ----------------------------------------------------------------------------------------------
# Perturbations: AdvProp (sign), MRnet (L2), PGD (ball)
# ----------------------------------------------------------------------------------------------


def _tiny_net() -> nn.Sequential:
    torch.manual_seed(11)
    return build_net(NetConfig("mlp", (1, 5, 5), num_classes=4, hidden=(16,)))


def _reference_grad(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    xr = x.clone().requires_grad_(True)
    F.cross_entropy(net(xr), y, reduction="sum").backward()
    return xr.grad


def test_advprop_perturbation_is_exact_sign_and_in_range() -> None:
    net = _tiny_net()
    x = torch.rand(8, 1, 5, 5) * 0.6 + 0.2
    y = torch.randint(0, 4, (8,))
    g = _reference_grad(net, x, y)
    net.zero_grad(set_to_none=True)
    x_adv = advprop_input(net, x, y, 0.08, (0.0, 1.0))
    assert torch.equal(x_adv - x == 0, g == 0)
    assert torch.allclose((x_adv - x), 0.08 * g.sign(), atol=1e-7)
    assert all(p.grad is None for p in net.parameters())  # attack leaves parameter grads alone
    x_edge = torch.randint(0, 2, (8, 1, 5, 5)).float()
    x_adv = advprop_input(net, x_edge, y, 0.3, (0.0, 1.0))
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    assert float((x_adv - x_edge).abs().max()) <= 0.3 + 1e-7


def test_mrnet_perturbation_has_exact_l2_norm_and_is_in_range() -> None:
    net = _tiny_net()
    x = torch.full((8, 1, 5, 5), 0.5)
    x += torch.rand_like(x) * 0.01
    y = torch.randint(0, 4, (8,))
    g = _reference_grad(net, x, y)
    x_adv = mrnet_adversarial(net, x, y, 0.3, "l2", (0.0, 1.0))
    delta = (x_adv - x).flatten(1).double()
    assert torch.allclose(delta.norm(dim=1), torch.full((8,), 0.3, dtype=torch.float64), atol=1e-6)
    cos = F.cosine_similarity(delta, g.flatten(1).double(), dim=1)
    assert torch.allclose(cos, torch.ones(8, dtype=torch.float64), atol=1e-6)
    x_sign = mrnet_adversarial(net, x, y, 0.05, "linf", (0.0, 1.0))
    assert torch.allclose(x_sign - x, 0.05 * g.sign(), atol=1e-7)
    x_edge = torch.randint(0, 2, (8, 1, 5, 5)).float()
    x_adv = mrnet_adversarial(net, x_edge, y, 5.0, "l2", (0.0, 1.0))
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0


def test_mrnet_value_warmup_and_gradient_through_both_embeddings() -> None:
    net = _tiny_net()
    x = torch.rand(6, 1, 5, 5)
    y = torch.randint(0, 4, (6,))
    (reg,) = build_regularizers(["mrnet=0.5:warmup_epochs=2:eps=0.7"])
    clean = forward_with_activations(net, x)
    assert reg(net, x, y, _state(epoch=1.0), clean).terms == {}
    out = reg(net, x, y, _state(epoch=2.0), clean)
    x_adv = mrnet_adversarial(net, x, y, 0.7, "l2", (0.0, 1.0))
    phi_adv = forward_with_activations(net, x_adv).last_hidden
    expected = 0.5 * (clean.last_hidden - phi_adv).pow(2).sum(1).mean()
    assert torch.allclose(out.terms["mrnet"], expected)
    # gradient flows through phi(x) and phi(x_adv): equals the gradient of the reference expression
    params = [p for layer in list(net)[:-1] for p in layer.parameters()]  # up to the embedding
    g1 = torch.autograd.grad(out.terms["mrnet"], params, retain_graph=True)
    g2 = torch.autograd.grad(expected, params, retain_graph=True)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(g1, g2))
    detached = 0.5 * (clean.last_hidden - phi_adv.detach()).pow(2).sum(1).mean()
    g3 = torch.autograd.grad(detached, params)
    assert any(not torch.allclose(a, b) for a, b in zip(g1, g3))


def test_pgd_stays_in_ball_and_range_and_increases_loss() -> None:
    net = _tiny_net()
    x = torch.rand(16, 1, 5, 5)
    y = torch.randint(0, 4, (16,))
    torch.manual_seed(0)
    x_adv = pgd_linf(net, x, y, 0.2, 10, 0.05, (0.0, 1.0))
    assert float((x_adv - x).abs().max()) <= 0.2 + 1e-7
    assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
    with torch.no_grad():
        assert float(F.cross_entropy(net(x_adv), y)) > float(F.cross_entropy(net(x), y))
    (reg,) = build_regularizers(["pgd:steps=3"])
    out = reg(net, x, y, _state(eps=0.2), forward_with_activations(net, x))
    assert out.replaces_clean_loss and set(out.terms) == {"pgd"}


def test_advprop_replaces_clean_loss_with_optional_clean_weight() -> None:
    net = _tiny_net()
    x = torch.rand(6, 1, 5, 5)
    y = torch.randint(0, 4, (6,))
    clean = forward_with_activations(net, x)
    (reg,) = build_regularizers(["advprop:clean_weight=0.5"])
    out = reg(net, x, y, _state(), clean)
    x_adv = advprop_input(net, x, y, 0.08, (0.0, 1.0))
    assert out.replaces_clean_loss
    assert torch.allclose(out.terms["advprop"], F.cross_entropy(net(x_adv), y))
    assert torch.allclose(out.terms["advprop_clean"], 0.5 * F.cross_entropy(clean.logits, y))


# ----------------------------------------------------------------------------------------------
# ReLU stability: IBP soundness and the RS loss
# ----------------------------------------------------------------------------------------------


def test_ibp_bounds_contain_sampled_preactivations_and_rs_loss_value() -> None:
    torch.manual_seed(12)
    net = build_net(NetConfig("small", (1, 12, 12), mean=(0.3,), std=(0.4,)))
    x = torch.rand(3, 1, 12, 12)
    eps = 0.05
    lo, hi = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    bounds = interval_preactivations(net, lo, hi)
    for _ in range(20):
        pt = lo + (hi - lo) * torch.rand_like(x)
        pt = torch.where(torch.rand_like(x) < 0.3, torch.where(torch.rand_like(x) < 0.5, lo, hi), pt)
        acts = forward_with_activations(net, pt)
        for (bl, bu), z in zip(bounds, acts.preacts):
            assert torch.all(z >= bl - 1e-5) and torch.all(z <= bu + 1e-5)
    (reg,) = build_regularizers(["relu-stability=0.01"])
    out = reg(net, x, torch.zeros(3, dtype=torch.long), _state(eps=eps), forward_with_activations(net, x))
    expected = 0.01 * sum((-torch.tanh(1 + bl * bu)).flatten(1).sum(1) for bl, bu in bounds).mean()
    assert torch.allclose(out.terms["relu_stability"], expected)


def test_ibp_worst_case_margins_bound_every_sampled_margin() -> None:
    """Gowal et al.'s elided worst-case margins: an upper bound of ``z_j - z_y`` at samples and
    box corners, exact at eps = 0, and no looser than the naive ``u_j - l_y`` of the logits."""
    from robustkit.network.passes import interval_pass
    from robustkit.network.torch_capture import network_of

    torch.manual_seed(3)
    net = build_net(NetConfig("small", (1, 12, 12), mean=(0.3,), std=(0.4,)))
    x, y = torch.rand(4, 1, 12, 12), torch.tensor([0, 3, 7, 9])
    assert torch.allclose(worst_case_margins(net, x, x, y), net(x) - net(x).gather(1, y[:, None]), atol=1e-5)
    lo, hi = (x - 0.05).clamp(0, 1), (x + 0.05).clamp(0, 1)
    bound = worst_case_margins(net, lo, hi, y)
    assert bool((bound[torch.arange(4), y] == 0).all())
    worst = torch.full_like(bound, -torch.inf)
    for _ in range(200):
        pt = lo + (hi - lo) * torch.rand_like(x)
        pt = torch.where(torch.rand_like(x) < 0.5, torch.where(torch.rand_like(x) < 0.5, lo, hi), pt)
        with torch.no_grad():
            z = net(pt)
        worst = torch.maximum(worst, z - z.gather(1, y[:, None]))
    assert bool((worst <= bound + 1e-5).all())
    _, c, r = interval_pass(network_of(net, x), lo, hi)
    naive = (c + r) - (c - r).gather(1, y[:, None])
    naive = naive.scatter(1, y[:, None], 0.0)
    assert bool((bound <= naive + 1e-5).all()) and float((naive - bound).detach().sum()) > 0
    # the regularizer: weight * CE(z_hat, y), and it differs from the clean CE once eps > 0
    (reg,) = build_regularizers(["ibp=0.5"])
    out = reg(net, x, y, _state(eps=0.05), forward_with_activations(net, x))
    assert torch.allclose(out.terms["ibp"], 0.5 * F.cross_entropy(bound, y), atol=1e-6)
    assert float(out.terms["ibp"].detach()) > 0.5 * float(F.cross_entropy(net(x), y).detach())
    assert 0.0 <= out.metrics["ibp_verified"] <= 1.0


# ----------------------------------------------------------------------------------------------
# Combinations and weights
# ----------------------------------------------------------------------------------------------


def _terms(specs: list[str], net: nn.Sequential, x: torch.Tensor, y: torch.Tensor, seed: int, state: ScheduleState) -> dict[str, torch.Tensor]:
    clean = forward_with_activations(net, x)
    terms: dict[str, torch.Tensor] = {}
    for reg in build_regularizers(specs):
        torch.manual_seed(seed)
        terms.update(reg(net, x, y, state, clean).terms)
    return terms


def test_combination_equals_weighted_sum_of_single_terms() -> None:
    torch.manual_seed(13)
    net = build_net(NetConfig("small", (1, 28, 28)))
    x = torch.rand(4, 1, 28, 28)
    y = torch.randint(0, 10, (4,))
    st = _state(epoch=30.0)
    combo = _terms(["intrinsic=0.4", "hamming=9000"], net, x, y, 5, st)
    assert len(build_regularizers(["intrinsic=0.4", "hamming=9000"])) == 1  # one shared forward
    single_i = _terms(["intrinsic=1"], net, x, y, 5, st)["intrinsic"]
    single_h = _terms(["hamming=1"], net, x, y, 5, st)["hamming"]
    assert torch.allclose(combo["intrinsic"], 0.4 * single_i, rtol=1e-5)
    assert torch.allclose(combo["hamming"], 9000 * single_h, rtol=1e-5)
    jr = _terms(["jin-rinard"], net, x, y, 5, st)
    assert torch.allclose(jr["intrinsic"] + jr["hamming"], combo["intrinsic"] + combo["hamming"], rtol=1e-5)
    many = _terms(["contractive=2e-3", "relu-stability=3e-4", "mrnet=0.2:warmup_epochs=0"], net, x, y, 5, st)
    unit = {
        **_terms(["contractive=1"], net, x, y, 5, st),
        **_terms(["relu-stability=1"], net, x, y, 5, st),
        **_terms(["mrnet=1:warmup_epochs=0"], net, x, y, 5, st),
    }
    for key, w in (("contractive", 2e-3), ("relu_stability", 3e-4), ("mrnet", 0.2)):
        assert torch.allclose(many[key], w * unit[key], rtol=1e-5)
    assert float(sum(many.values()).detach()) == pytest.approx(
        float((2e-3 * unit["contractive"] + 3e-4 * unit["relu_stability"] + 0.2 * unit["mrnet"]).detach()), rel=1e-5
    )


# ----------------------------------------------------------------------------------------------
# Registry, bad input, CLI
# ----------------------------------------------------------------------------------------------


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(InputError) as exc:
        build_regularizers(["hamming=9000", "manifold"])
    for name in regularizer_names():
        assert name in str(exc.value)


@pytest.mark.parametrize(
    "spec",
    ["hamming=-1", "mrnet=-0.1", "advprop:eps=-0.1", "pgd:eps=-8/255", "mat:eps=-2", "jin-rinard:eps=-1",
     "relu-stability:eps=-0.1", "mrnet:eps=-2", "contractive:layer_weights=1,-1", "ibp=-1", "ibp:eps=-0.1"],
)
def test_negative_weight_or_eps_refused(spec: str) -> None:
    with pytest.raises(InputError, match=">= 0"):
        build_regularizers([spec])


@pytest.mark.parametrize(
    "make",
    [lambda: AdvPropConfig(eps=-1), lambda: PGDConfig(eps=-1), lambda: MRnetConfig(weight=-1),
     lambda: MATConfig(eps=-1), lambda: JinRinardConfig(hamming_weight=-1), lambda: ContractiveConfig(weight=-1),
     lambda: ReluStabilityConfig(weight=-1), lambda: PGDConfig(steps=0), lambda: MRnetConfig(norm="l1")],
)
def test_config_validation(make) -> None:  # noqa: ANN001
    with pytest.raises(InputError):
        make()


def test_bad_specs() -> None:
    with pytest.raises(InputError, match="valid options: .*steps"):
        build_regularizers(["pgd:stepz=3"])
    with pytest.raises(InputError, match="KEY=VALUE"):
        build_regularizers(["pgd:steps"])
    with pytest.raises(InputError, match="more than once"):
        build_regularizers(["pgd", "pgd=2"])
    with pytest.raises(InputError, match="none"):
        build_regularizers(["none", "pgd"])
    with pytest.raises(InputError, match="both produce"):
        build_regularizers(["jin-rinard", "hamming"])
    with pytest.raises(InputError, match="agree"):
        build_regularizers(["intrinsic:alpha=4", "hamming"])
    with pytest.raises(InputError, match="not a number"):
        build_regularizers(["hamming=lots"])
    with pytest.raises(InputError, match="integer"):
        build_regularizers(["pgd:steps=2.5"])
    cfg = build_regularizers(["pgd=2:steps=7:eps=8/255:random_start=false"])[0].config
    assert (cfg.weight, cfg.steps, cfg.eps, cfg.random_start) == (2.0, 7, 8 / 255, False)
    assert build_regularizers(["Relu_Stability"])[0].name == "relu-stability"


def test_describe_and_cli_list_every_regularizer() -> None:
    infos = {i.name: i for i in describe_regularizers()}
    assert set(infos) == set(regularizer_names())
    assert infos["hamming"].defaults["hamming_weight"] == 9000.0 and infos["hamming"].defaults["alpha"] == 8.0
    assert infos["advprop"].defaults["eps"] == 0.08 and infos["advprop"].replaces_clean_loss
    assert all(i.paper for i in infos.values())
    from typer.testing import CliRunner

    from robustkit.cli.main import app

    result = CliRunner().invoke(app, ["regularizers"], terminal_width=250)
    assert result.exit_code == 0, result.output
    for name in infos:
        assert name in result.output
    from robustkit.cli.main import main

    assert main(["regularizers", "nope"]) == 1


def test_a_regularizer_is_declared_once_by_its_class(monkeypatch: pytest.MonkeyPatch) -> None:
    """The registry reads name, paper, terms, config and weight option from the class; a user's
    subclass registers with one call and is then a spec name like the built-in ones; a class
    that declares too little is refused when registered."""
    from dataclasses import dataclass

    from robustkit.regularizers import Regularizer, register
    from robustkit.regularizers import registry as reg_mod

    for info in describe_regularizers():
        entry = reg_mod.REGULARIZERS[info.name]
        assert info.paper.startswith(entry.cls.paper) and entry.config_cls is entry.cls.config_cls
    monkeypatch.setattr(reg_mod, "_REGISTRY", dict(reg_mod._REGISTRY))
    monkeypatch.setattr(reg_mod, "REGULARIZERS", reg_mod.MappingProxyType(reg_mod._REGISTRY))

    @dataclass(frozen=True)
    class L2Config:
        weight: float = 1e-4

    @register
    class L2(Regularizer):
        name = "l2-logits"
        paper = "a user's own term"
        summary = "weight * ||z||^2"
        terms = ("l2_logits",)
        config_cls = L2Config

        def __call__(self, model, x, y, state, clean):  # type: ignore[no-untyped-def]
            from robustkit.regularizers import RegOutput

            return RegOutput(terms={"l2_logits": self.config.weight * clean.logits.pow(2).sum(1).mean()})

    (built,) = build_regularizers(["l2-logits=0.5"])
    assert isinstance(built, L2) and built.config.weight == 0.5
    assert "l2-logits" in regularizer_names()
    with pytest.raises(InputError, match="option"):
        build_regularizers(["l2-logits:nope=1"])
    with pytest.raises(ValueError, match="taken"):
        register(type("Other", (L2,), {"name": "mrnet"}))
    with pytest.raises(TypeError, match="config_cls"):
        register(type("NoConfig", (Regularizer,), {"name": "x", "__call__": lambda *a: None}))
    mutable = dataclass(type("C", (), {"__annotations__": {"weight": float}, "weight": 0.0}))
    with pytest.raises(TypeError, match="frozen"):
        register(type("Mutable", (Regularizer,), {"name": "x", "config_cls": mutable, "__call__": lambda *a: None}))
    assert "x" not in regularizer_names()


# ----------------------------------------------------------------------------------------------
# Short-budget training on real MNIST
# ----------------------------------------------------------------------------------------------


def _idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = np.frombuffer(data, ">i4", ndim, 4)
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


@pytest.fixture(scope="module")
def mnist_small():  # noqa: ANN201
    if not (MNIST / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"MNIST IDX files not found in {MNIST} (the shared/ folder beside the repo)")
    xs = torch.tensor(_idx(MNIST / "train-images-idx3-ubyte.gz")[:2000], dtype=torch.float32).unsqueeze(1) / 255
    ys = torch.tensor(_idx(MNIST / "train-labels-idx1-ubyte.gz")[:2000], dtype=torch.long)
    xt = torch.tensor(_idx(MNIST / "t10k-images-idx3-ubyte.gz")[:1000], dtype=torch.float32).unsqueeze(1) / 255
    yt = torch.tensor(_idx(MNIST / "t10k-labels-idx1-ubyte.gz")[:1000], dtype=torch.long)
    return xs, ys, xt, yt


def _train(net: nn.Sequential, regs: list, data, steps: int, seed: int = 0, lr: float = 1e-3) -> None:  # noqa: ANN001
    xs, ys, _, _ = data
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    per_epoch = len(xs) // 64
    for step in range(steps):
        idx = torch.randint(0, len(xs), (64,), generator=gen)
        x, y = xs[idx], ys[idx]
        clean = forward_with_activations(net, x)
        state = ScheduleState(epoch=step / per_epoch, step=step, eps=0.1, total_epochs=100)
        loss, replaced = torch.zeros(()), False
        for reg in regs:
            out = reg(net, x, y, state, clean)
            replaced |= out.replaces_clean_loss
            loss = loss + sum(out.terms.values(), torch.zeros(()))
        if not replaced:
            loss = loss + F.cross_entropy(clean.logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()


def _value(spec: str, net: nn.Sequential, data) -> float:  # noqa: ANN001
    _, _, xt, yt = data
    (reg,) = build_regularizers([spec])
    torch.manual_seed(99)
    x, y = xt[:256], yt[:256]
    out = reg(net, x, y, ScheduleState(epoch=0.0, step=0, eps=0.1, total_epochs=10), forward_with_activations(net, x))
    return float(sum(out.terms.values(), torch.zeros(())).detach())


def _accuracy(net: nn.Sequential, data) -> float:  # noqa: ANN001
    _, _, xt, yt = data
    with torch.no_grad():
        return float((net(xt).argmax(1) == yt).float().mean())


@pytest.fixture(scope="module")
def one_thread():  # noqa: ANN201
    """Deterministic, load-friendly training: one intra-op thread, restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def pretrained(mnist_small, one_thread):  # noqa: ANN001, ANN201
    """The ``small`` net after 200 plain steps (the warm start MRnet's Sec. 4.2 also uses)."""
    torch.manual_seed(0)
    net = build_net(NetConfig("small", (1, 28, 28)))
    _train(net, [], mnist_small, 200)
    return net


def _check_training(spec: str, pretrained: nn.Sequential, data) -> None:  # noqa: ANN001
    net = copy.deepcopy(pretrained)
    before = _value(spec, net, data)
    # fine-tuning phase at a lower learning rate (the Hamming weight 9000 makes Adam at 1e-3 noisy)
    _train(net, build_regularizers([spec]), data, 100, seed=1, lr=3e-4)
    after = _value(spec, net, data)
    baseline = copy.deepcopy(pretrained)
    _train(baseline, [], data, 100, seed=1, lr=3e-4)
    acc = _accuracy(net, data)
    assert acc > 0.80, f"{spec}: test accuracy {acc:.3f} after the short budget"
    assert after < before, f"{spec}: regularizer value did not decrease ({before:.4g} -> {after:.4g})"
    assert after < _value(spec, baseline, data), f"{spec}: no lower than plain training"


def test_training_jin_rinard_short_budget(mnist_small, pretrained) -> None:  # noqa: ANN001
    _check_training("jin-rinard", pretrained, mnist_small)


@pytest.mark.slow
@pytest.mark.parametrize(
    "spec",
    ["mrnet:warmup_epochs=0", "mat", "intrinsic", "hamming", "contractive", "advprop", "pgd", "relu-stability",
     "jin-rinard-large", "ibp:eps=0.02"],
)
def test_training_each_regularizer_short_budget(spec: str, mnist_small, pretrained) -> None:  # noqa: ANN001
    _check_training(spec, pretrained, mnist_small)


# -- Jin & Rinard: the relaxed Hamming term is not invariant to ReLU rescaling --------------------
def test_hamming_relaxation_shrinks_under_function_preserving_rescaling() -> None:
    """Layer 1 x c (weights and bias), layer 2 x 1/c: same function, same activation patterns, but
    the tanh-relaxed Hamming term falls ~linearly in c for small c. This is the loophole the
    training warning is about; the true Hamming distance (alpha -> inf) does not move."""
    torch.manual_seed(0)
    l1, l2 = nn.Linear(6, 8), nn.Linear(8, 3)
    xp, xm = torch.rand(16, 6), torch.rand(16, 6)

    @torch.no_grad()
    def terms(c: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        zp, zm = c * l1(xp), c * l1(xm)
        out = F.linear(torch.relu(zp), l2.weight / c, l2.bias)
        relaxed = hamming_term([zp], [zm], alpha=8.0)
        exact = (zp > 0).ne(zm > 0).float().sum(1)
        return out, relaxed, exact

    out1, relaxed1, exact1 = terms(1.0)
    out_small, relaxed_small, exact_small = terms(1e-3)
    torch.testing.assert_close(out_small, out1, rtol=1e-4, atol=1e-5)
    assert torch.equal(exact_small, exact1) and exact1.sum() > 0
    ratio = float(relaxed_small.sum() / relaxed1.sum())
    assert ratio < 5e-3, ratio


def test_training_warns_on_hamming_without_weight_decay(caplog: pytest.LogCaptureFixture) -> None:
    from robustkit.training.loop import build_regularizers as build_for_training
    from robustkit.training.loop import warn_scale_sensitive

    with caplog.at_level("WARNING", logger="robustkit.training.loop"):
        assert warn_scale_sensitive(build_for_training(["jin-rinard"]), 0.0)
        assert warn_scale_sensitive(build_for_training(["hamming=90"]), 0.0)
    assert "weight decay" in caplog.text and "5e-4" in caplog.text
    assert not warn_scale_sensitive(build_for_training(["jin-rinard"]), 5e-4)
    assert not warn_scale_sensitive(build_for_training(["intrinsic=0.4"]), 0.0)
    assert not warn_scale_sensitive(build_for_training(["pgd"]), 0.0)
