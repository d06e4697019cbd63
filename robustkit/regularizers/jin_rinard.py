"""Sparse manifold regularization (Jin & Rinard 2020, "Manifold Regularization for Locally
Stable Deep Neural Networks").

Sec. 5.4: for every sample draw a random maximal perturbation ``rho in {+-eps}^d`` and the pair
of opposite corners ``x+ = x + rho``, ``x- = x - rho`` (clipped to the valid input range here;
Sec. 5.3 explains why opposite corners: their convex hull covers the eps-box with high
probability and the Laplacian weight ``L(x+, x-)`` is a constant that can be dropped).

* Intrinsic regularizer, Eq. (7) specialised to the corner pair:
  ``||f||_I^2 ~ mean_i ||f(x_i+) - f(x_i-)||_2^2`` on the logits.
* Hamming regularizer, Sec. 5.3 relaxation ``H_alpha(z, y) = |tanh(alpha z) - tanh(alpha y)|``
  on the ReLU pre-activations; Sec. 5.4: "use the l2 norm to combine the Hamming distances
  between pre-activations within a layer and normalize by twice the number of elements in each
  layer. We sum then normalize by the total number of layers." -- per sample
  ``mean_l ||H_alpha(z_l+, z_l-)||_2 / (2 n_l)``, then the batch mean. As ``alpha -> inf``,
  ``H_alpha -> 2 * 1[sign differs]``, so ``sum(H_alpha) / 2`` is the Hamming distance of the
  activation patterns (:func:`hamming_relaxation`).

Final objective (Sec. 5.4): ``CE + gamma_I ||f||_I^2 + gamma_H ||H||_I^2``. Appendix B: alpha = 8;
gamma_I and gamma_H "increase linearly up to a factor of 10 from epochs 20 to 80" of a 100-epoch
run; the small (verification) model starts at gamma_I = 0.4, gamma_H = 9000, the large model
(PreActResNet18) at 0.8 and 2400. The ramp is given in epochs of a ``reference_epochs`` = 100 run
and scaled to the trainer's ``state.total_epochs`` (identical for a 100-epoch run); set
``reference_epochs = 0`` to use the epochs as they are.

Cost (``verify/bench_regularizers.py``: MNIST ``small``, batch 128, CPU, 1 thread): ~3.0-3.3x a
plain step, of which ~2.7-2.85x is the two corner passes themselves -- model work that this loss
cannot avoid (the bench's ``intrinsic`` row: both passes, no Hamming term). x+ and x- run side
by side at the trainer's batch size (:func:`corner_passes`; the trainer's clean forward,
``clean``, is not needed and not repeated); one batched pass of ``cat([x+, x-])`` or
``cat([x, x+, x-])`` is *slower* on a CPU (the conv backward of a 2-3x larger batch falls out of
cache; the bench times it too), and so are chunks of 64. Each ReLU of the corner passes is one
autograd function with its Hamming norm (:class:`ReluHamming`): forward, 7 elementwise passes
over the layer's pair plus a norm, keeping only the two tensors the gradient needs (not the
pre-activations); backward, the Hamming gradient added into the ReLU's in place. Against the
``intrinsic`` step (thread CPU time, interleaved, shared machine) the Hamming term and the
metric add ~0.3-0.4x of a plain step: the function itself ~0.05-0.1x, the Hamming forward
~0.15-0.2x, its backward ~0.05-0.1x, the exact pattern-flip count (:func:`_flips`) ~0.04-0.08x.
The corners come from random bits (:func:`~robustkit.regularizers.perturb.random_signs`):
0.08 ms per MNIST batch, 0.28 ms CIFAR (``randint`` per element: 0.32 and 1.3 ms).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from robustkit.errors import InputError
from robustkit.network import Network
from robustkit.network.passes import Activations
from robustkit.network.torch_capture import network_of
from robustkit.regularizers.base import RegOutput, Regularizer, ScheduleState
from robustkit.regularizers.options import require_nonneg, require_positive
from robustkit.regularizers.perturb import check_range, random_signs


@dataclass(frozen=True)
class JinRinardConfig:
    """``intrinsic_weight`` = gamma_I and ``hamming_weight`` = gamma_H at the start of the ramp;
    ``weight`` multiplies both; ``eps``: None = the trainer's ``state.eps``."""

    weight: float = 1.0
    intrinsic_weight: float = 0.4
    hamming_weight: float = 9000.0
    alpha: float = 8.0
    eps: float | None = None
    ramp_start: float = 20.0
    ramp_end: float = 80.0
    ramp_factor: float = 10.0
    reference_epochs: float = 100.0

    def __post_init__(self) -> None:
        require_nonneg(
            "jin-rinard",
            weight=self.weight,
            intrinsic_weight=self.intrinsic_weight,
            hamming_weight=self.hamming_weight,
            eps=self.eps,
            ramp_start=self.ramp_start,
            reference_epochs=self.reference_epochs,
        )
        require_positive("jin-rinard", alpha=self.alpha, ramp_factor=self.ramp_factor)
        if self.ramp_end < self.ramp_start:
            raise InputError(
                f"jin-rinard: ramp_end ({self.ramp_end}) must be >= ramp_start ({self.ramp_start})"
            )

    def ramp(self, epoch: float, total_epochs: int) -> float:
        """Appendix B multiplier: 1 before the ramp, ``ramp_factor`` after, linear between."""
        scale = total_epochs / self.reference_epochs if self.reference_epochs > 0 else 1.0
        begin, end = self.ramp_start * scale, self.ramp_end * scale
        if end <= begin:
            t = 1.0 if epoch >= end else 0.0
        else:
            t = min(max((epoch - begin) / (end - begin), 0.0), 1.0)
        return 1.0 + t * (self.ramp_factor - 1.0)


