"""The fast training-step formulations of the Jin & Rinard and ReLU-stability regularizers
against the formulations they replaced, kept here as references.

The references are the code as it was before the step-time work (issue #17, item 3):
Jin & Rinard ran x+ and x- in one forward of ``cat([x+, x-])`` and took ``|tanh(a z+) -
tanh(a z-)|`` with autograd; the RS loss used ``clamp_min``, ``/ 2`` and ``-tanh``. The loss, every
parameter gradient and the logged metrics must agree on a fixed batch and seed, up to float
rounding. See ``verify/results/regularizer_step_time.md`` for what the new forms cost.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustkit.nets import NetConfig, build_net, forward_with_activations
from robustkit.network.passes import Activations
from robustkit.regularizers import JinRinard, JinRinardConfig, ReluStability, ReluStabilityConfig, ScheduleState
from robustkit.regularizers.jin_rinard import HammingNorm, corner_pair, hamming_term, pattern_flips
from robustkit.regularizers.relu_stability import interval_preactivations, rs_loss, unstable_counts

STATE = ScheduleState(epoch=30.0, step=0, eps=0.1, total_epochs=100)


# -- the references -----------------------------------------------------------------------------


def _reference_jin_rinard(
    model: nn.Sequential, x: torch.Tensor, cfg: JinRinardConfig, state: ScheduleState
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """The pre-#17 JinRinard.__call__: one batched forward, tanh relaxation through autograd."""
    factor = cfg.weight * cfg.ramp(state.epoch, state.total_epochs)
    gamma_i, gamma_h = factor * cfg.intrinsic_weight, factor * cfg.hamming_weight
    eps = state.eps if cfg.eps is None else cfg.eps
    x_plus, x_minus = corner_pair(x, eps, state.input_range)
    acts = forward_with_activations(model, torch.cat([x_plus, x_minus], dim=0))
    pairs = [z.chunk(2, dim=0) for z in acts.preacts]
    terms: dict[str, torch.Tensor] = {}
    metrics: dict[str, float] = {}
    if cfg.intrinsic_weight > 0:
        lp, lm = acts.logits.chunk(2, dim=0)
        terms["intrinsic"] = gamma_i * (lp - lm).pow(2).sum(dim=1).mean()
    if cfg.hamming_weight > 0:
        per_layer = []
        for zp, zm in pairs:
            h = (torch.tanh(cfg.alpha * zp.flatten(1)) - torch.tanh(cfg.alpha * zm.flatten(1))).abs()
            per_layer.append(torch.linalg.vector_norm(h, dim=1) / (2.0 * h.shape[1]))
        terms["hamming"] = gamma_h * torch.stack(per_layer, dim=0).mean(dim=0).mean()
        with torch.no_grad():
            flips = sum(((p > 0) != (m > 0)).flatten(1).sum(1).float() for p, m in pairs)
        metrics["pattern_flips"] = float(flips.mean())
    return terms, metrics


