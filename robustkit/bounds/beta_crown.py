"""The final pass of branch and bound: the CROWN lower bound of ``C y`` over a box under ReLU
split constraints, with optimisable lower slopes (alpha) and split multipliers (beta;
Wang et al. 2021, "Beta-CROWN"), batched over domains and specification rows."""

from __future__ import annotations

import torch

from robustkit.bounds.floaterr import FloatErrors
from robustkit.network import LinearLayer, Network, ReLU

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
    coefficients on each ReLU's output (``{r: (B, m, d_r)}``, before relaxing it) and on the
    input (``(B, m, in_dim)``). ``alphas[r]``: lower slopes ``(B, m, d_r)``.

    ``signs[r]`` (``(B, d_r)``, entries -1/0/+1): split constraints ``sign * z >= 0`` on the
    ReLU's pre-activation ``z``; ``betas[r] >= 0`` (``(B, m, d_r)``) their multipliers
    (beta-CROWN, Wang et al. 2021, Eq. 7): on the domain ``C y >= C y - beta sign z``, so the
    bound of the right-hand side, computed over the box, is valid for the domain. With ``errs``
    the rounding of every linear layer is charged (valid for the float32 network, less the
    float64 slack ``errs.spec_slack(C, betas)``). ``parts[r]``: the ReLU's
    ``relaxation_parts`` of ``pre[r]`` (each ``(B, 1, d_r)``), computed once by a caller that
    evaluates many slopes on the same bounds."""
    A = C
    c = torch.zeros(C.shape[:-1], dtype=C.dtype)
    coeffs: dict[int, torch.Tensor] = {}
    for i in range(len(net.layers) - 1, -1, -1):
        layer = net.layers[i]
        if isinstance(layer, LinearLayer):
            c = c + A @ layer.bias_tensor(A.dtype)
            if errs is not None:
                c = c - (A.abs() @ errs.rounding[i].unsqueeze(-1)).squeeze(-1)
            A = layer.backward(A)
        elif isinstance(layer, ReLU):
            coeffs[i] = A
            l, u = pre[i]
            alpha = None if alphas is None else alphas.get(i)
            lam_l, lam_u, mu_u = layer.relaxation(l.unsqueeze(1), u.unsqueeze(1), alpha,
                                                  None if parts is None else parts.get(i))
            neg = A.clamp(max=0)
            c = c + (neg * mu_u).sum(-1)
            A = A.clamp(min=0) * lam_l + neg * lam_u
            if betas is not None and signs is not None and i in betas:
                A = A - betas[i] * signs[i].unsqueeze(1)
        else:
            raise TypeError(f"branch and bound does not support layer {layer.describe()}")
    center = ((lo + hi) / 2).unsqueeze(-1)
    radius = ((hi - lo) / 2).unsqueeze(-1)
    bound = c + (A @ center).squeeze(-1) - (A.abs() @ radius).squeeze(-1)
    return bound, coeffs, A