def hamming_relaxation(z_plus: torch.Tensor, z_minus: torch.Tensor, alpha: float) -> torch.Tensor:
    """Sec. 5.3: elementwise ``|tanh(alpha z+) - tanh(alpha z-)|`` (-> 2 * pattern mismatch)."""
    return (torch.tanh(alpha * z_plus) - torch.tanh(alpha * z_minus)).abs()


def _hamming_forward(z_plus: torch.Tensor, z_minus: torch.Tensor, alpha: float) -> tuple[torch.Tensor, ...]:
    """``(||s+ - s-||_2, u+, u-)`` per sample, ``s = sigmoid(2 alpha z)``, ``u = (s+ - s-) s (1 - s)``.

    ``tanh(u) = 2 sigmoid(2u) - 1``, so ``H = 2 (s+ - s-)`` and ``||H||_2 = 2 ||s+ - s-||_2`` (the
    ``- 1`` cancels and is never computed; torch's CPU tanh is ~4x slower than its sigmoid). Float
    rounding differs from the tanh form by ~1e-7 absolute per element. ``u+-`` (written over ``s+-``)
    are all that the gradient needs: ``d||H|| / dz+- = +-4 alpha u+- / ||s+ - s-||``.
    """
    s_plus = torch.mul(z_plus, 2.0 * alpha).sigmoid_()
    s_minus = torch.mul(z_minus, 2.0 * alpha).sigmoid_()
    half_diff = s_plus - s_minus
    half_norm = torch.linalg.vector_norm(half_diff, dim=list(range(1, half_diff.dim())))
    u_plus = _SIGMOID_BACKWARD(half_diff, s_plus, grad_input=s_plus)
    u_minus = _SIGMOID_BACKWARD(half_diff, s_minus, grad_input=s_minus)
    return half_norm, u_plus, u_minus


def _hamming_scale(grad: torch.Tensor, half_norm: torch.Tensor, alpha: float, dim: int) -> torch.Tensor:
    """``4 alpha g / ||s+ - s-||`` per sample, 0 where the norm is 0 (as torch's norm backward)."""
    scale = (grad * (4.0 * alpha) / half_norm).masked_fill_(half_norm == 0, 0.0)
    return scale.view(-1, *([1] * (dim - 1)))


