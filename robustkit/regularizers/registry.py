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
from typing import Any, Mapping, Sequence

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
    """A spec name: a :class:`Regularizer` class as it declares itself, or one of its presets
    (config overrides under another name, e.g. ``intrinsic``: JinRinard with the Hamming term off)."""

    name: str
    cls: type[Regularizer]
    preset: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    note: str = ""  # what the preset changes, appended to the class's paper reference
    summary_override: str = ""
    terms_override: tuple[str, ...] | None = None
    weight_field_override: str = ""

    @property
    def paper(self) -> str:
        return f"{self.cls.paper} {self.note}".strip()

    @property
    def summary(self) -> str:
        return self.summary_override or self.cls.summary

    @property
    def terms(self) -> tuple[str, ...]:
        return self.cls.terms if self.terms_override is None else self.terms_override

    @property
    def weight_field(self) -> str:
        return self.weight_field_override or self.cls.weight_field

    @property
    def config_cls(self) -> type:
        return self.cls.config_cls

    @property
    def replaces_clean_loss(self) -> bool:
        return self.cls.replaces_clean_loss

    def factory(self, config: Any) -> Regularizer:
        return self.cls(config)

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


def _preset(cls: type[Regularizer], name: str, note: str, summary: str, weight_field: str = "",
            terms: tuple[str, ...] | None = None, **options: Any) -> RegularizerEntry:
    return RegularizerEntry(name, cls, MappingProxyType(options), note, summary, terms, weight_field)


_REGISTRY: dict[str, RegularizerEntry] = {}
REGULARIZERS: Mapping[str, RegularizerEntry] = MappingProxyType(_REGISTRY)


def register(cls: type[Regularizer], *presets: RegularizerEntry) -> type[Regularizer]:
    """Make ``cls`` (and its presets) spec names. A name already taken raises ``ValueError``;
    two names producing the same loss term are refused at build time. Usable as a decorator.
    A class that does not declare ``name`` and a frozen dataclass ``config_cls`` holding its
    ``weight_field`` raises ``TypeError``."""
    missing = [a for a in ("name", "config_cls") if not hasattr(cls, a)]
    if missing:
        raise TypeError(f"regularizer {cls.__name__} must declare {', '.join(missing)}")
    if not (dataclasses.is_dataclass(cls.config_cls) and cls.config_cls.__dataclass_params__.frozen):  # type: ignore[attr-defined]
        raise TypeError(f"regularizer {cls.__name__}: config_cls must be a frozen dataclass")
    if cls.weight_field not in {f.name for f in dataclasses.fields(cls.config_cls)}:
        raise TypeError(f"regularizer {cls.__name__}: {cls.config_cls.__name__} has no option {cls.weight_field!r}")
    for entry in (RegularizerEntry(cls.name, cls), *presets):
        if entry.name in _REGISTRY and _REGISTRY[entry.name].cls is not entry.cls:
            raise ValueError(f"regularizer name {entry.name!r} is taken by {_REGISTRY[entry.name].cls.__name__}")
        entry.make_config()  # the preset's options exist and pass the config's checks
        _REGISTRY[entry.name] = entry
    return cls


register(NoRegularizer)
register(MRnet)
register(MAT)
register(
    JinRinard,
    _preset(JinRinard, "jin-rinard-large", "(large model: gamma_I 0.8, gamma_H 2400)",
            "as jin-rinard with the large-model starting weights", intrinsic_weight=0.8, hamming_weight=2400.0),
    _preset(JinRinard, "intrinsic", "(gamma_I of the small model; the Hamming term off)",
            "gamma_I * ||f(x+) - f(x-)||^2 on the logits (ramped x10, epochs 20-80)", "intrinsic_weight",
            ("intrinsic",), intrinsic_weight=0.4, hamming_weight=0.0),
    _preset(JinRinard, "hamming", "(gamma_H of the small model, alpha = 8; the intrinsic term off)",
            "gamma_H * mean_layers ||tanh(a z+) - tanh(a z-)||_2 / (2 n_l) on ReLU pre-activations (ramped x10)",
            "hamming_weight", ("hamming",), intrinsic_weight=0.0, hamming_weight=9000.0),
)
register(Contractive)
register(AdvProp)
register(PGDTraining)
register(IBPTraining)
register(ReluStability)


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
        for e in REGULARIZERS.values()
    ]
