"""fragile: attack, measure and harden the explanations of neural networks."""

from fragile import explanations, models
from fragile.errors import FragileError, UnsupportedModelError

__version__ = "0.1.0"
__all__ = ["FragileError", "UnsupportedModelError", "__version__", "explanations", "models"]
