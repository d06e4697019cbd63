"""Training regularizers, registered by name (see ``base.Regularizer`` and ``registry``).

``build_regularizers(["hamming=9000", "intrinsic=0.4"])`` returns ready-to-call regularizers;
``describe_regularizers()`` lists every name with its paper, loss terms and defaults;
``register(MyRegularizer)`` adds a :class:`Regularizer` subclass (it declares its name, paper,
terms and config class itself).
"""

from robustkit.regularizers.advprop import AdvProp, AdvPropConfig
from robustkit.regularizers.base import RegOutput, Regularizer, ScheduleState
from robustkit.regularizers.contractive import Contractive, ContractiveConfig, layer_frobenius_norms
from robustkit.regularizers.ibp import IBPConfig, IBPTraining, worst_case_margins
from robustkit.regularizers.jin_rinard import JinRinard, JinRinardConfig, hamming_relaxation
from robustkit.regularizers.mat import MAT, ClassGaussianMixture, MATConfig
from robustkit.regularizers.mrnet import MRnet, MRnetConfig
from robustkit.regularizers.none import NoneConfig, NoRegularizer
from robustkit.regularizers.pgd import PGDConfig, PGDTraining
from robustkit.regularizers.registry import (
    REGULARIZERS,
    RegularizerInfo,
    build_regularizers,
    describe_regularizers,
    parse_spec,
    register,
    regularizer_names,
)
from robustkit.regularizers.relu_stability import (
    ReluStability,
    ReluStabilityConfig,
    interval_preactivations,
)

__all__ = [
    "REGULARIZERS",
    "AdvProp",
    "AdvPropConfig",
    "ClassGaussianMixture",
    "Contractive",
    "ContractiveConfig",
    "IBPConfig",
    "IBPTraining",
    "JinRinard",
    "JinRinardConfig",
    "MAT",
    "MATConfig",
    "MRnet",
    "MRnetConfig",
    "NoRegularizer",
    "NoneConfig",
    "PGDConfig",
    "PGDTraining",
    "RegOutput",
    "Regularizer",
    "RegularizerInfo",
    "ReluStability",
    "ReluStabilityConfig",
    "ScheduleState",
    "build_regularizers",
    "describe_regularizers",
    "hamming_relaxation",
    "interval_preactivations",
    "layer_frobenius_norms",
    "parse_spec",
    "register",
    "regularizer_names",
    "worst_case_margins",
]
