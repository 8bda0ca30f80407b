"""Grad-CAM (Selvaraju et al. 2017).

For feature maps A^k (N, K, h, w) of a convolutional ``layer`` (default: the last Conv2d):

    alpha_k = mean_{ij} d f_c / d A^k_ij,     L = relu(sum_k alpha_k A^k)

upsampled to the input size (``upsample``: 'bilinear' or 'nearest') and repeated over the input
channels so the map has the shape of x. Differentiable with ``create_graph=True``. The layer used is
named by ``explainer.layer_name`` (and in the repr; the default is the last Conv2d *registered*, which
need not be the last one run); a layer whose output is not (N, K, h, w) with h w > 1 (a linear,
recurrent or attention layer, a squeeze-excitation conv on pooled features) is refused.
"""

from __future__ import annotations

import torch
from torch import nn

from fragile.errors import FragileError, UnsupportedModelError
from fragile.explanations.base import Explainer


def _resolve_layer(model: nn.Module, layer) -> tuple[str, nn.Module]:
    """(qualified name, module) of ``layer``: None (the last Conv2d), a dotted name or a submodule."""
    if layer is None:
        convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
        if not convs:
            raise UnsupportedModelError("grad_cam needs a Conv2d layer; the model has none (pass layer=...)")
        return convs[-1]
    if isinstance(layer, str):
        try:
            return layer, model.get_submodule(layer)
        except AttributeError:
            names = [n for n, _ in model.named_modules() if n]
            raise FragileError(f"no layer named {layer!r}; layers: {names[:20]}...") from None
    if not isinstance(layer, nn.Module):
        raise FragileError(f"layer must be a module or its name, got {type(layer).__name__}")
    name = next((n for n, m in model.named_modules() if m is layer), None)
    if name is None:
        raise FragileError(f"layer {type(layer).__name__} is not a submodule of the model")
    return name, layer


#: Layers whose output is never a spatial map (N, C, H, W).
NON_SPATIAL = (nn.Linear, nn.RNNBase, nn.MultiheadAttention)


def _not_spatial(name: str, layer: nn.Module, got) -> str:
    return (f"grad_cam needs a spatial layer with output (N, C, H, W); layer '{name}' "
            f"({type(layer).__name__}) gives {got}. Pass layer=... naming a convolutional layer.")


class GradCam(Explainer):
    """Grad-CAM of ``layer`` (module or dotted name; default the last Conv2d)."""

    name = "grad_cam"

    def __init__(self, model, *, layer=None, upsample: str = "bilinear", relu: bool = True, **kw):
        super().__init__(model, **kw)
        if upsample not in ("bilinear", "nearest"):
            raise FragileError(f"upsample must be 'bilinear' or 'nearest', got {upsample!r}")
        self.layer_spec, self.upsample, self.relu = layer, upsample, relu
        self.layer_name, module = _resolve_layer(model, layer)
        if isinstance(module, NON_SPATIAL):
            raise UnsupportedModelError(_not_spatial(self.layer_name, module, "sequences or vectors"))

    def _attribute(self, net, x, target, create_graph):
        layer = net.get_submodule(self.layer_name)
        store = {}
        handle = layer.register_forward_hook(lambda m, i, o: store.__setitem__("a", o))
        try:
            xg = x if (create_graph and x.requires_grad) else x.detach().requires_grad_(True)
            y, t = self._scores(net, xg, target)
        finally:
            handle.remove()
        acts = store.get("a")
        if not (isinstance(acts, torch.Tensor) and acts.dim() == 4 and acts.shape[2] * acts.shape[3] > 1):
            got = (tuple(acts.shape) if isinstance(acts, torch.Tensor)
                   else "nothing (not called in forward)" if acts is None else type(acts).__name__)
            raise UnsupportedModelError(_not_spatial(self.layer_name, layer, got))
        score = y.gather(1, t[:, None]).sum()
        (grads,) = torch.autograd.grad(score, acts, create_graph=create_graph)
        cam = (grads.mean(dim=(2, 3), keepdim=True) * acts).sum(dim=1, keepdim=True)
        if self.relu:
            cam = cam.clamp(min=0)
        kw = {"align_corners": False} if self.upsample == "bilinear" else {}
        cam = torch.nn.functional.interpolate(cam, size=x.shape[-2:], mode=self.upsample, **kw)
        return cam.expand(-1, x.shape[1], -1, -1)

    def __repr__(self) -> str:
        return f"GradCam(layer={self.layer_name!r}, output={self.output!r}, smooth_beta={self.smooth_beta})"
