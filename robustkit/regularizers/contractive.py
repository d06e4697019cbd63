"""Deep Contractive Networks (Gu & Rigazio 2015, "Towards Deep Neural Network Architectures
Robust to Adversarial Examples").

Sec. 4.2, Eq. (6): the layer-wise contractive penalty
``sum_j lambda_j || d h_j / d h_{j-1} ||_F^2`` with ``h_0 = x`` and ``h_{H+1} = y`` the softmax
output, a tractable approximation of the full penalty ``||dy/dx||`` of Eq. (5) (itself the
contractive auto-encoder penalty of Eq. (4) carried to a classifier). The batch mean replaces the
paper's sum over samples (the trainer's cross-entropy is a mean too).

Closed forms -- no autograd Jacobians on the hot path, only the clean forward's pre-activations:

* ``h = ReLU(W h' + b)``: ``J = diag(1[z > 0]) W`` so ``||J||_F^2 = sum_i 1[z_i > 0] ||W_i||^2``.
* ``h = ReLU(conv(h'))``: row ``(o, p)`` of ``J`` holds ``W[o, c, t]`` for every kernel tap ``t``
  that lands inside the input at output position ``p`` (taps on zero padding contribute nothing),
  so ``||J||_F^2 = sum_{o,p} 1[z_{o,p} > 0] sum_{t valid at p} E[o, t]`` with
  ``E[o, t] = sum_c W[o, c, t]^2``. The inner sum is the convolution of an all-ones input with
  ``E`` under the layer's own stride/padding/dilation (zero padding = invalid tap).
* softmax output ``y = softmax(W h + b)``: ``J = (diag(p) - p p^T) W = S W`` so
  ``||J||_F^2 = sum_{ij} (S S)_{ij} (W W^T)_{ij}`` (S is symmetric), a K x K computation.
* A ``Normalize`` in front of the first layer is folded in: the Jacobian is taken w.r.t. the raw
  input, i.e. ``W`` is scaled by ``1/std`` per input channel.

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
from robustkit.nets import Activations, Normalize
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


def _channel_scale(scale: torch.Tensor | None, n_channels: int) -> torch.Tensor | None:
    if scale is None or scale.numel() == 1:
        return scale
    if scale.numel() != n_channels:
        raise InputError(
            f"contractive: Normalize has {scale.numel()} channels but the next layer sees {n_channels}"
        )
    return scale


def linear_relu_frobenius(layer: nn.Linear, active: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
    """``||diag(1[z>0]) W||_F^2`` per sample; ``scale`` multiplies input features (1/std)."""
    w = layer.weight
    if scale is not None:
        w = w * scale.view(1, -1) if scale.numel() > 1 else w * scale.view(1, 1)
    row_energy = w.pow(2).sum(dim=1)  # (out,)
    return active.flatten(1).to(w.dtype) @ row_energy


def conv_tap_energy(layer: nn.Conv2d, in_hw: tuple[int, int], scale: torch.Tensor | None = None) -> torch.Tensor:
    """``S[o, p] = sum_{t valid at p} sum_c W[o, c, t]^2``, shape ``(O, Ho, Wo)``."""
    if layer.padding_mode != "zeros":
        raise InputError(f"contractive: conv padding_mode {layer.padding_mode!r} is not supported (zeros only)")
    w = layer.weight
    if scale is not None:
        s = _channel_scale(scale, w.shape[1] * layer.groups)
        if s is not None and s.numel() > 1:
            # per input channel; with groups, input channel g*Cg + c feeds weight column c of group g
            cg = w.shape[1]
            s_full = s.view(layer.groups, cg)
            out_per_group = w.shape[0] // layer.groups
            s_rows = s_full.repeat_interleave(out_per_group, dim=0)  # (O, Cg)
            w = w * s_rows.view(w.shape[0], cg, 1, 1)
        elif s is not None:
            w = w * s.view(1, 1, 1, 1)
    energy = w.pow(2).sum(dim=1, keepdim=True)  # (O, 1, kh, kw)
    ones = torch.ones(1, 1, *in_hw, dtype=w.dtype, device=w.device)
    return F.conv2d(ones, energy, None, layer.stride, layer.padding, layer.dilation)[0]


def conv_relu_frobenius(
    layer: nn.Conv2d, active: torch.Tensor, in_hw: tuple[int, int], scale: torch.Tensor | None = None
) -> torch.Tensor:
    """``||diag(1[z>0]) J_conv||_F^2`` per sample (closed form above)."""
    tap = conv_tap_energy(layer, in_hw, scale)
    return (active.to(tap.dtype) * tap.unsqueeze(0)).flatten(1).sum(dim=1)


def softmax_frobenius(layer: nn.Linear, logits: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
    """``||(diag(p) - p p^T) W||_F^2`` per sample, via ``sum (S S) * (W W^T)``."""
    w = layer.weight
    if scale is not None:
        w = w * scale.view(1, -1) if scale.numel() > 1 else w * scale.view(1, 1)
    p = torch.softmax(logits, dim=1)
    s = torch.diag_embed(p) - p.unsqueeze(2) * p.unsqueeze(1)
    gram = w @ w.t()
    return (torch.bmm(s, s) * gram.unsqueeze(0)).sum(dim=(1, 2))


def layer_frobenius_norms(
    model: nn.Sequential, clean: Activations, output: str = "softmax"
) -> list[torch.Tensor]:
    """Per-layer ``||d h_j / d h_{j-1}||_F^2`` (each shape ``(B,)``) for every Linear/Conv layer of
    a robustkit Sequential, the output layer last (``output="none"`` leaves it out)."""
    layers = list(model)
    scale: torch.Tensor | None = None
    n_relu = 0
    n_lin = 0
    norms: list[torch.Tensor] = []
    for i, layer in enumerate(layers):
        if isinstance(layer, Normalize):
            if n_lin > 0:
                raise InputError("contractive: Normalize is only supported in front of the first layer")
            scale = (1.0 / layer.std).flatten()
        elif isinstance(layer, nn.Flatten):
            continue
        elif isinstance(layer, nn.ReLU):
            n_relu += 1
        elif isinstance(layer, (nn.Linear, nn.Conv2d)):
            inp = clean.linear_inputs[n_lin]
            n_lin += 1
            followed_by_relu = i + 1 < len(layers) and isinstance(layers[i + 1], nn.ReLU)
            if followed_by_relu:
                active = clean.preacts[n_relu] > 0
                if isinstance(layer, nn.Conv2d):
                    norms.append(conv_relu_frobenius(layer, active, tuple(inp.shape[-2:]), scale))
                else:
                    norms.append(linear_relu_frobenius(layer, active, _flat_scale(scale, inp)))
            elif i == len(layers) - 1 and isinstance(layer, nn.Linear):
                if output == "softmax":
                    norms.append(softmax_frobenius(layer, clean.logits, _flat_scale(scale, inp)))
                elif output == "logits":
                    w = layer.weight
                    fs = _flat_scale(scale, inp)
                    if fs is not None:
                        w = w * fs.view(1, -1) if fs.numel() > 1 else w * fs.view(1, 1)
                    norms.append(w.pow(2).sum().expand(clean.logits.shape[0]))
            else:
                raise InputError(
                    "contractive: every Linear/Conv layer must be followed by a ReLU, except a final Linear "
                    f"output layer (layer {i}: {type(layer).__name__})"
                )
            scale = None
        else:
            raise InputError(f"contractive: unsupported layer {type(layer).__name__} at position {i}")
    return norms


def _flat_scale(scale: torch.Tensor | None, inp: torch.Tensor) -> torch.Tensor | None:
    """Expand a per-channel scale to the flattened features a Linear layer sees."""
    if scale is None or scale.numel() == 1:
        return scale
    features = inp.shape[1]
    if features % scale.numel() != 0:
        raise InputError("contractive: cannot map the Normalize channels onto the Linear layer's features")
    return scale.repeat_interleave(features // scale.numel())


class Contractive(Regularizer):
    """Layer-wise contractive penalty of Deep Contractive Networks (Eq. 6), closed form."""

    name = "contractive"
    paper = "Gu & Rigazio 2015, Towards Deep Neural Network Architectures Robust to Adversarial Examples, Sec. 4.2 Eq. (6)"

    def __init__(self, config: ContractiveConfig | None = None) -> None:
        self.config = config or ContractiveConfig()

    def __call__(
        self,
        model: nn.Sequential,
        x: torch.Tensor,
        y: torch.Tensor,
        state: ScheduleState,
        clean: Activations,
    ) -> RegOutput:
        cfg = self.config
        norms = layer_frobenius_norms(model, clean, cfg.output)
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
