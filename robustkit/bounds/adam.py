"""Adam (Kingma & Ba 2015, "Adam: A Method for Stochastic Optimization", Algorithm 1) with torch's
defaults, written out for the bound optimisers (alpha-CROWN's slopes, the final pass of branch
and bound): its moments are plain tensors, so they can leave a batch with the rows they belong
to, and it needs no ``torch.optim`` (whose first use imports ``torch._dynamo``: about 2 s).
``tests/test_final_pass.py`` checks it against ``torch.optim.Adam``."""

from __future__ import annotations

import torch

__all__ = ["ADAM_BETAS", "ADAM_EPS", "adam_step"]

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


def adam_step(p: torch.Tensor, g: torch.Tensor, m1: torch.Tensor, m2: torch.Tensor, step: int, lr: float
              ) -> torch.Tensor:
    """One descent step on ``p`` along the gradient ``g`` (``step``: 1 for the first), updating
    the moments ``m1``, ``m2`` in place; returns the new parameter (a fresh tensor, no grad)."""
    b1, b2 = ADAM_BETAS
    g = torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0)  # a step must keep the parameter a number
    m1.mul_(b1).add_(g, alpha=1 - b1)
    m2.mul_(b2).addcmul_(g, g, value=1 - b2)
    denom = (m2.sqrt() / (1 - b2 ** step) ** 0.5).add_(ADAM_EPS)
    return p.detach().addcdiv(m1, denom, value=-lr / (1 - b1 ** step))
