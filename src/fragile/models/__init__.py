"""Models: reversible surgery (softplus surrogate), preprocessing wrappers, architectures."""

from fragile.models.preprocessing import Normalize, Preprocessed
from fragile.models.smooth import softplus, softplus_beta
from fragile.models.surgery import check_eval_mode, swapped

__all__ = ["Normalize", "Preprocessed", "check_eval_mode", "softplus", "softplus_beta", "swapped"]
