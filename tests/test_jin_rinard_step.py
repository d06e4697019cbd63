"""The Jin & Rinard training step against a straightforward reference written here with plain
torch ops (Jin & Rinard 2020, Sec. 5.3-5.4): CE on the clean batch + gamma_I * mean
``||f(x+) - f(x-)||^2`` + gamma_H * mean over layers of ``||tanh(a z+) - tanh(a z-)||_2 / (2 n_l)``
with ``x+- = clip(x +- rho)`` for one corner ``rho in {+-eps}^d`` per sample.

The reference runs in float64 on a copy of the net; the implementation (float32, fused ReLU +
Hamming autograd function, corner passes side by side) must match its loss, every parameter
gradient and the pattern-flip count. The corners are pinned by replacing the module's
``random_signs`` with a fixed draw; their distribution is tested on its own below.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import robustkit.regularizers.jin_rinard as jr
from robustkit.nets import NetConfig, Residual, build_net, forward_with_activations
from robustkit.regularizers import JinRinard, JinRinardConfig, ScheduleState
from robustkit.regularizers.perturb import random_corner, random_signs

STATE = ScheduleState(epoch=30.0, step=0, eps=0.1, total_epochs=100)
RTOL = 1e-5


@pytest.fixture(autouse=True)
def _one_thread():  # noqa: ANN202
    """Tiny tensors: one thread (on a busy machine, OpenMP spin-waits make these 100x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _run(seq: nn.Sequential, h: torch.Tensor, preacts: list[torch.Tensor]) -> torch.Tensor:
    """Plain forward, recording every ReLU input (Residual bodies included, in execution order)."""
    for layer in seq:
        if isinstance(layer, nn.ReLU):
            preacts.append(h)
        h = h + _run(layer.body, h, preacts) if isinstance(layer, Residual) else layer(h)
    return h


def _reference(net, x, y, signs, cfg, state, *, hamming=True, opposite=True, alpha=None):  # noqa: ANN001, ANN202
    """The paper's loss, term by term; the keyword switches build the wrong variants that the
    comparison must reject (no Hamming term, non-opposite corners, another alpha)."""
    eps = state.eps if cfg.eps is None else cfg.eps
    lo, hi = state.input_range
    factor = cfg.weight * cfg.ramp(state.epoch, state.total_epochs)
    rho = eps * signs
    x_plus = (x + rho).clamp(lo, hi)
    x_minus = (x - rho).clamp(lo, hi) if opposite else (x + rho.flip(0)).clamp(lo, hi)
    zp: list[torch.Tensor] = []
    zm: list[torch.Tensor] = []
    logits_plus, logits_minus = _run(net, x_plus, zp), _run(net, x_minus, zm)
    loss = F.cross_entropy(net(x), y)
    if cfg.intrinsic_weight > 0:
        loss = loss + factor * cfg.intrinsic_weight * (logits_plus - logits_minus).pow(2).sum(dim=1).mean()
    a = cfg.alpha if alpha is None else alpha
    if cfg.hamming_weight > 0 and hamming:
        layers = []
        for p, m in zip(zp, zm):
            h = (torch.tanh(a * p) - torch.tanh(a * m)).abs().flatten(1)  # H_alpha, Sec. 5.3
            layers.append(h.norm(dim=1) / (2 * h.shape[1]))  # ||H||_2 / (2 n_l), Sec. 5.4
        loss = loss + factor * cfg.hamming_weight * torch.stack(layers).mean(dim=0).mean()
    flips = sum(((p > 0) != (m > 0)).flatten(1).sum(dim=1) for p, m in zip(zp, zm))
    return loss, float(flips.double().mean())


def _implementation(net, x, y, cfg, state):  # noqa: ANN001, ANN202
    clean = forward_with_activations(net, x)
    out = JinRinard(cfg)(net, x, y, state, clean)
    return F.cross_entropy(clean.logits, y) + sum(out.terms.values()), out.metrics


def _setup(name: str, seed: int = 0):  # noqa: ANN202
    torch.manual_seed(seed)
    shape = (1, 28, 28) if name == "small" else (2, 12, 12)
    net = build_net(NetConfig(name, shape))
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.rand(10, *shape, generator=gen)
    x = torch.where(x < 0.3, torch.zeros_like(x), x)  # MNIST-like: pixels at the clip bound
    y = torch.randint(0, 10, (10,), generator=gen)
    signs = random_signs(x, gen)
    return net, x, y, signs


def _compare(net, x, y, signs, cfg, state, monkeypatch):  # noqa: ANN001, ANN202
    monkeypatch.setattr(jr, "random_signs", lambda t, generator=None: signs.clone())
    net.zero_grad(set_to_none=True)
    loss, metrics = _implementation(net, x, y, cfg, state)
    loss.backward()
    grads = [p.grad.clone() for p in net.parameters()]
    ref_net = copy.deepcopy(net).double()
    ref_net.zero_grad(set_to_none=True)
    ref_loss, ref_flips = _reference(ref_net, x.double(), y, signs.double(), cfg, state)
    ref_loss.backward()
    ref_grads = [p.grad for p in ref_net.parameters()]
    return float(loss.detach()), metrics, grads, ref_net, float(ref_loss.detach()), ref_flips, ref_grads


CONFIGS = {
    "paper-small": JinRinardConfig(),
    "hamming-only": JinRinardConfig(intrinsic_weight=0.0),
    "intrinsic-only": JinRinardConfig(hamming_weight=0.0),
    "alpha2-eps0.3": JinRinardConfig(alpha=2.0, hamming_weight=50.0, eps=0.3),
}


@pytest.mark.parametrize("net_name", ["small", "resnet", "maxpool", "mlp"])
@pytest.mark.parametrize("cfg_name", list(CONFIGS))
def test_loss_gradients_and_flips_match_reference(net_name: str, cfg_name: str, monkeypatch) -> None:  # noqa: ANN001
    cfg = CONFIGS[cfg_name]
    net, x, y, signs = _setup(net_name)
    loss, metrics, grads, _, ref_loss, ref_flips, ref_grads = _compare(net, x, y, signs, cfg, STATE, monkeypatch)
    assert loss == pytest.approx(ref_loss, rel=RTOL)
    for g, r in zip(grads, ref_grads):
        assert float((g.double() - r).abs().max()) <= RTOL * float(r.abs().max()) + 1e-12
    if cfg.hamming_weight > 0:
        assert ref_flips > 0 and metrics["pattern_flips"] == ref_flips  # exact count
    else:
        assert "pattern_flips" not in metrics


def test_reference_comparison_rejects_wrong_losses(monkeypatch) -> None:  # noqa: ANN001
    """The tolerance above is far below what a dropped Hamming term, non-opposite corners or
    another alpha change, so the comparison would catch those."""
    cfg = CONFIGS["paper-small"]
    net, x, y, signs = _setup("small")
    loss, _, grads, ref_net, _, _, _ = _compare(net, x, y, signs, cfg, STATE, monkeypatch)
    for wrong in ({"hamming": False}, {"opposite": False}, {"alpha": 4.0}):
        ref_net.zero_grad(set_to_none=True)
        wrong_loss, _ = _reference(ref_net, x.double(), y, signs.double(), cfg, STATE, **wrong)
        wrong_loss.backward()
        assert abs(float(wrong_loss.detach()) - loss) > 1e3 * RTOL * abs(loss), wrong
        pairs = zip(grads, ref_net.parameters())
        worst = max(float((g.double() - r.grad).abs().max() / r.grad.abs().max()) for g, r in pairs)
        assert worst > 1e3 * RTOL, wrong


def test_corners_are_clipped_opposite_vertices() -> None:
    gen = torch.Generator().manual_seed(5)
    x = torch.rand(6, 3, 9, 7, generator=gen)
    x[0] = 0.0
    x[1] = 1.0
    x_plus, x_minus = jr.corner_pair(x, 0.25, (0.0, 1.0), generator=torch.Generator().manual_seed(9))
    rho = 0.25 * random_signs(x, torch.Generator().manual_seed(9))  # the same draw
    assert torch.equal(x_plus, (x + rho).clamp(0, 1)) and torch.equal(x_minus, (x - rho).clamp(0, 1))
    assert not x_plus.requires_grad and not x_minus.requires_grad


@pytest.mark.parametrize("shape", [(4000, 1, 28, 28), (1500, 3, 5, 7), (9001,)])
def test_random_corner_is_uniform_over_the_vertices(shape: tuple[int, ...]) -> None:
    """Every coordinate is exactly +-eps, each sign with probability 1/2, independently:
    per-coordinate frequencies, adjacent-coordinate agreement (coordinates that share a random
    byte or word) and the overall balance are within 5 binomial standard deviations."""
    x = torch.zeros(shape, dtype=torch.float64)
    rho = random_corner(x, 0.1, torch.Generator().manual_seed(0))
    assert rho.shape == x.shape and rho.dtype == x.dtype
    assert torch.all((rho == 0.1) | (rho == -0.1))
    plus = (rho > 0).flatten(1).double() if x.dim() > 1 else (rho > 0).view(-1, 1).double()
    n, d = plus.shape
    total = plus.numel()
    assert abs(float(plus.mean()) - 0.5) < 5 * 0.5 / total**0.5
    if d > 1:  # each coordinate over the batch
        assert float((plus.mean(dim=0) - 0.5).abs().max()) < 5.5 * 0.5 / n**0.5
    flat = (rho > 0).view(-1).double()
    for lag in (1, 7, 8, 63, 64):  # inside a byte, across bytes, across 64-bit words
        agree = float((flat[lag:] == flat[:-lag]).double().mean())
        assert abs(agree - 0.5) < 5 * 0.5 / (total - lag) ** 0.5, lag
    # a generator makes the draw reproducible; the global one is used without it
    again = random_corner(x, 0.1, torch.Generator().manual_seed(0))
    assert torch.equal(rho, again)
    assert not torch.equal(random_corner(x, 0.1), random_corner(x, 0.1))


def test_pattern_flips_exact_on_hand_values() -> None:
    """``z+ > 0 != z- > 0``, including pre-activations exactly 0 and denormal ones."""
    tiny = torch.finfo(torch.float32).smallest_normal / 4  # denormal
    zp = torch.tensor([[0.0, 1.0, -1.0, 2.0, tiny], [3.0, -2.0, 0.0, tiny, 1.0]])
    zm = torch.tensor([[1.0, 1.0, 0.0, -2.0, -tiny], [0.0, 5.0, -1.0, tiny, 1.0]])
    expected = float(((zp > 0) != (zm > 0)).sum(dim=1).double().mean())
    assert expected == 2.5
    assert jr.pattern_flips([torch.relu(zp)], [torch.relu(zm)]) == expected
    p, m, _ = jr.ReluHamming.apply(zp, zm, 8.0)
    assert float(jr._flips(p, m).sum()) == 5.0


def test_hamming_on_other_piecewise_linear_operators() -> None:
    """LeakyReLU and Hardtanh: the activation pattern is the side of every kink (0; -1 and 1), so
    the Hamming term is the tanh relaxation of ``z - b`` per kink and the flips count kinks
    crossed; a smooth operator (no pattern) is refused by name."""
    torch.manual_seed(5)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.LeakyReLU(0.1), nn.Linear(8, 7), nn.Hardtanh(), nn.Linear(7, 3))
    x_plus, x_minus = torch.rand(4, 6), torch.rand(4, 6)
    out = jr.corner_passes(model, x_plus, x_minus, alpha=2.0)
    z1p, z1m = model[1](x_plus), model[1](x_minus)
    z2p, z2m = model[3](model[2](z1p)), model[3](model[2](z1m))
    ref_h = [(torch.tanh(2 * z1p) - torch.tanh(2 * z1m)).norm(dim=1) / 16]
    d2p = torch.stack([z2p + 1, z2p - 1], -1).flatten(1)
    d2m = torch.stack([z2m + 1, z2m - 1], -1).flatten(1)
    ref_h.append((torch.tanh(2 * d2p) - torch.tanh(2 * d2m)).norm(dim=1) / (2 * 14))
    for got, want in zip(out.hamming, ref_h):
        torch.testing.assert_close(got, want)
    flips = ((z1p > 0) != (z1m > 0)).sum(1) + ((d2p > 0) != (d2m > 0)).sum(1)
    assert torch.equal(sum(out.flips), flips.float()) and int(flips.sum()) > 0
    torch.testing.assert_close(out.logits_plus, model(x_plus))
    with pytest.raises(jr.InputError, match="piecewise-linear.*Sigmoid|piecewise-linear.*SCurve"):
        jr.corner_passes(nn.Sequential(nn.Linear(6, 3), nn.Sigmoid(), nn.Linear(3, 2)), x_plus, x_minus, alpha=2.0)
