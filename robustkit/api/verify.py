"""``rk.verify``: robustness of a batch of samples, the same pipeline as ``robustkit verify``."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch

from robustkit.api.models import ArrayLike, ModelLike, check_eps, labels_of, model_and_samples, model_name
from robustkit.errors import InputError

#: ``method="auto"``: the command line's default method (complete branch and bound).
AUTO_METHOD = "bab"


@dataclass(frozen=True)
class SampleResult:
    """The outcome for one sample.

    ``status``: ``verified`` (proven for the float32 ONNX graph onnxruntime runs), ``falsified``
    (``counterexample`` is a point of the eps-box that onnxruntime classifies otherwise),
    ``misclassified`` (the clean sample already is), ``timeout``, ``unknown`` or ``error``.
    ``stage``: what decided it (``clean``, ``attack``, ``bounds``, ``milp``, ``bab``).
    ``margin``: a proven lower bound of ``logit[label] - max_other logit`` over the eps-box from
    the bounds stage (> 0 proves robustness; None when the bounds stage did not run).
    ``unstable_per_layer``: ReLUs the bounds leave unstable, per layer. ``record``: every field
    robustkit keeps for the sample (as in ``records.jsonl``)."""

    index: int
    label: int
    prediction: int | None
    status: str
    stage: str
    time: float
    margin: float | None
    counterexample: torch.Tensor | None
    unstable_per_layer: tuple[int, ...] | None
    record: Mapping[str, Any]

    @classmethod
    def from_record(cls, record: Mapping[str, Any], sample_shape: tuple[int, ...], index: int) -> "SampleResult":
        cex = record.get("counterexample")
        unstable = record.get("unstable_per_layer")
        bound = record.get("bound_margin")
        return cls(
            index=index, label=int(record.get("label", -1)),
            prediction=None if record.get("pred") is None else int(record["pred"]),
            status=str(record.get("status", "error")), stage=str(record.get("stage", "none")),
            time=float(record.get("time", 0.0)),
            margin=None if bound is None else -float(bound),
            counterexample=None if cex is None else torch.tensor(cex, dtype=torch.float32).reshape(sample_shape),
            unstable_per_layer=None if unstable is None else tuple(int(u) for u in unstable),
            record=dict(record),
        )


@dataclass(frozen=True)
class VerifyResult:
    """One :class:`SampleResult` per sample (in the order of ``x``) and the summary the CLI prints
    (``summary``: clean, PGD and verified accuracy in %, counts per status, times).
    ``str(result)`` is the CLI's table; ``result.table("csv")`` another format."""

    samples: tuple[SampleResult, ...]
    summary: Mapping[str, Any]
    eps: float
    model: str
    settings: Mapping[str, Any]
    records_path: Path | None = None

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[SampleResult]:
        return iter(self.samples)

    def __getitem__(self, i: int) -> SampleResult:
        return self.samples[i]

    @property
    def statuses(self) -> list[str]:
        return [s.status for s in self.samples]

    def table(self, fmt: str = "md") -> str:
        """The summary row as ``robustkit verify`` prints it (``md``, ``csv`` or ``json``)."""
        from robustkit.numbers import format_eps
        from robustkit.report.summary import format_rows

        return format_rows([{"model": self.model, "eps": format_eps(self.eps), **self.summary}], fmt, label_key="model")

    def __str__(self) -> str:
        return self.table()


def verify(
    model: ModelLike,
    x: ArrayLike,
    y: ArrayLike,
    eps: float | str,
    *,
    method: str = "auto",
    bounds: str = "crown",
    timeout: float = 60.0,
    workers: int = 1,
    attack_steps: int = 50,
    attack_restarts: int = 4,
    seed: int = 0,
    value_range: tuple[float, float] | None = None,
    out: "str | os.PathLike[str] | None" = None,
    quiet: bool = True,
    **options: Any,
) -> VerifyResult:
    """Verify L-inf robustness of ``model`` at every sample of ``x`` (labels ``y``) at radius ``eps``.

    ``model``: an ``nn.Module`` (exported to ONNX in memory with ``x``'s sample shape and checked
    against onnxruntime: what is verified is that float32 graph), an ONNX file path, or ONNX bytes.
    ``x``: ``(N, *sample_shape)`` tensor or array in ``value_range`` (default: the model file's
    metadata, else [0, 1]); ``y``: ``N`` class indices. ``method``: ``auto`` (branch and bound, as
    ``robustkit verify``), ``bab``, ``milp``, or a bound method alone (``crown``, ``alpha-crown``,
    ...); ``bounds``: the bounds that start the complete method; ``timeout``: seconds per sample.
    ``workers``: 1 verifies in this process; more runs that many worker processes, each sample with
    a hard time limit (call from under ``if __name__ == "__main__":``). ``out``: a folder keeping
    one record per sample (resumable, as ``robustkit verify --out``); None keeps nothing on disk.
    ``options``: any other field of :class:`~robustkit.verification.config.VerifyConfig`
    (``formulation``, ``solver``, ``bab_split``, ...). Returns a :class:`VerifyResult`."""
    from robustkit.verification.config import VerifyConfig
    from robustkit.verification.run import RunOptions, open_store, summarize, verify_samples

    known = {f.name for f in fields(VerifyConfig)} - {"eps", "method", "tighten", "timeout", "attack_steps",
                                                       "attack_restarts", "seed"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise InputError(f"unknown verify option(s) {unknown}; known: {sorted(known)}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise InputError(f"workers must be an integer >= 1, got {workers!r}")
    cfg = VerifyConfig(eps=check_eps(eps), timeout=float(timeout), method=AUTO_METHOD if method == "auto" else method,
                       tighten=bounds, attack_steps=int(attack_steps), attack_restarts=int(attack_restarts),
                       seed=int(seed), **options)
    ctx, xt, flat, vr = model_and_samples(model, x, value_range)
    labels = labels_of(y, flat.shape[0], ctx.net.out_dim)
    opts = RunOptions(workers=0 if workers == 1 else workers, quiet=quiet)
    store, records_path = None, None
    settings: dict[str, Any] = {"verify": cfg.to_dict(), "dataset": "input", "value_range": list(vr)}
    if out is not None:
        from hashlib import sha256

        from robustkit.runner.store import versions

        settings.update(inputs=sha256(flat.tobytes() + labels.tobytes()).hexdigest(), versions=versions())
        store = open_store(ctx, settings, RunOptions(run_dir=Path(out)))
        records_path = Path(store.path)
    records, _ = verify_samples(ctx, flat, labels, cfg, vr, opts, tag="input", store=store,
                                source=model_name(model))
    shape = tuple(int(d) for d in xt.shape[1:])
    samples = tuple(SampleResult.from_record(r, shape, int(r.get("index", i))) for i, r in enumerate(records))
    return VerifyResult(samples, summarize(records), cfg.eps, model_name(model), settings, records_path)

