"""Model registry: ``fragile.models.create("resnet20_cifar10", pretrained=True)``.

Every model comes wrapped in :class:`~fragile.models.Preprocessed`, so it takes raw pixels in [0, 1].
"""

from __future__ import annotations

from collections.abc import Callable
import pickle
from pathlib import Path

import torch
from torch import nn

from fragile.errors import FragileError
from fragile.models.cifar_resnet import CIFAR10_CLASSES, CIFAR_MEAN, CIFAR_STD, DEPTHS, CifarResNet
from fragile.models.preprocessing import Preprocessed

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register(name: str):
    def deco(fn):
        _MODELS[name] = fn
        return fn

    return deco


def available() -> list[str]:
    return sorted(_MODELS)


def create(name: str, *, pretrained: bool = False, weights: str | Path | None = None) -> nn.Module:
    """A model by name, in eval mode; ``pretrained`` loads the weights found under FRAGILE_MODELS
    (CIFAR ResNets, SqueezeNet) or shipped in a package (EfficientNet-Lite0)."""
    if name.startswith("torchvision:"):
        return _torchvision(name.split(":", 1)[1], pretrained=pretrained, weights=weights).eval()
    if name not in _MODELS:
        raise FragileError(f"unknown model {name!r}; known: {', '.join(available())}, torchvision:<name>")
    return _MODELS[name](pretrained=pretrained, weights=weights).eval()


def _akamaster_weights(arch: str) -> Path:
    from fragile.models.weights import weights_path

    return weights_path(arch)


def _load_state(net: nn.Module, path: Path) -> None:
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as err:
        raise FragileError(f"{path} is not a loadable checkpoint: {err}") from None
    state = blob.get("state_dict", blob) if isinstance(blob, dict) else None
    if not isinstance(state, dict):
        raise FragileError(f"{path} holds no state_dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise FragileError(f"{path} does not match {type(net).__name__}: {str(err)[:300]}") from None
    if missing or unexpected:
        raise FragileError(f"{path} does not match {type(net).__name__}: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")


def _cifar_resnet(arch: str):
    def build(*, pretrained: bool, weights=None) -> nn.Module:
        net = CifarResNet(DEPTHS[arch])
        if pretrained or weights is not None:
            _load_state(net, Path(weights) if weights is not None else _akamaster_weights(arch))
        model = Preprocessed(net, mean=CIFAR_MEAN, std=CIFAR_STD, bounds=(0.0, 1.0))
        model.class_names = CIFAR10_CLASSES
        model.input_size = (32, 32)
        return model

    return build


for _arch in DEPTHS:
    register(f"{_arch}_cifar10")(_cifar_resnet(_arch))


def _imagenet(builder_name: str):
    def build(*, pretrained: bool, weights=None) -> nn.Module:
        from fragile.data.imagenet import imagenet_class_names
        from fragile.models import imagenet

        model = getattr(imagenet, builder_name)(pretrained=pretrained, weights=weights)
        model.class_names = imagenet_class_names()
        return model

    return build


register("squeezenet1_0_imagenet")(_imagenet("squeezenet_v1_0"))
register("efficientnet_lite0_imagenet")(_imagenet("efficientnet_lite0"))


def _small(builder, mean, std, size, classes):
    def build(*, pretrained: bool, weights=None) -> nn.Module:
        if pretrained and weights is None:
            raise FragileError("no pretrained weights ship for this architecture: train it (fragile train) "
                               "and load the checkpoint")
        model = Preprocessed(builder(), mean=mean, std=std)
        if weights is not None:
            _load_state(model, Path(weights))
        model.input_size, model.class_names = size, classes
        return model

    return build


def _register_small():
    from fragile.data.readers import FASHION_MNIST_CLASSES
    from fragile.models.small import ghorbani_cifar, lenet

    register("lenet_fashion_mnist")(_small(lenet, (0.286,), (0.353,), (28, 28), FASHION_MNIST_CLASSES))
    register("ghorbani_cifar10")(_small(ghorbani_cifar, CIFAR_MEAN, CIFAR_STD, (32, 32), CIFAR10_CLASSES))


_register_small()


def _torchvision(name: str, *, pretrained: bool = False, weights=None) -> nn.Module:
    """``torchvision:<name>`` (optional extra ``fragile[vision]``): ImageNet preprocessing carried along;
    pretrained weights come from torchvision's own downloader (needs internet)."""
    try:
        import torchvision
    except ImportError:
        raise FragileError("torchvision models need the optional extra: pip install 'fragile[vision]'") from None
    try:
        net = torchvision.models.get_model(name, weights="DEFAULT" if pretrained else None)
    except (ValueError, KeyError) as err:
        raise FragileError(f"torchvision has no model {name!r}: {err}") from None
    if weights is not None:
        _load_state(net, Path(weights))
    model = Preprocessed(net, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    model.input_size = (224, 224)
    return model
