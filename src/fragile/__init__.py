"""fragile: attack, measure and harden the explanations of neural networks."""

from importlib import metadata as _metadata

from fragile import explanations, models
from fragile.errors import FragileError, UnsupportedModelError
from fragile.experiments.audit import AuditResult, audit

try:
    __version__ = _metadata.version("fragile")
except _metadata.PackageNotFoundError:  # a source tree on sys.path that was never installed
    __version__ = "0+unknown"
__all__ = ["AuditResult", "FragileError", "UnsupportedModelError", "__version__", "audit", "explanations", "models"]