_SIGMOID_BACKWARD = torch.ops.aten.sigmoid_backward.grad_input  # g s (1 - s), written to grad_input


class HammingNorm(torch.autograd.Function):
    """Per-sample ``||H_alpha(z+, z-)||_2 = ||tanh(alpha z+) - tanh(alpha z-)||_2`` (norm over all
    non-batch dimensions), shape ``(B,)``, with a hand-written backward (:func:`_hamming_forward`):
    the same function as ``vector_norm(hamming_relaxation(z+, z-, alpha))`` (``||h||_2`` of
    ``h = |d|`` is ``||d||_2``), 0 gradient where the norm is 0, as torch's norm backward."""

    @staticmethod
    def forward(ctx, z_plus: torch.Tensor, z_minus: torch.Tensor, alpha: float) -> torch.Tensor:  # type: ignore[override]  # noqa: ANN001
        half_norm, u_plus, u_minus = _hamming_forward(z_plus, z_minus, alpha)
        ctx.save_for_backward(u_plus, u_minus, half_norm)
        ctx.alpha = alpha
        return 2.0 * half_norm

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:  # type: ignore[override]  # noqa: ANN001
        u_plus, u_minus, half_norm = ctx.saved_tensors
        scale = _hamming_scale(grad, half_norm, ctx.alpha, u_plus.dim())
        return u_plus * scale, u_minus * scale.neg(), None


class ReluHamming(torch.autograd.Function):
    """``(relu(z+), relu(z-), ||H_alpha(z+, z-)||_2)``: a ReLU layer of the corner passes fused with
    its Hamming norm (values as :class:`HammingNorm`, ``torch.relu``). The backward adds the
    Hamming gradient into the ReLU's (``addcmul_``), instead of autograd summing two gradients of
    ``z`` that it allocated separately; ``z`` itself is not kept (the ReLU masks by its output)."""

    @staticmethod
    def forward(ctx, z_plus: torch.Tensor, z_minus: torch.Tensor, alpha: float):  # type: ignore[override]  # noqa: ANN001, ANN205
        half_norm, u_plus, u_minus = _hamming_forward(z_plus, z_minus, alpha)
        p_plus, p_minus = torch.relu(z_plus), torch.relu(z_minus)
        ctx.save_for_backward(p_plus, p_minus, u_plus, u_minus, half_norm)
        ctx.alpha = alpha
        return p_plus, p_minus, 2.0 * half_norm

    @staticmethod
    def backward(ctx, g_plus: torch.Tensor, g_minus: torch.Tensor, g_norm: torch.Tensor):  # type: ignore[override]  # noqa: ANN001, ANN205
        p_plus, p_minus, u_plus, u_minus, half_norm = ctx.saved_tensors
        grad_plus = torch.ops.aten.threshold_backward(g_plus, p_plus, 0)
        grad_minus = torch.ops.aten.threshold_backward(g_minus, p_minus, 0)
        scale = _hamming_scale(g_norm, half_norm, ctx.alpha, u_plus.dim())
        return grad_plus.addcmul_(u_plus, scale), grad_minus.addcmul_(u_minus, scale, value=-1.0), None


def _flips(post_plus: torch.Tensor, post_minus: torch.Tensor) -> torch.Tensor:
    """Per sample, the number of ReLUs on (``relu(z) > 0``) in one corner and off in the other:
    ``|sign(relu(z+)) - sign(relu(z-))|`` summed (float sums of 0/1: exact up to 2^24 per sample;
    cheaper on a CPU than bool comparisons)."""
    with torch.no_grad():
        flips = torch.sign(post_plus).sub_(torch.sign(post_minus)).abs_()
        return flips.sum(dim=list(range(1, flips.dim())))  # (vector_norm(ord=1) is 4x slower)


def pattern_flips(posts_plus: list[torch.Tensor], posts_minus: list[torch.Tensor]) -> float:
    """Mean over the batch of the number of ReLUs whose on/off state differs between x+ and x-
    (``z+ > 0 != z- > 0``), from the ReLU outputs (exact, see :func:`_flips`)."""
    total = sum(float(_flips(p, m).double().sum()) for p, m in zip(posts_plus, posts_minus))
    return total / posts_plus[0].shape[0] if posts_plus else 0.0


