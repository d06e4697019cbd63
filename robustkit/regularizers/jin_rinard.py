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

Cost: x+ and x- go through the net in two forward passes of the trainer's batch size (the clean
forward that the trainer already made, ``clean``, is not needed by these terms and is not
repeated). On a CPU one batched pass of ``cat([x+, x-])``, or of ``cat([x, x+, x-])`` with the
clean batch, is *slower* than separate passes of the batch size: the conv backward of a 2-3x
larger batch falls out of cache (``verify/bench_regularizers.py`` times the batched variant too;
``verify/results/regularizer_step_time.md``). The Hamming term is one autograd function per
layer with a hand-written backward (:class:`HammingNorm`: 2 sigmoids, a difference and a norm
forward, 4 elementwise passes backward) instead of ~12 separately recorded elementwise ops and
two slow tanh calls; the pattern-flip metric is read off the ReLU outputs (:func:`pattern_flips`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from robustkit.errors import InputError
from robustkit.nets import Activations, forward_with_activations
from robustkit.regularizers.base import RegOutput, Regularizer, ScheduleState
from robustkit.regularizers.options import require_nonneg, require_positive
from robustkit.regularizers.perturb import clip_to_range, random_corner


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


class HammingNorm(torch.autograd.Function):
    """Per-sample ``||H_alpha(z+, z-)||_2 = ||tanh(alpha z+) - tanh(alpha z-)||_2`` of ``(B, n)``
    pre-activations, shape ``(B,)``, with a hand-written backward.

    The same function as ``vector_norm(hamming_relaxation(z+, z-, alpha), dim=1)`` (``||h||_2`` of
    ``h = |d|`` is ``||d||_2``), evaluated through ``tanh(u) = 2 sigmoid(2u) - 1``:
    ``d = 2 (s+ - s-)`` with ``s = sigmoid(2 alpha z)``, so the ``- 1`` cancels exactly and is never
    computed. torch's CPU tanh is ~4x slower than its sigmoid, and this is the cost of the term.
    Float rounding differs from the tanh form by ~1e-7 absolute per element (sigmoid values near
    1/2 carry an absolute, not relative, rounding error), far below anything the loss resolves.

    Backward, the chain autograd would record (``d -> |d| -> ||.||``): ``grad_d = |d| sgn(d) g /
    ||d|| = d g / ||d||`` (0 where the norm is 0, as torch's norm backward), then
    ``grad_z+- = +-alpha (1 - tanh^2(alpha z+-)) grad_d = +-4 alpha s+-(1 - s+-) grad_d``.
    """

    @staticmethod
    def forward(ctx, z_plus: torch.Tensor, z_minus: torch.Tensor, alpha: float) -> torch.Tensor:  # type: ignore[override]  # noqa: ANN001
        s_plus = torch.mul(z_plus, 2.0 * alpha).sigmoid_()
        s_minus = torch.mul(z_minus, 2.0 * alpha).sigmoid_()
        half_diff = s_plus - s_minus  # = d / 2
        half_norm = torch.linalg.vector_norm(half_diff, dim=1)
        ctx.save_for_backward(s_plus, s_minus, half_diff, half_norm)
        ctx.alpha = alpha
        return 2.0 * half_norm

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:  # type: ignore[override]  # noqa: ANN001
        s_plus, s_minus, half_diff, half_norm = ctx.saved_tensors
        # grad_d * 4 alpha = (d / ||d||) g 4 alpha = half_diff * (4 alpha g / ||half_diff||)
        scale = (grad * (4.0 * ctx.alpha) / half_norm).masked_fill_(half_norm == 0, 0.0)
        scaled = half_diff * scale.unsqueeze(1)
        grad_plus = torch.ops.aten.sigmoid_backward(scaled, s_plus) if ctx.needs_input_grad[0] else None
        grad_minus = torch.ops.aten.sigmoid_backward(scaled, s_minus).neg_() if ctx.needs_input_grad[1] else None
        return grad_plus, grad_minus, None


def pattern_flips(posts_plus: list[torch.Tensor], posts_minus: list[torch.Tensor]) -> float:
    """Mean over the batch of the number of ReLUs whose on/off state differs between x+ and x-
    (``z+ > 0 != z- > 0``), from the ReLU outputs: ``sign(relu(z))`` is that state as 0/1, and the
    float sums of 0/1 are exact (up to 2^24 ReLUs). ~4x cheaper than comparing the pre-activations
    (bool tensors and their int64 sums are slow on a CPU)."""
    with torch.no_grad():
        total = sum(float((torch.sign(p) - torch.sign(m)).abs_().sum()) for p, m in zip(posts_plus, posts_minus))
    return total / posts_plus[0].shape[0] if posts_plus else 0.0


def hamming_term(
    preacts_plus: list[torch.Tensor], preacts_minus: list[torch.Tensor], alpha: float
) -> torch.Tensor:
    """Sec. 5.4 per-sample Hamming regularizer: mean over layers of ``||H_alpha||_2 / (2 n_l)``."""
    if not preacts_plus:
        raise ValueError("the Hamming regularizer needs a net with ReLU layers")
    per_layer = []
    for zp, zm in zip(preacts_plus, preacts_minus):
        zp, zm = zp.flatten(1), zm.flatten(1)
        per_layer.append(HammingNorm.apply(zp, zm, alpha) / (2.0 * zp.shape[1]))
    return torch.stack(per_layer, dim=0).mean(dim=0)


def intrinsic_term(logits_plus: torch.Tensor, logits_minus: torch.Tensor) -> torch.Tensor:
    """Eq. (7) on the corner pair: per-sample ``||f(x+) - f(x-)||_2^2``."""
    return (logits_plus - logits_minus).pow(2).sum(dim=1)


def corner_pair(
    x: torch.Tensor, eps: float, input_range: tuple[float, float], generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sec. 5.4: ``(clip(x + rho), clip(x - rho))`` with a random corner ``rho``."""
    rho = random_corner(x, eps, generator)
    x0 = x.detach()
    return clip_to_range(x0 + rho, input_range), clip_to_range(x0 - rho, input_range)


class JinRinard(Regularizer):
    """gamma_I * intrinsic + gamma_H * Hamming on one random corner pair (x+, x-) per sample."""

    name = "jin-rinard"
    paper = "Jin & Rinard 2020, Manifold Regularization for Locally Stable Deep Neural Networks, Sec. 5.3-5.4, Eq. (7), Appendix B"

    def __init__(self, config: JinRinardConfig | None = None) -> None:
        self.config = config or JinRinardConfig()

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
        model: nn.Sequential,
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
        # two passes of the batch size, not one of cat([x+, x-]): faster on a CPU (module docstring)
        acts_plus = forward_with_activations(model, x_plus)
        acts_minus = forward_with_activations(model, x_minus)
        if cfg.intrinsic_weight > 0:
            intrinsic = intrinsic_term(acts_plus.logits, acts_minus.logits).mean()
            out.terms["intrinsic"] = gamma_i * intrinsic
            out.metrics["intrinsic_raw"] = float(intrinsic.detach())
            out.metrics["gamma_i"] = gamma_i
        if cfg.hamming_weight > 0:
            hamming = hamming_term(acts_plus.preacts, acts_minus.preacts, cfg.alpha).mean()
            out.terms["hamming"] = gamma_h * hamming
            out.metrics["hamming_raw"] = float(hamming.detach())
            out.metrics["gamma_h"] = gamma_h
            out.metrics["pattern_flips"] = pattern_flips(acts_plus.posts, acts_minus.posts)
        return out
