"""Model registry: ``fragile.models.create("resnet20_cifar10", pretrained=True)``.

Every model comes wrapped in :class:`~fragile.models.Preprocessed`, so it takes raw pixels in [0, 1].
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import nn

from fragile.errors import FragileError
from fragile.models.cifar_resnet import CIFAR10_CLASSES, CIFAR_MEAN, CIFAR_STD, DEPTHS, CifarResNet
from fragile.models.preprocessing import Preprocessed

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register(name: str):
    """Decorator: register a builder ``fn(*, pretrained, weights) -> nn.Module`` under ``name`` for :func:`create`."""
    def deco(fn):
        _MODELS[name] = fn
        return fn

    return deco


def available() -> list[str]:
    """The registered model names, sorted (``torchvision:NAME`` and ``timm:NAME`` are accepted besides)."""
    return sorted(_MODELS)


def create(name: str, *, pretrained: bool = False, weights: str | Path | None = None) -> nn.Module:
    """A model by name, in eval mode; ``pretrained`` loads the weights found under FRAGILE_MODELS
    (CIFAR ResNets, SqueezeNet) or shipped in a package (EfficientNet-Lite0). ``torchvision:NAME`` and
    ``timm:NAME`` go through :func:`fragile.models.load` (their own preprocessing)."""
    if name.startswith(("torchvision:", "timm:")):
        from fragile.models.loading import load

        return load(name, weights=weights, model_args=None if weights is not None else {"pretrained": pretrained})
    if name not in _MODELS:
        raise FragileError(f"unknown model {name!r}; known: {', '.join(available())}, torchvision:<name>, timm:<name>")
    model = _MODELS[name](pretrained=pretrained, weights=weights).eval()
    if getattr(model, "channels", None) is None:
        from fragile.models.loading import channels_of

        model.channels = channels_of(model)
    return model


def _akamaster_weights(arch: str) -> Path:
    from fragile.models.weights import weights_path

    return weights_path(arch)


def _load_state(net: nn.Module, path: Path) -> None:
    from fragile.models.loading import load_state_dict

    load_state_dict(net, path)


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
