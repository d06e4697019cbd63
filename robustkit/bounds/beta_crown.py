"""The final pass of branch and bound: the CROWN lower bound of ``C y`` over a box under ReLU
split constraints, with optimisable lower slopes (alpha) and split multipliers (beta;
Wang et al. 2021, "Beta-CROWN"), batched over domains and specification rows."""

from __future__ import annotations

import torch

from robustkit.bounds.crown import backward_pass
from robustkit.bounds.floaterr import FloatErrors
from robustkit.network import Network

__all__ = ["spec_backward"]


def spec_backward(
    net: Network, C: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, pre: dict[int, tuple[torch.Tensor, torch.Tensor]],
    alphas: dict[int, torch.Tensor] | None = None,
    betas: dict[int, torch.Tensor] | None = None,
    signs: dict[int, torch.Tensor] | None = None,
    errs: FloatErrors | None = None,
    parts: dict[int, tuple[torch.Tensor, ...]] | None = None,
) -> tuple[torch.Tensor, dict[int, torch.Tensor], torch.Tensor]:
    """CROWN lower bound ``(B, m)`` of ``C y`` (``C``: ``(B, m, out)``, unwidened), with the
    coefficients on each nonlinear operator's output (``{r: (B, m, d_r)}``, before relaxing it)
    and on the input (``(B, m, in_dim)``): :func:`robustkit.bounds.crown.backward_pass` over the
    whole net. ``alphas[r]``: relaxation parameters ``(B, m, d_r)``.

    ``signs[r]`` (``(B, units_r)``, entries -1/0/+1): split constraints ``sign (z - b) >= 0`` on the
    operator's pre-activation ``z`` at its kinks ``b``; ``betas[r] >= 0`` (``(B, m, units_r)``) their
    multipliers (beta-CROWN, Wang et al. 2021, Eq. 7): on the domain ``C y >= C y - beta sign (z - b)``,
    so the bound of the right-hand side, computed over the box, is valid for the domain. With ``errs``
    the rounding of every linear layer is charged (valid for the float32 network, less the
    float64 slack ``errs.spec_slack(C, betas)``). ``parts[r]``: the operator's
    ``relaxation_parts`` of ``pre[r]`` (each ``(B, 1, d_r)``), computed once by a caller that
    evaluates many slopes on the same bounds."""
    coeffs: dict[int, torch.Tensor] = {}
    bound, A_in = backward_pass(net, len(net.layers) - 1, C, None, lo, hi, pre, alphas, errs, betas, signs, parts,
                                coeffs)
    return bound, coeffs, A_in
