"""robustkit's public Python API (``import robustkit as rk``): every function takes an
``nn.Module``, an ONNX file or ONNX bytes, and a batch of samples.

* :func:`verify`: robustness of each sample (attack, bounds, branch and bound or MILP), as
  ``robustkit verify``; a module is exported to ONNX in memory and that float32 graph is verified;
* :func:`bounds`: per-layer and output bounds (interval, CROWN, alpha-CROWN, LP);
* :func:`attack`: PGD, every adversarial point replayed in onnxruntime;
* :func:`stability`: ReLU-stability statistics, as ``robustkit stats``;
* :func:`export`: a module to one ONNX file robustkit verifies (no ``onnxscript`` needed);
* :func:`regularizer`: any of robustkit's regularizers as a term of the user's own training loop.
"""

from robustkit.api.analysis import AttackResult, BoundsResult, LayerBounds, attack, bounds, stability
from robustkit.api.models import export
from robustkit.api.regularize import DropInRegularizer, RegularizerTerms, regularizer
from robustkit.api.verify import SampleResult, VerifyResult, verify

__all__ = [
    "AttackResult", "BoundsResult", "DropInRegularizer", "LayerBounds", "RegularizerTerms", "SampleResult",
    "VerifyResult", "attack", "bounds", "export", "regularizer", "stability", "verify",
]
