"""Differentiable explanation methods: ``create(name, model, **params).attribute(x, target)``."""

from fragile.explanations.base import Explainer
from fragile.explanations.deeplift import DeepLift
from fragile.explanations.gradcam import GradCam
from fragile.explanations.gradient import Gradient, GradientXInput
from fragile.explanations.guided import GuidedBackprop
from fragile.explanations.integrated import IntegratedGradients
from fragile.explanations.lrp import LRP, DeepTaylor
from fragile.explanations.noise import SmoothGrad, UniformGradient
from fragile.explanations.pattern import PatternAttribution, estimate_patterns
from fragile.explanations.postprocess import normalize_sum, reduce_channels, scale_01
from fragile.explanations.registry import available, create, register

for _cls in (Gradient, GradientXInput, IntegratedGradients, SmoothGrad, UniformGradient, DeepLift,
             GuidedBackprop, LRP, DeepTaylor, PatternAttribution, GradCam):
    register(_cls)

__all__ = [
    "LRP",
    "DeepLift",
    "DeepTaylor",
    "Explainer",
    "GradCam",
    "Gradient",
    "GradientXInput",
    "GuidedBackprop",
    "IntegratedGradients",
    "PatternAttribution",
    "SmoothGrad",
    "UniformGradient",
    "available",
    "create",
    "estimate_patterns",
    "normalize_sum",
    "reduce_channels",
    "register",
    "scale_01",
]