def hamming_term(preacts_plus: list[torch.Tensor], preacts_minus: list[torch.Tensor], alpha: float) -> torch.Tensor:
    """Sec. 5.4 per-sample Hamming regularizer: mean over layers of ``||H_alpha||_2 / (2 n_l)``, from
    recorded pre-activations (:class:`JinRinard` computes it inside :func:`corner_passes`)."""
    if not preacts_plus:
        raise ValueError("the Hamming regularizer needs a net with ReLU layers")
    pairs = zip(preacts_plus, preacts_minus)
    return torch.stack([HammingNorm.apply(zp, zm, alpha) / (2.0 * zp[0].numel()) for zp, zm in pairs]).mean(dim=0)


def intrinsic_term(logits_plus: torch.Tensor, logits_minus: torch.Tensor) -> torch.Tensor:
    """Eq. (7) on the corner pair: per-sample ``||f(x+) - f(x-)||_2^2``."""
    return (logits_plus - logits_minus).pow(2).sum(dim=1)


def corner_pair(
    x: torch.Tensor, eps: float, input_range: tuple[float, float], generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sec. 5.4: ``(clip(x + rho), clip(x - rho))`` with a random corner ``rho = eps * signs``."""
    lo, hi = check_range(input_range)
    signs, x0 = random_signs(x, generator), x.detach()
    return torch.add(x0, signs, alpha=eps).clamp_(lo, hi), torch.add(x0, signs, alpha=-eps).clamp_(lo, hi)


@dataclass
class CornerPasses:
    """The corner passes' logits (None when not asked for), and per Hamming layer its per-sample
    ``||H_alpha||_2 / (2 n_l)`` and pattern flips (empty without ``alpha``)."""

    logits_plus: torch.Tensor | None = None
    logits_minus: torch.Tensor | None = None
    hamming: list[torch.Tensor] = field(default_factory=list)
    flips: list[torch.Tensor] = field(default_factory=list)


def corner_passes(
    net: Network | nn.Module, x_plus: torch.Tensor, x_minus: torch.Tensor, alpha: float | None, logits: bool = True
) -> CornerPasses:
    """Run x+ and x- through the network's operators side by side, layer by layer, as
    :func:`robustkit.network.passes.forward_with_activations` would (a lowered graph's residual
    sums and carried tensors included); every ReLU's neurons (the model's own: not a lowered
    MaxPool's) are a :class:`ReluHamming` when
    ``alpha`` is given (a nonlinear operator of another kind then refuses: the Hamming relaxation of
    Jin & Rinard is defined on ReLU activation patterns). Without ``logits``, the layers after the
    last nonlinear operator are not run."""
    out = CornerPasses()
    net = network_of(net, x_plus)
    layers = net.layers
    stop = len(layers) if logits else max([i + 1 for i in net.activation_indices], default=0)
    hp, hm = x_plus.reshape(x_plus.shape[0], -1), x_minus.reshape(x_minus.shape[0], -1)
    for layer in layers[:stop]:
        if alpha is not None and layer.nonlinear and getattr(layer, "part_of", None) is None:
            if not layer.piecewise_linear:  # type: ignore[attr-defined]
                raise InputError("the Hamming regularizer needs piecewise-linear operators (an activation pattern); "
                                 f"the net has {layer.describe()}")
            ident = None if layer.identity is None else layer.identity.to(hp.device)  # type: ignore[attr-defined]
            if layer.is_relu:  # type: ignore[attr-defined]  # the fused kernel: ReLU and its norm in one
                if ident is None:
                    hp, hm, norm = ReluHamming.apply(hp, hm, alpha)
                    real_p, real_m = hp, hm
                else:  # a lowered graph: the ReLU's own neurons, the carried coordinates unchanged
                    rp, rm, norm = ReluHamming.apply(hp[:, ~ident], hm[:, ~ident], alpha)
                    hp = _carry(hp, ident, rp)
                    hm = _carry(hm, ident, rm)
                    real_p, real_m = rp, rm
                out.hamming.append(norm / (2.0 * real_p[0].numel()))
                out.flips.append(_flips(real_p, real_m))
            else:  # any piecewise-linear operator: its pattern is the side of each kink
                zp, zm = (hp, hm) if ident is None else (hp[:, ~ident], hm[:, ~ident])
                kinks = layer.breakpoints(zp)  # type: ignore[attr-defined]
                dp = (zp.unsqueeze(-1) - kinks).flatten(1)
                dm = (zm.unsqueeze(-1) - kinks).flatten(1)
                out.hamming.append(HammingNorm.apply(dp, dm, alpha) / (2.0 * dp[0].numel()))
                with torch.no_grad():
                    out.flips.append((torch.sign(dp) != torch.sign(dm)).sum(1).to(dp.dtype))
                hp, hm = layer.forward(hp), layer.forward(hm)
        else:
            hp, hm = layer.forward(hp), layer.forward(hm)
    if logits:
        out.logits_plus, out.logits_minus = hp, hm
    return out


def _carry(h: torch.Tensor, ident: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
    """``h`` with its non-identity coordinates replaced by ``own`` (in order)."""
    out = h.clone()
    out[:, ~ident] = own
    return out


class JinRinard(Regularizer):
    """gamma_I * intrinsic + gamma_H * Hamming on one random corner pair (x+, x-) per sample."""

    name = "jin-rinard"
    paper = "Jin & Rinard 2020, Manifold Regularization for Locally Stable Deep Neural Networks, Sec. 5.3-5.4, Eq. (7), Appendix B"
    summary = ("intrinsic + Hamming regularizers on random opposite corners of the eps-box, x10 ramp epochs 20-80 "
               "(the small verification model's gamma_I 0.4, gamma_H 9000)")
    terms = ("intrinsic", "hamming")
    config_cls = JinRinardConfig
    config: JinRinardConfig

    @property
    def scale_sensitive(self) -> bool:
        """True when the Hamming term is on: its tanh relaxation (~alpha |z+ - z-| for small
        pre-activations) is not invariant to ReLU rescaling (layer k x c, layer k+1 x 1/c), so
        without weight decay the optimizer can lower it by shrinking a layer instead of
        stabilizing it (``verify/REPRODUCTION.md``, section 2). The paper uses weight decay 5e-4.
        """
        return self.config.hamming_weight > 0

    def __call__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        state: ScheduleState,
        clean: Activations,
    ) -> RegOutput:
        cfg = self.config
        out = RegOutput()
        factor = cfg.weight * cfg.ramp(state.epoch, state.total_epochs)
        gamma_i, gamma_h = factor * cfg.intrinsic_weight, factor * cfg.hamming_weight
        if gamma_i == 0 and gamma_h == 0:
            return out
        eps = state.eps if cfg.eps is None else cfg.eps
        x_plus, x_minus = corner_pair(x, eps, state.input_range)
        with_hamming = cfg.hamming_weight > 0
        passes = corner_passes(clean.network, x_plus, x_minus, cfg.alpha if with_hamming else None,
                               cfg.intrinsic_weight > 0)
        if cfg.intrinsic_weight > 0:
            intrinsic = intrinsic_term(passes.logits_plus, passes.logits_minus).mean()
            out.terms["intrinsic"] = gamma_i * intrinsic
            out.metrics["intrinsic_raw"] = float(intrinsic.detach())
            out.metrics["gamma_i"] = gamma_i
        if with_hamming:
            if not passes.hamming:
                raise ValueError("the Hamming regularizer needs a net with ReLU layers")
            hamming = torch.stack(passes.hamming, dim=0).mean(dim=0).mean()
            out.terms["hamming"] = gamma_h * hamming
            out.metrics["hamming_raw"] = float(hamming.detach())
            out.metrics["gamma_h"] = gamma_h
            out.metrics["pattern_flips"] = float(torch.stack(passes.flips).double().sum()) / x.shape[0]
        return out
