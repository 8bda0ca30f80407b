"""One image file -> a float array in [0, 1], as users have them.

Modes (PIL) and how they are read:

- ``1``, ``L``, ``LA``, ``La``: grey, 8 bit (value / 255); the alpha channel is dropped.
- ``RGB``, ``RGBA``, ``RGBa``, ``RGBX``, ``P``, ``PA``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``: colour, 8 bit,
  through PIL's conversion to RGB. A palette is looked up; **alpha is dropped** (the colour as stored, not
  composited on a background: a transparent pixel keeps the colour the file gives it).
- ``I;16``, ``I;16L``, ``I;16B``, ``I;16N`` (16-bit PNG / TIFF) and ``I`` with values in 0..65535: grey,
  value / 65535 (not saturated at 255). Pillow reads 16-bit *colour* PNGs as 8-bit RGB.
- anything else (``F`` float images, ``I`` beyond 16 bit, ...): refused with a FragileError naming the file.

Channels: grey -> RGB by repetition, RGB -> grey by ITU-R BT.601 luma ``0.299 R + 0.587 G + 0.114 B``.
The EXIF orientation of photos is applied (as image viewers show them).

Resize policies (``size=(H, W)``):

- ``None``: no resizing; a file whose size differs from ``size`` is refused.
- ``"center_crop"`` (alias ``"shorter_side_center_crop"``): the torchvision ImageNet evaluation convention
  ``Resize(round(S * 256 / 224)) + CenterCrop(S)``: scaled (keeping the aspect ratio, bilinear with
  antialiasing) so that it covers ``round(H * 256 / 224) x round(W * 256 / 224)``, then the central
  ``H x W`` is cut out. Applied to every image, also to one that already has the target size.
- ``"squash"``: resized to ``H x W`` (bilinear), the aspect ratio is not kept.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from fragile.errors import FragileError

SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
RESIZE_POLICIES = ("center_crop", "squash")
CROP_RATIO = 256 / 224  # torchvision: Resize(256) + CenterCrop(224)
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601

_GREY8 = {"1", "L", "LA", "La"}
_COLOUR8 = {"RGB", "RGBA", "RGBa", "RGBX", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"}
_GREY16 = {"I;16", "I;16L", "I;16B", "I;16N"}


def resize_policy(resize: str | None) -> str | None:
    """The canonical policy name (``None`` / ``"none"``: no resizing)."""
    if resize is None or resize == "none":
        return None
    if resize == "shorter_side_center_crop":
        return "center_crop"
    if resize not in RESIZE_POLICIES:
        raise FragileError(f"unknown resize policy {resize!r}; choose none, {', '.join(RESIZE_POLICIES)}")
    return resize


def check_channels(channels: int | None) -> None:
    """Refuse a channel count other than None (the model's), 1 (grey) or 3 (RGB)."""
    if channels not in (None, 1, 3):
        raise FragileError(f"channels must be 1 (grey) or 3 (RGB), got {channels!r}")


def open_image(path: str | Path, name: str | None = None) -> tuple[Image.Image, float]:
    """(PIL image in mode L, RGB or F, the value of white) with the EXIF orientation applied."""
    name = name or str(path)
    img = Image.open(path)
    img.load()
    img = ImageOps.exif_transpose(img)
    mode = img.mode
    if mode in _GREY8:
        return img.convert("L"), 255.0
    if mode in _COLOUR8:
        return img.convert("RGB"), 255.0
    if mode in _GREY16 or mode == "I":
        values = np.asarray(img)
        if mode == "I" and values.size and (values.min() < 0 or values.max() > 65535):
            raise FragileError(f"{name}: mode I values {values.min()}..{values.max()} are not 16-bit; "
                               "save it as an 8- or 16-bit PNG")
        return Image.fromarray(values.astype(np.float32), mode="F"), 65535.0
    raise FragileError(f"{name}: image mode {mode!r} is not supported (grey/colour 8-bit or grey 16-bit); "
                       "save it as an 8- or 16-bit PNG")


def resized(img: Image.Image, size: tuple[int, int], policy: str) -> Image.Image:
    """``img`` resized to ``size = (H, W)`` by ``policy`` (see the module docstring)."""
    H, W = size
    if policy == "squash":
        return img.resize((W, H), Image.BILINEAR)
    w, h = img.size
    scale = max(round(H * CROP_RATIO) / h, round(W * CROP_RATIO) / w)
    img = img.resize((max(W, round(w * scale)), max(H, round(h * scale))), Image.BILINEAR)
    w, h = img.size
    left, top = (w - W) // 2, (h - H) // 2
    return img.crop((left, top, left + W, top + H))


def to_array(img: Image.Image, white: float, channels: int) -> np.ndarray:
    """(C, H, W) float32 in [0, 1] with C = ``channels``."""
    a = np.asarray(img, dtype=np.float32) / np.float32(white)
    a = a[..., None] if a.ndim == 2 else a
    if a.shape[-1] == channels:
        return np.ascontiguousarray(a.transpose(2, 0, 1))
    if channels == 3:
        return np.ascontiguousarray(np.repeat(a, 3, axis=-1).transpose(2, 0, 1))
    return np.clip(a @ LUMA, 0.0, 1.0)[None]  # the weights sum to 1 up to float rounding


def is_grey(img: Image.Image) -> bool:
    """Whether a PIL image has a single (grey) channel: mode ``L`` or ``F``."""
    return img.mode in ("L", "F")
