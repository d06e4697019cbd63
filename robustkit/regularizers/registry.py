"""Regularizers by name, with paper presets, built from spec strings.

Spec syntax: ``NAME``, ``NAME=WEIGHT`` or either followed by ``:KEY=VALUE`` options, e.g.
``hamming=9000``, ``intrinsic=0.4``, ``mrnet=0.1:eps=1.5:warmup_epochs=0``,
``pgd:steps=7:eps=8/255``, ``contractive=1e-3:layer_weights=1,1,1,0.5``. ``WEIGHT`` sets the
entry's weight option (listed by ``robustkit regularizers``); options are the fields of the
entry's config dataclass. Numbers accept fractions (``8/255``); negative weights and eps are
refused. ``intrinsic`` and ``hamming`` given together share one corner sample and its
forward passes (exactly the ``jin-rinard`` regularizer with both weights).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable, Mapping, Sequence

from robustkit.errors import InputError
from robustkit.numbers import parse_number
from robustkit.regularizers.advprop import AdvProp, AdvPropConfig
from robustkit.regularizers.base import Regularizer
from robustkit.regularizers.contractive import Contractive, ContractiveConfig
from robustkit.regularizers.ibp import IBPConfig, IBPTraining
from robustkit.regularizers.jin_rinard import JinRinard, JinRinardConfig
from robustkit.regularizers.mat import MAT, MATConfig
from robustkit.regularizers.mrnet import MRnet, MRnetConfig
from robustkit.regularizers.none import NoneConfig, NoRegularizer
from robustkit.regularizers.options import coerce_options
from robustkit.regularizers.pgd import PGDConfig, PGDTraining
from robustkit.regularizers.relu_stability import ReluStability, ReluStabilityConfig


@dataclass(frozen=True)
class RegularizerEntry:
    """A registered name: its class, config, preset (config overrides) and documentation."""

    name: str
    paper: str
    summary: str
    terms: tuple[str, ...]
    config_cls: type
    factory: Callable[[Any], Regularizer]
    preset: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    weight_field: str = "weight"
    replaces_clean_loss: bool = False

    def defaults(self) -> dict[str, Any]:
        """Every option with its value under this preset."""
        base = {f.name: f.default for f in dataclasses.fields(self.config_cls)}
        base.update(self.preset)
        return base

    def make_config(self, weight: float | None = None, options: Mapping[str, Any] | None = None) -> Any:
        kwargs = dict(self.preset)
        kwargs.update(options or {})
        if weight is not None:
            kwargs[self.weight_field] = weight
        return self.config_cls(**kwargs)


@dataclass(frozen=True)
class RegularizerInfo:
    """What ``robustkit regularizers`` shows for one name."""

    name: str
    paper: str
    summary: str
    terms: tuple[str, ...]
    weight_field: str
    defaults: dict[str, Any]
    replaces_clean_loss: bool


_APPENDIX_B = "Jin & Rinard 2020, Sec. 5.3-5.4, Eq. (7); Appendix B"

_ENTRIES: tuple[RegularizerEntry, ...] = (
    RegularizerEntry(
        "none", "baseline", "plain cross-entropy, no extra term", (), NoneConfig, NoRegularizer
    ),
    RegularizerEntry(
        "mrnet",
        "Lee, Choi, Yoon 2015 (MRnet), Sec. 3 Eq. (3)-(5),(10); Appendix (MNIST eps = 2)",
        "lambda * ||phi(x) - phi(x + eps g/||g||)||^2 on the last hidden layer, after a warm-up",
        ("mrnet",),
        MRnetConfig,
        MRnet,
    ),
    RegularizerEntry(
        "mat",
        "Zhang, Huang, Zhu, Liu (MAT), Sec. III-D..III-H, Prop. III.1, Thm. III.4",
        "class-GMM information term + KL smoothness of mixture posteriors and outputs at the power-iteration perturbation",
        ("mat_info", "mat_smooth"),
        MATConfig,
        MAT,
    ),
    RegularizerEntry(
        "jin-rinard",
        _APPENDIX_B + " (small verification model: gamma_I 0.4, gamma_H 9000)",
        "intrinsic + Hamming regularizers on random opposite corners of the eps-box, x10 ramp epochs 20-80",
        ("intrinsic", "hamming"),
        JinRinardConfig,
        JinRinard,
    ),
    RegularizerEntry(
        "jin-rinard-large",
        _APPENDIX_B + " (large model: gamma_I 0.8, gamma_H 2400)",
        "as jin-rinard with the large-model starting weights",
        ("intrinsic", "hamming"),
        JinRinardConfig,
        JinRinard,
        preset=MappingProxyType({"intrinsic_weight": 0.8, "hamming_weight": 2400.0}),
    ),
    RegularizerEntry(
        "intrinsic",
        _APPENDIX_B + " (gamma_I of the small model)",
        "gamma_I * ||f(x+) - f(x-)||^2 on the logits (ramped x10, epochs 20-80)",
        ("intrinsic",),
        JinRinardConfig,
        JinRinard,
        preset=MappingProxyType({"intrinsic_weight": 0.4, "hamming_weight": 0.0}),
        weight_field="intrinsic_weight",
    ),
    RegularizerEntry(
        "hamming",
        _APPENDIX_B + " (gamma_H of the small model, alpha = 8)",
        "gamma_H * mean_layers ||tanh(a z+) - tanh(a z-)||_2 / (2 n_l) on ReLU pre-activations (ramped x10)",
        ("hamming",),
        JinRinardConfig,
        JinRinard,
        preset=MappingProxyType({"intrinsic_weight": 0.0, "hamming_weight": 9000.0}),
        weight_field="hamming_weight",
    ),
    RegularizerEntry(
        "contractive",
        "Gu & Rigazio 2015 (Deep Contractive Networks), Sec. 4.2 Eq. (6)",
        "sum_j lambda_j ||dh_j/dh_{j-1}||_F^2 layer-wise, closed form (ReLU masks, conv tap counts, softmax Jacobian)",
        ("contractive",),
        ContractiveConfig,
        Contractive,
    ),
    RegularizerEntry(
        "advprop",
        "Nokland 2015, Sec. 2 Eq. (1)-(2), Alg. 1; Sec. 3 (MNIST eps = 0.08)",
        "train on clip(x + eps sign(grad_x CE)) instead of x",
        ("advprop", "advprop_clean"),
        AdvPropConfig,
        AdvProp,
        replaces_clean_loss=True,
    ),
    RegularizerEntry(
        "pgd",
        "Madry et al. 2018, Eq. (2.1); baseline of Xiao et al. 2019 / Jin & Rinard 2020 Table 1",
        "train on a k-step L-inf PGD point with random start (eps = trainer's eps)",
        ("pgd",),
        PGDConfig,
        PGDTraining,
        replaces_clean_loss=True,
    ),
    RegularizerEntry(
        "ibp",
        "Gowal et al. 2018, Sec. 3, Eq. (6)-(8); certified-training baseline of Jin & Rinard 2020 Table 1",
        "weight * CE of the interval worst-case logits over the eps-box (last layer merged into the margins)",
        ("ibp",),
        IBPConfig,
        IBPTraining,
    ),
    RegularizerEntry(
        "relu-stability",
        "Xiao et al. 2019, Sec. 4.2 (RS loss); IBP bounds",
        "sum over ReLUs of -tanh(1 + l*u) with interval bounds on the eps-box",
        ("relu_stability",),
        ReluStabilityConfig,
        ReluStability,
    ),
)

REGULARIZERS: Mapping[str, RegularizerEntry] = MappingProxyType({e.name: e for e in _ENTRIES})


def regularizer_names() -> list[str]:
    """The registered names, in registry order."""
    return list(REGULARIZERS)


def _entry(name: str) -> RegularizerEntry:
    key = name.strip().lower().replace("_", "-")
    if key not in REGULARIZERS:
        raise InputError(
            f"unknown regularizer {name!r}; valid names: {', '.join(REGULARIZERS)} "
            "(spec syntax NAME, NAME=WEIGHT, optionally followed by :KEY=VALUE options)"
        )
    return REGULARIZERS[key]


@dataclass(frozen=True)
class ParsedSpec:
    """One parsed spec: the entry, its weight (None = preset) and its typed options."""

    entry: RegularizerEntry
    weight: float | None
    options: Mapping[str, Any]


def parse_spec(spec: str) -> ParsedSpec:
    """Parse ``NAME[=WEIGHT][:KEY=VALUE]...`` (see the module docstring)."""
    text = str(spec).strip()
    if not text:
        raise InputError(f"empty regularizer spec; valid names: {', '.join(REGULARIZERS)}")
    head, *opt_parts = text.split(":")
    name, sep, weight_text = head.partition("=")
    entry = _entry(name)
    weight: float | None = None
    if sep:
        weight = parse_number(weight_text, f"weight of regularizer {entry.name!r}")
        if weight < 0:
            raise InputError(f"weight of regularizer {entry.name!r} must be >= 0, got {weight_text.strip()!r}")
    raw: dict[str, str] = {}
    for part in opt_parts:
        key, eq, value = part.partition("=")
        if not eq or not key.strip():
            raise InputError(f"regularizer option {part!r} in {spec!r} must be KEY=VALUE")
        raw[key.strip()] = value.strip()
    options = coerce_options(entry.name, entry.config_cls, raw)
    return ParsedSpec(entry, weight, options)


def _merge_jin_rinard(intrinsic: JinRinardConfig, hamming: JinRinardConfig) -> JinRinardConfig:
    """``intrinsic`` + ``hamming`` specs -> one JinRinard sharing the corners and the forward."""
    for f in dataclasses.fields(JinRinardConfig):
        if f.name in ("intrinsic_weight", "hamming_weight"):
            continue
        if getattr(intrinsic, f.name) != getattr(hamming, f.name):
            raise InputError(
                f"intrinsic and hamming must agree on option {f.name!r} "
                f"({getattr(intrinsic, f.name)} vs {getattr(hamming, f.name)}); use jin-rinard to set both"
            )
    return dataclasses.replace(hamming, intrinsic_weight=intrinsic.intrinsic_weight)


def build_regularizers(specs: Sequence[str]) -> list[Regularizer]:
    """Build regularizers from spec strings (``["hamming=9000", "intrinsic=0.4"]``).

    Unknown names, malformed specs, negative weights/eps, duplicate names and combinations that
    would produce the same loss term twice raise InputError. ``none`` alone gives ``[NoRegularizer]``.
    """
    if isinstance(specs, str):
        specs = [specs]
    parsed = [parse_spec(s) for s in specs]
    names = [p.entry.name for p in parsed]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InputError(f"regularizer(s) given more than once: {', '.join(dupes)}")
    if "none" in names and len(names) > 1:
        raise InputError("'none' cannot be combined with other regularizers")
    terms: dict[str, str] = {}
    for p in parsed:
        for t in p.entry.terms:
            if t in terms:
                raise InputError(f"{terms[t]} and {p.entry.name} both produce the loss term {t!r}")
            terms[t] = p.entry.name

    configs = {p.entry.name: p.entry.make_config(p.weight, p.options) for p in parsed}
    if "intrinsic" in configs and "hamming" in configs:
        merged = _merge_jin_rinard(configs["intrinsic"], configs["hamming"])
        configs["hamming"] = merged
        del configs["intrinsic"]
    return [REGULARIZERS[name].factory(cfg) for name, cfg in configs.items()]


def describe_regularizers() -> list[RegularizerInfo]:
    """Name, paper, terms, weight option and defaults of every registered regularizer."""
    return [
        RegularizerInfo(
            name=e.name,
            paper=e.paper,
            summary=e.summary,
            terms=e.terms,
            weight_field=e.weight_field,
            defaults=e.defaults(),
            replaces_clean_loss=e.replaces_clean_loss,
        )
        for e in _ENTRIES
    ]