def _reference_interval_preactivations(
    model: nn.Sequential, lower: torch.Tensor, upper: torch.Tensor
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The pre-#17 IBP (no Normalize layer in the nets used here)."""
    center, radius = (upper + lower) / 2, (upper - lower) / 2
    bounds = []
    for layer in model:
        if isinstance(layer, nn.Flatten):
            center, radius = layer(center), layer(radius)
        elif isinstance(layer, nn.Linear):
            center, radius = F.linear(center, layer.weight, layer.bias), F.linear(radius, layer.weight.abs())
        elif isinstance(layer, nn.Conv2d):
            center = F.conv2d(center, layer.weight, layer.bias, layer.stride, layer.padding)
            radius = F.conv2d(radius, layer.weight.abs(), None, layer.stride, layer.padding)
        elif isinstance(layer, nn.ReLU):
            lo, hi = center - radius, center + radius
            bounds.append((lo, hi))
            lo, hi = lo.clamp_min(0), hi.clamp_min(0)
            center, radius = (hi + lo) / 2, (hi - lo) / 2
    return bounds


# -- helpers ------------------------------------------------------------------------------------


def _batch(n: int = 12, seed: int = 0) -> tuple[nn.Sequential, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    net = build_net(NetConfig("small", (1, 28, 28)))
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.rand(n, 1, 28, 28, generator=gen)
    x = torch.where(x < 0.4, torch.zeros_like(x), x)  # MNIST-like: many pixels at the clip bound
    return net, x, torch.randint(0, 10, (n,), generator=gen)


def _grads(net: nn.Sequential) -> list[torch.Tensor]:
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in net.parameters()]


def _assert_grads_close(new: list[torch.Tensor], ref: list[torch.Tensor]) -> None:
    scale = max(float(g.abs().max()) for g in ref)
    assert scale > 0
    for g_new, g_ref in zip(new, ref):
        assert torch.allclose(g_new, g_ref, rtol=1e-4, atol=1e-6 * scale)


# -- Jin & Rinard -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cfg",
    [JinRinardConfig(), JinRinardConfig(intrinsic_weight=0.0), JinRinardConfig(hamming_weight=0.0),
     JinRinardConfig(alpha=2.0, hamming_weight=50.0, eps=0.3)],
    ids=["jin-rinard", "hamming", "intrinsic", "alpha2-eps0.3"],
)
def test_jin_rinard_step_equals_batched_reference(cfg: JinRinardConfig) -> None:
    """Training-step loss (CE + terms), all parameter gradients and the metrics: new == old."""
    net, x, y = _batch()
    results = []
    for use_reference in (True, False):
        net.zero_grad(set_to_none=True)
        torch.manual_seed(42)  # the corners are drawn from the global generator
        clean = forward_with_activations(net, x)
        if use_reference:
            terms, metrics = _reference_jin_rinard(net, x, cfg, STATE)
        else:
            out = JinRinard(cfg)(net, x, y, STATE, clean)
            terms, metrics = out.terms, out.metrics
        loss = F.cross_entropy(clean.logits, y) + sum(terms.values())
        loss.backward()
        results.append((float(loss.detach()), {k: float(v.detach()) for k, v in terms.items()}, metrics, _grads(net)))
    (ref_loss, ref_terms, ref_metrics, ref_grads), (loss, terms, metrics, grads) = results
    assert set(terms) == set(ref_terms) and all(v > 0 for v in ref_terms.values())
    assert loss == pytest.approx(ref_loss, rel=1e-6)
    for key, value in ref_terms.items():
        assert terms[key] == pytest.approx(value, rel=1e-5)
    if "pattern_flips" in ref_metrics:
        assert ref_metrics["pattern_flips"] > 0
        assert metrics["pattern_flips"] == pytest.approx(ref_metrics["pattern_flips"], rel=1e-6)  # float32 mean
    _assert_grads_close(grads, ref_grads)


def test_jin_rinard_corners_go_through_the_net_at_the_batch_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """x+ and x- are two passes of B, not one of 2B (on a CPU the 2B pass is the slower one)."""
    net, x, y = _batch(n=6)
    clean = forward_with_activations(net, x)
    first = type(clean.network.layers[0])
    original = first.forward
    sizes: list[int] = []

    def recording(self: object, h: torch.Tensor) -> torch.Tensor:
        if self.in_dim == x[0].numel():  # type: ignore[attr-defined]
            sizes.append(h.shape[0])
        return original(self, h)  # type: ignore[arg-type]

    monkeypatch.setattr(first, "forward", recording)
    JinRinard()(net, x, y, STATE, clean)
    assert sizes == [6, 6]


def test_hamming_norm_value_and_gradcheck() -> None:
    gen = torch.Generator().manual_seed(3)
    zp = torch.randn(4, 7, dtype=torch.float64, generator=gen) * 0.3
    zm = torch.randn(4, 7, dtype=torch.float64, generator=gen) * 0.3
    direct = (torch.tanh(8.0 * zp) - torch.tanh(8.0 * zm)).abs().norm(dim=1)
    assert torch.allclose(HammingNorm.apply(zp, zm, 8.0), direct, rtol=1e-12)
    assert torch.autograd.gradcheck(lambda a, b: HammingNorm.apply(a, b, 8.0), (zp.requires_grad_(), zm.requires_grad_()))


def test_hamming_norm_gradient_at_a_zero_norm_is_zero_like_autograd() -> None:
    """A sample whose corners give identical pre-activations: gradient 0 (torch's norm), not NaN."""
    z = 0.3 * torch.randn(3, 5, generator=torch.Generator().manual_seed(3))
    z_minus = z.clone()
    z_minus[1] += 0.5  # only sample 1 differs
    grads = []
    for fused in (True, False):
        # the reference in float64: in float32 both forms of tanh' (1 - tanh^2, 4 s (1 - s)) are
        # ~1e-7 off in absolute terms where tanh saturates, i.e. relatively far off on tiny entries
        dtype = torch.float32 if fused else torch.float64
        zp, zm = z.clone().to(dtype).requires_grad_(), z_minus.clone().to(dtype).requires_grad_()
        if fused:
            norm = HammingNorm.apply(zp, zm, 8.0)
        else:
            norm = torch.linalg.vector_norm((torch.tanh(8.0 * zp) - torch.tanh(8.0 * zm)).abs(), dim=1)
        norm.sum().backward()
        grads.append((zp.grad.double(), zm.grad.double()))
    (fp, fm), (rp, rm) = grads
    assert torch.isfinite(fp).all() and torch.isfinite(fm).all()
    assert float(fp[0].abs().max()) == 0.0 and float(fp[2].abs().max()) == 0.0
    assert float(rm[1].abs().max()) > 1.0  # a sample with a real gradient
    atol = 8.0 * 1e-6  # alpha * 1e-6: |grad| <= alpha
    assert torch.allclose(fp, rp, rtol=1e-5, atol=atol) and torch.allclose(fm, rm, rtol=1e-5, atol=atol)


