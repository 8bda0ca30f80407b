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
    "Explainer", "create", "available", "register", "estimate_patterns",
    "reduce_channels", "normalize_sum", "scale_01",
    "Gradient", "GradientXInput", "IntegratedGradients", "SmoothGrad", "UniformGradient",
    "DeepLift", "GuidedBackprop", "LRP", "DeepTaylor", "PatternAttribution", "GradCam",
]
