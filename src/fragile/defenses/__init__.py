"""Defences. At explanation time: beta-smoothing, SmoothGrad, Uniform Gradient wrap any method."""

from fragile.defenses.explanation_time import available, create, parameters

__all__ = ["available", "create", "parameters"]