def test_hamming_term_matches_tanh_form_for_tiny_differences() -> None:
    """The sigmoid evaluation of tanh keeps the term accurate when z+ and z- nearly agree."""
    gen = torch.Generator().manual_seed(8)
    zp = torch.randn(16, 200, generator=gen)
    zm = zp + 1e-3 * torch.randn(16, 200, generator=gen)
    ref = hamming_term([zp.double()], [zm.double()], 8.0)
    assert torch.allclose(hamming_term([zp], [zm], 8.0).double(), ref, rtol=1e-3)


def test_pattern_flips_counts_state_changes_including_zeros() -> None:
    zp = torch.tensor([[0.0, 1.0, -1.0, 2.0, 0.0], [3.0, -2.0, 0.0, 0.0, 1.0]])
    zm = torch.tensor([[1.0, 1.0, 0.0, -2.0, -1.0], [0.0, 5.0, -1.0, 0.0, 1.0]])
    # sample 0: positions 0 (off->on) and 3 (on->off); 2 and 4 stay off; sample 1: positions 0, 1
    acts = [Activations(logits=z, preacts=[z], posts=[torch.relu(z)]) for z in (zp, zm)]
    assert pattern_flips(acts[0].posts, acts[1].posts) == 2.0
    expected = float(((zp > 0) != (zm > 0)).sum(1).float().mean())
    assert expected == 2.0


# -- ReLU stability -----------------------------------------------------------------------------


def test_relu_stability_step_equals_reference() -> None:
    net, x, y = _batch()
    cfg = ReluStabilityConfig(weight=5e-4)
    results = []
    for use_reference in (True, False):
        net.zero_grad(set_to_none=True)
        clean = forward_with_activations(net, x)
        if use_reference:
            lo, hi = (x - 0.1).clamp(0, 1), (x + 0.1).clamp(0, 1)
            bounds = _reference_interval_preactivations(net, lo, hi)
            term = cfg.weight * sum((-torch.tanh(1 + bl * bu)).flatten(1).sum(1) for bl, bu in bounds).mean()
            unstable = float(sum(((bl < 0) & (bu > 0)).flatten(1).sum(1).float() for bl, bu in bounds).mean())
        else:
            out = ReluStability(cfg)(net, x, y, STATE, clean)
            term, unstable = out.terms["relu_stability"], out.metrics["unstable_relus"]
        loss = F.cross_entropy(clean.logits, y) + term
        loss.backward()
        results.append((float(loss.detach()), float(term.detach()), unstable, _grads(net)))
    (ref_loss, ref_term, ref_unstable, ref_grads), (loss, term, unstable, grads) = results
    assert loss == pytest.approx(ref_loss, rel=1e-6)
    assert term == pytest.approx(ref_term, rel=1e-5)
    assert unstable == ref_unstable and ref_unstable > 0
    _assert_grads_close(grads, ref_grads)
    # the bounds themselves are bit-identical (x * 0.5 == x / 2, relu == clamp_min(0))
    for (a, b), (c, d) in zip(
        interval_preactivations(net, (x - 0.1).clamp(0, 1), (x + 0.1).clamp(0, 1)),
        _reference_interval_preactivations(net, (x - 0.1).clamp(0, 1), (x + 0.1).clamp(0, 1)),
    ):
        assert torch.equal(a, c.flatten(1)) and torch.equal(b, d.flatten(1))


def test_rs_loss_and_unstable_counts_on_hand_bounds() -> None:
    lo = torch.tensor([[-1.0, 0.0, -2.0, 0.5, -0.5]])
    hi = torch.tensor([[1.0, 2.0, 0.0, 0.7, -0.1]])
    # unstable only where lo < 0 < hi: position 0 (a bound at exactly 0 is stable)
    assert unstable_counts([(lo, hi)]).tolist() == [1.0]
    expected = (-torch.tanh(1 + lo * hi)).sum(1)
    assert torch.allclose(rs_loss([(lo, hi)]), expected, atol=1e-6)
