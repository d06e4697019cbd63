"""Differentiable passes over a :class:`~robustkit.network.network.Network` for training: the same
operator classes the verifier uses, in the input's dtype, autograd through the layers' tensors
(the live parameters of a captured module, :mod:`robustkit.network.torch_capture`).

* :func:`forward_with_activations`: logits, and every nonlinear operator's input and output;
* :func:`interval_pass`: interval bounds of every nonlinear operator's input and of the output
  (IBP, the ReLU-stability loss).

Only the neurons of an operator count (its identity coordinates carry other tensors of a lowered
graph): :attr:`Activations.masks` and :func:`interval_pass` hand them over restricted to those.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from robustkit.network.network import Network


@dataclass
class Activations:
    """One forward pass with its hidden quantities.

    ``preacts[k]`` is the input of the model's k-th nonlinear operator (its neurons only: identity
    coordinates of a lowered graph left out; the ReLUs of a lowered MaxPool are not the model's),
    ``posts[k]`` its output (likewise); ``inputs[i]`` the whole input of ``net.layers[i]`` (every
    layer, internal operators included); ``net`` the network that ran (for further passes over the
    same operators)."""

    logits: torch.Tensor
    net: Network | None = None
    preacts: list[torch.Tensor] = field(default_factory=list)
    posts: list[torch.Tensor] = field(default_factory=list)
    inputs: list[torch.Tensor] = field(default_factory=list)

    @property
    def network(self) -> Network:
        """The network that ran (for further passes over the same operators)."""
        if self.net is None:
            raise ValueError("these activations did not come from a robustkit Network "
                             "(robustkit.network.passes.forward_with_activations)")
        return self.net

    @property
    def last_hidden(self) -> torch.Tensor:
        """Activations of the last hidden layer, flattened (the embedding used by MRnet/MAT)."""
        if not self.posts:
            raise ValueError("the net has no hidden layer")
        return self.posts[-1].flatten(1)


def neurons(layer: object, t: torch.Tensor) -> torch.Tensor:
    """``t`` (``(B, dim)``) restricted to the operator's neurons (all of it without carried ones)."""
    ident = getattr(layer, "identity", None)
    return t if ident is None else t[:, ~ident.to(t.device)]


def forward_with_activations(net: Network, x: torch.Tensor) -> Activations:
    """Run ``net`` on ``x`` (``(B, *sample_shape)``) keeping every layer's input and the model's
    nonlinear operators' neurons before and after (differentiable)."""
    h = x.reshape(x.shape[0], -1)
    acts = Activations(h, net)
    for layer in net.layers:
        acts.inputs.append(h)
        out = layer.forward(h)
        if layer.nonlinear and getattr(layer, "part_of", None) is None:
            acts.preacts.append(neurons(layer, h))
            acts.posts.append(neurons(layer, out))
        h = out
    acts.logits = h
    return acts


def interval_pass(net: Network, lower: torch.Tensor, upper: torch.Tensor
                  ) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor, torch.Tensor]:
    """Interval bounds through ``net`` over ``[lower, upper]`` (``(B, *sample_shape)``; no float
    error: for training): ``(l, u)`` of every nonlinear operator's input (its neurons only), and the
    center and radius of the output box, all differentiable."""
    lo = lower.reshape(lower.shape[0], -1)
    hi = upper.reshape(upper.shape[0], -1)
    bounds: list[tuple[torch.Tensor, torch.Tensor]] = []
    for layer in net.layers:
        if layer.nonlinear:
            bounds.append((neurons(layer, lo), neurons(layer, hi)))
        lo, hi = layer.interval(lo, hi)
    return bounds, (hi + lo) * 0.5, (hi - lo) * 0.5
