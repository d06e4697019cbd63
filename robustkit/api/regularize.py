"""``rk.regularizer``: robustkit's regularizers as a drop-in term for a user's own training loop::

    reg = rk.regularizer("jin-rinard", eps=0.1)
    for x, y in loader:
        logits = model(x)
        loss = F.cross_entropy(logits, y) + reg(model, x, y, logits=logits).loss
        opt.zero_grad(); loss.backward(); opt.step()

The model is captured once (``torch.fx`` tracing, :mod:`robustkit.network.torch_capture`): its
``nn.ReLU`` modules and ``F.relu`` calls, residual sums and concatenations become the verifier's
operators over the model's live parameters, and every interval and linear pass the regularizer
needs follows that graph; a module it cannot trace or read is refused with a
:class:`~robustkit.network.torch_capture.CaptureError` naming it and its path in the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from robustkit.errors import InputError


@dataclass
class RegularizerTerms:
    """One call's outcome. ``loss``: what to add to the clean cross-entropy (a regularizer that
    replaces the clean loss, such as PGD training, gives its loss minus the clean cross-entropy, so
    that ``ce + loss`` is its loss); ``terms``: each weighted term; ``metrics``: floats to log;
    ``logits``: the clean logits used."""

    loss: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    logits: torch.Tensor | None = None
    replaces_clean_loss: bool = False


class DropInRegularizer:
    """Callable ``reg(model, x, y)`` (see the module docstring). ``epoch`` (fractional, settable or
    given per call) drives the regularizers' own ramps (e.g. Jin & Rinard's weights) out of
    ``epochs``; ``eps`` (also per call) is the training radius; ``value_range`` the valid input range."""

    def __init__(self, regularizers: Sequence[Any], *, eps: float, epochs: int, value_range: tuple[float, float],
                 specs: Sequence[str]) -> None:
        self.regularizers = list(regularizers)
        self.eps = float(eps)
        self.epochs = int(epochs)
        self.value_range = (float(value_range[0]), float(value_range[1]))
        self.specs = tuple(specs)
        self.epoch = 0.0
        self.step = 0

    def __repr__(self) -> str:
        return f"rk.regularizer({', '.join(map(repr, self.specs))}, eps={self.eps:g}, epochs={self.epochs})"

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, logits: torch.Tensor | None = None,
                 epoch: float | None = None, eps: float | None = None) -> RegularizerTerms:
        """The regularizers' terms for the batch ``(x, y)``. ``logits``: the model's own output on
        ``x`` if already computed (else the captured forward's). Advances ``step``."""
        from robustkit.network.passes import forward_with_activations
        from robustkit.network.torch_capture import captured
        from robustkit.regularizers.base import ScheduleState

        if not isinstance(model, nn.Module):
            raise InputError(f"a regularizer takes the torch nn.Module being trained, got {type(model).__name__}")
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
            raise InputError("x and y must be tensors (the batch and its labels)")
        if epoch is not None:
            self.epoch = float(epoch)
        cap = captured(model, x)
        if logits is None:
            clean = cap.forward_with_activations(x)
        else:  # the user's own forward already ran (and updated any BatchNorm statistics): not again
            clean = forward_with_activations(cap.network(), x)
            clean.logits = logits
        if clean.logits.shape[0] != y.shape[0] or (y.numel() and (int(y.min()) < 0 or int(y.max()) >= clean.logits.shape[1])):
            raise InputError(f"labels must be {x.shape[0]} class indices in 0..{clean.logits.shape[1] - 1}")
        state = ScheduleState(epoch=self.epoch, step=self.step, eps=self.eps if eps is None else float(eps),
                              total_epochs=self.epochs, input_range=self.value_range)
        out = RegularizerTerms(torch.zeros((), device=x.device), logits=clean.logits)
        for reg in self.regularizers:
            res = reg(model, x, y, state, clean)
            for key, term in res.terms.items():
                out.terms[f"{reg.name}.{key}"] = term
                out.loss = out.loss + term
            out.metrics.update({f"{reg.name}.{k}": float(v) for k, v in res.metrics.items()})
            out.replaces_clean_loss = out.replaces_clean_loss or res.replaces_clean_loss
        if out.replaces_clean_loss:
            out.loss = out.loss - F.cross_entropy(clean.logits, y)
        self.step += 1
        return out


def _option_text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def regularizer(name: str, *more: str, eps: float = 0.0, epochs: int = 1,
                value_range: tuple[float, float] = (0.0, 1.0), weight: float | None = None,
                **options: Any) -> DropInRegularizer:
    """A drop-in regularizer for a user's training loop (module docstring).

    ``name`` and ``more``: spec strings as ``robustkit train -r`` takes them (``"pgd:steps=7"``,
    ``"relu-stability=0.001"``; ``robustkit regularizers`` lists every name and option), all applied
    together; ``weight`` and ``options`` set the first one's weight and options by keyword, e.g.
    ``rk.regularizer("mrnet", weight=0.1, warmup_epochs=0)``. ``eps``: the training radius;
    ``epochs``: the length of training the regularizers' ramps refer to."""
    from robustkit.regularizers.registry import build_regularizers

    if not isinstance(name, str):
        raise InputError(f"a regularizer is named by a string (e.g. 'jin-rinard'), got {type(name).__name__}")
    head = name
    if weight is not None:
        if "=" in name.split(":")[0]:
            raise InputError(f"{name!r} already sets a weight; drop weight= or the =WEIGHT")
        base, _, rest = name.partition(":")
        head = f"{base}={weight!r}" + (f":{rest}" if rest else "")
    if options:
        head += "".join(f":{k}={_option_text(v)}" for k, v in options.items())
    specs = [head, *more]
    if not (eps >= 0) or epochs < 1:
        raise InputError(f"eps must be >= 0 and epochs >= 1, got eps={eps}, epochs={epochs}")
    regs = build_regularizers(specs)
    return DropInRegularizer(regs, eps=eps, epochs=epochs, value_range=value_range, specs=specs)
