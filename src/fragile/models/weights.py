"""Where pretrained weights come from: the local copy under FRAGILE_MODELS, else a download into the
cache (SHA-256 checked) for users with internet. ``FRAGILE_WEIGHTS_URL`` replaces the upstream base
URLs (a mirror, or a loopback server in tests)."""

from __future__ import annotations

import os
from pathlib import Path

from fragile.errors import FragileError
from fragile.models.download import download
from fragile.settings import models_dir

AKAMASTER = "https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models"
SONGHAN = "https://github.com/songhan/SqueezeNet-Deep-Compression/raw/master/SqueezeNet_deploy"

#: name -> (local path under FRAGILE_MODELS, upstream base URL, file name, SHA-256)
WEIGHTS = {
    "resnet20": ("cifar10_resnet_akamaster/pretrained_models", AKAMASTER, "resnet20-12fca82f.th",
                 "12fca82f0bebc4135bf1f32f6e3710e61d5108578464b84fd6d7f5c1b04036c8"),
    "resnet32": ("cifar10_resnet_akamaster/pretrained_models", AKAMASTER, "resnet32-d509ac18.th",
                 "d509ac1820d7f25398913559d7e81a13229b1e7adc5648e3bfa5e22dc137f850"),
    "resnet44": ("cifar10_resnet_akamaster/pretrained_models", AKAMASTER, "resnet44-014dd654.th",
                 "014dd6541728a1c700b1642ab640e211dc6eb8ed507d70697458dc8f8a0ae2e4"),
    "resnet56": ("cifar10_resnet_akamaster/pretrained_models", AKAMASTER, "resnet56-4bfd9763.th",
                 "4bfd97631478d6b638d2764fd2baff3edb1d7d82252d54439343b6596b9b5367"),
    "squeezenet1_0": ("squeezenet_v1_0_deep_compression", SONGHAN, "compressed_SqueezeNet.net",
                      "e4ab6960ae8cd81505e1c2136921201507e930966c53deaf15862a395b3a3261"),
}


def weights_path(name: str) -> Path:
    """The verified local file of ``name``'s weights, downloading it if no local copy exists."""
    folder, base, filename, digest = WEIGHTS[name]
    local = models_dir() / folder / filename
    if local.exists():
        return local
    base = os.environ.get("FRAGILE_WEIGHTS_URL", base).rstrip("/")
    try:
        return download(f"{base}/{filename}", digest, filename=filename)
    except FragileError as err:
        raise FragileError(f"no pretrained weights for {name}: not in {local.parent} (set FRAGILE_MODELS or "
                           f"FRAGILE_DATA) and {err}") from None
