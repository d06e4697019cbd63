"""robustkit: train small ReLU networks to be verifiably robust, then prove it."""

__version__ = "0.1.0"
