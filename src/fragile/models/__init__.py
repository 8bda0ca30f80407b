"""Models: reversible surgery (softplus surrogate), preprocessing wrappers, architectures, registry."""

from fragile.models.cifar_resnet import CifarResNet
from fragile.models.loading import load
from fragile.models.preprocessing import Normalize, Preprocessed
from fragile.models.registry import available, create
from fragile.models.smooth import softplus, softplus_beta
from fragile.models.surgery import check_eval_mode, swapped

__all__ = ["CifarResNet", "Normalize", "Preprocessed", "available", "create", "load", "softplus",
           "softplus_beta", "swapped", "check_eval_mode"]
