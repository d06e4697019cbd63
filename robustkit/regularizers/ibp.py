"""Interval bound propagation training (Gowal, Dvijotham, Stanforth, Bunel, Qin, Uesato,
Arandjelovic, Mann, Kohli 2018, "On the Effectiveness of Interval Bound Propagation for Training
Verifiably Robust Models"), the certified-training baseline of Jin & Rinard's Table 1 (Gowal et
al.: 32.04% verified on CIFAR-10 at 8/255, with a larger net).

Sec. 3: propagate the L-inf box around each input (radius the trainer's ``state.eps`` unless
``eps`` is set, intersected with the input range) through the net with interval arithmetic
(:func:`robustkit.network.passes.interval_pass` over the captured network), and train on the worst-case
logits ``z_hat``: the cross-entropy of ``z_hat`` with ``z_hat_y = 0`` and ``z_hat_j`` an upper
bound of ``z_j - z_y`` over the box. Those margins are bounded with the last linear layer merged
into the specification (Sec. 3, "elision of the last layer"): ``(W_j - W_y) h + b_j - b_y`` over
the box of its input ``h``, tighter than ``u_j - l_y`` from the logits' own intervals. Eq. (8)'s
objective ``kappa CE(z, y) + (1 - kappa) CE(z_hat, y)`` is here the trainer's clean CE plus
``weight * CE(z_hat, y)`` (``weight = 1``: kappa = 1/2, Gowal et al.'s final value); the eps
ramp of the trainer (``--eps-start``, ``--eps-ramp``) is Gowal et al.'s eps schedule, which they
found essential. Verification is exact (MILP / branch and bound), not IBP: the IBP bound only
trains. Any module :func:`robustkit.network.torch_capture.capture` reads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from robustkit.network import Network
from robustkit.network.passes import Activations, interval_pass
from robustkit.network.torch_capture import network_of
from robustkit.regularizers.base import RegOutput, Regularizer, ScheduleState
from robustkit.regularizers.options import require_nonneg
from robustkit.regularizers.perturb import clip_to_range


@dataclass(frozen=True)
class IBPConfig:
    """``weight``: factor of the worst-case cross-entropy; ``eps``: None = the trainer's ``state.eps``."""

    weight: float = 1.0
    eps: float | None = None

    def __post_init__(self) -> None:
        require_nonneg("ibp", weight=self.weight, eps=self.eps)


def worst_case_margins(net: Network | nn.Module, lower: torch.Tensor, upper: torch.Tensor, y: torch.Tensor
                       ) -> torch.Tensor:
    """``(B, classes)``: upper bounds of ``z_j - z_y`` over the box ``[lower, upper]`` (0 at ``j = y``),
    with the last layer merged into the margins when it is linear (a module: its captured layers)."""
    net = network_of(net, lower)
    last = net.layers[-1]
    if not last.nonlinear:
        sub = Network(net.layers[:-1], net.sample_shape, net.onnx_input_shape)
        _, center, radius = interval_pass(sub, lower, upper)
        k = last.out_dim
        eye = torch.eye(k, dtype=center.dtype, device=center.device)
        diff = eye.unsqueeze(0) - eye[y].unsqueeze(1)  # (B, classes, classes): e_j - e_y
        A = last.backward(diff)  # (B, classes, hidden)
        c = diff @ last.bias_tensor(center.dtype).to(center.device)
        margins = (A @ center.unsqueeze(2)).squeeze(2) + (A.abs() @ radius.unsqueeze(2)).squeeze(2) + c
    else:
        _, center, radius = interval_pass(net, lower, upper)
        lo, hi = center - radius, center + radius
        margins = hi - lo.gather(1, y.unsqueeze(1))
    return margins.scatter(1, y.unsqueeze(1), 0.0)


class IBPTraining(Regularizer):
    """weight * CE(z_hat, y) on the IBP worst-case logits over the eps box (Gowal et al. 2018)."""

    name = "ibp"
    paper = "Gowal et al. 2018, On the Effectiveness of Interval Bound Propagation for Training Verifiably Robust Models, Sec. 3, Eq. (6)-(8); certified-training baseline of Jin & Rinard 2020 Table 1"
    summary = "weight * CE of the interval worst-case logits over the eps-box (last layer merged into the margins)"
    terms = ("ibp",)
    config_cls = IBPConfig
    config: IBPConfig

    def __call__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        state: ScheduleState,
        clean: Activations,
    ) -> RegOutput:
        cfg = self.config
        eps = state.eps if cfg.eps is None else cfg.eps
        x0 = x.detach()
        lower = clip_to_range(x0 - eps, state.input_range)
        upper = clip_to_range(x0 + eps, state.input_range)
        margins = worst_case_margins(clean.network, lower, upper, y)
        loss = F.cross_entropy(margins, y)
        out = RegOutput()
        out.terms["ibp"] = cfg.weight * loss
        with torch.no_grad():
            out.metrics["ibp_ce"] = float(loss)
            # share of the batch whose every margin is provably negative: IBP-verified accuracy
            others = margins.scatter(1, y.unsqueeze(1), -torch.inf)
            out.metrics["ibp_verified"] = float((others.max(dim=1).values < 0).double().mean())
        return out
