"""Deep Contractive Networks (Gu & Rigazio 2015, "Towards Deep Neural Network Architectures
Robust to Adversarial Examples").

Sec. 4.2, Eq. (6): the layer-wise contractive penalty
``sum_j lambda_j || d h_j / d h_{j-1} ||_F^2`` with ``h_0 = x`` and ``h_{H+1} = y`` the softmax
output, a tractable approximation of the full penalty ``||dy/dx||`` of Eq. (5) (itself the
contractive auto-encoder penalty of Eq. (4) carried to a classifier). The batch mean replaces the
paper's sum over samples (the trainer's cross-entropy is a mean too).

Closed forms over the network's operators (the verifier's classes; a stage is the linear layers
between two nonlinear operators) -- no autograd Jacobians on the hot path, only the clean forward's
pre-activations: ``h = f(W h' + b)`` has ``||J||_F^2 = sum_i f'(z_i)^2 ||W_i||^2`` with the rows'
squared norms from ``LinearLayer.row_energy``; for a ReLU ``f'(z) = 1[z > 0]``:

* ``h = ReLU(W h' + b)``: ``J = diag(1[z > 0]) W`` so ``||J||_F^2 = sum_i 1[z_i > 0] ||W_i||^2``.
* ``h = ReLU(conv(h'))``: row ``(o, p)`` of ``J`` holds ``W[o, c, t]`` for every kernel tap ``t``
  that lands inside the input at output position ``p`` (taps on zero padding contribute nothing),
  so ``||J||_F^2 = sum_{o,p} 1[z_{o,p} > 0] sum_{t valid at p} E[o, t]`` with
  ``E[o, t] = sum_c W[o, c, t]^2``. The inner sum is the convolution of an all-ones input with
  ``E`` under the layer's own stride/padding/dilation (zero padding = invalid tap).
* softmax output ``y = softmax(W h + b)``: ``J = (diag(p) - p p^T) W = S W`` so
  ``||J||_F^2 = sum_{ij} (S S)_{ij} (W W^T)_{ij}`` (S is symmetric), a K x K computation.
* A diagonal map (``Normalize``, BatchNormalization) or a selection next to the stage's mixing
  layer is folded in: the Jacobian is taken w.r.t. the stage's input, i.e. ``W`` is scaled by
  ``1/std`` per input channel; a residual sum's rows hold both paths' weights.
* Two mixing layers in one stage compose when the first feeds each input to one output only
  (``LinearLayer.feeds_once``: a MaxPool's final sums): its rows have disjoint supports, so
  ``||(W2 W1)_i||^2 = sum_j W2_ij^2 ||W1_j||^2``. A lowered MaxPool's tournament ReLUs are
  operators of the network like any other: their stages' Jacobians are fixed selections, whose
  norms add a constant to the term and nothing to its gradient.

``lambda_j = weight * layer_weights[j]`` (Eq. 6 allows one lambda per layer; the paper does not
report values -- the default ``weight = 1e-3`` is robustkit's choice for MNIST-sized nets).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from robustkit.errors import InputError
from robustkit.network import Network
from robustkit.network.passes import Activations
from robustkit.regularizers.base import RegOutput, Regularizer, ScheduleState
from robustkit.regularizers.options import require_choice, require_nonneg


@dataclass(frozen=True)
class ContractiveConfig:
    """``weight``: lambda of every layer; ``layer_weights``: optional per-layer factors (one per
    Linear/Conv layer, output layer last); ``output``: penalty of the last layer -- the softmax
    Jacobian (paper), the logit Jacobian ``||W||_F^2``, or none."""

    weight: float = 1e-3
    layer_weights: tuple[float, ...] = ()
    output: Literal["softmax", "logits", "none"] = "softmax"

    def __post_init__(self) -> None:
        require_nonneg("contractive", weight=self.weight)
        for i, w in enumerate(self.layer_weights):
            require_nonneg("contractive", **{f"layer_weights[{i}]": w})
        require_choice("contractive", "output", self.output, ("softmax", "logits", "none"))


def softmax_frobenius(weight: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """``||(diag(p) - p p^T) W||_F^2`` per sample, via ``sum (S S) * (W W^T)``."""
    p = torch.softmax(logits, dim=1)
    s = torch.diag_embed(p) - p.unsqueeze(2) * p.unsqueeze(1)
    gram = weight @ weight.t()
    return (torch.bmm(s, s) * gram.unsqueeze(0)).sum(dim=(1, 2))


def layer_frobenius_norms(net: Network | nn.Module, clean: Activations, output: str = "softmax") -> list[torch.Tensor]:
    """Per stage ``||d h_j / d h_{j-1}||_F^2`` (each ``(B,)``): a stage is the linear layers between
    two nonlinear operators (one of them mixing inputs: a Dense, a Conv, a residual sum; diagonal maps
    and selections before or after it fold in) and the operator after them, whose derivative at
    the clean point scales the rows: ``sum_i f'(z_i)^2 ||J_i||^2`` with the rows' squared norms from
    :meth:`LinearLayer.row_energy`. The output stage last (``output``: the softmax Jacobian, the
    logits', or none)."""
    net = clean.network if not isinstance(net, Network) else net
    norms: list[torch.Tensor] = []
    dtype = clean.logits.dtype
    sigma = torch.ones(1, net.in_dim, dtype=dtype)  # squared scales of diagonal maps so far
    energy: torch.Tensor | None = None  # rows' squared norms of the stage's mixing layer
    mixing = None
    disjoint = False  # the stage's rows so far have disjoint supports (another mixing layer composes)
    for i, layer in enumerate(net.layers):
        if layer.nonlinear:
            if energy is not None:
                deriv = layer.derivative(clean.inputs[i])  # type: ignore[attr-defined]
                norms.append((deriv.pow(2) * energy).sum(1))
            energy, mixing = None, None
            sigma = torch.ones(1, layer.out_dim, dtype=dtype)
        elif layer.mixes and energy is None:
            energy, mixing, disjoint = layer.row_energy(sigma), i, layer.feeds_once
        elif energy is None:
            sigma = layer.row_energy(sigma)
        elif layer.mixes and not disjoint:
            raise InputError(f"contractive: layers {mixing} and {i} ({layer.describe()}) both mix inputs with "
                             "no operator between them: no closed-form Jacobian per layer")
        else:
            energy, mixing, disjoint = layer.row_energy(energy), (i if layer.mixes else mixing), disjoint and layer.feeds_once
    if energy is not None and output != "none":
        last = net.layers[mixing] if mixing is not None else None
        if output == "logits":
            norms.append(energy.sum(1).expand(clean.logits.shape[0]))
        elif last is not None and mixing == len(net.layers) - 1:
            eye = torch.eye(last.out_dim, dtype=dtype)
            weight = last.backward(eye) * sigma.sqrt()  # W itself (any linear layer), differentiable
            norms.append(softmax_frobenius(weight, clean.logits))
        else:
            raise InputError("contractive: the softmax Jacobian needs the net to end in a linear layer that mixes "
                             "its inputs (use output=logits or none)")
    return norms


class Contractive(Regularizer):
    """Layer-wise contractive penalty of Deep Contractive Networks (Eq. 6), closed form."""

    name = "contractive"
    paper = "Gu & Rigazio 2015, Towards Deep Neural Network Architectures Robust to Adversarial Examples, Sec. 4.2 Eq. (6)"
    summary = "sum_j lambda_j ||dh_j/dh_{j-1}||_F^2 layer-wise, closed form (operator derivatives, row norms, softmax Jacobian)"
    terms = ("contractive",)
    config_cls = ContractiveConfig
    config: ContractiveConfig

    def __call__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        state: ScheduleState,
        clean: Activations,
    ) -> RegOutput:
        cfg = self.config
        norms = layer_frobenius_norms(clean.network, clean, cfg.output)
        lw = cfg.layer_weights or (1.0,) * len(norms)
        if len(lw) != len(norms):
            raise InputError(
                f"contractive: layer_weights has {len(lw)} entries but the net has {len(norms)} penalised layers"
            )
        out = RegOutput()
        total = norms[0].new_zeros(())
        for j, (w, n) in enumerate(zip(lw, norms)):
            value = n.mean()
            out.metrics[f"contractive_layer{j}"] = float(value.detach())
            total = total + w * value
        out.terms["contractive"] = cfg.weight * total
        return out
