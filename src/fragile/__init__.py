"""fragile: attack, measure and harden the explanations of neural networks."""

from fragile import explanations, models
from fragile.errors import FragileError, UnsupportedModelError
from fragile.experiments.audit import AuditResult, audit

__version__ = "0.1.0"
__all__ = ["AuditResult", "FragileError", "UnsupportedModelError", "__version__", "audit", "explanations", "models"]
