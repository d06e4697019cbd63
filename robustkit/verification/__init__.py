"""Verification of one property: attack -> bounds -> MILP, with witnesses re-checked in onnxruntime."""

from robustkit.verification.config import VerifyConfig
from robustkit.verification.model import ModelContext
from robustkit.verification.pipeline import Verdict, verify_sample, verify_spec
from robustkit.verification.witness import validate_witness

__all__ = ["VerifyConfig", "ModelContext", "Verdict", "verify_sample", "verify_spec", "validate_witness"]
