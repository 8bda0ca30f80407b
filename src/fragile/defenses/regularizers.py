"""Training-time defences: losses that regularise the geometry of the network.

Each entry maps (model, x, y) to (loss, logs):

- ``ce``:        cross-entropy.
- ``ssr``:       Smooth Surface Regularization (Wang et al. 2020, Def. 7):
                 (1 - alpha) CE + alpha * s * mean_n lambda_max(J^T (diag p - p p^T) J)
                 (Singla et al.'s closed-form input Hessian; defaults alpha 0.3, s 1e6 as in the paper;
                 the reference script used s 0.3). lambda_max is in the model's raw input units unless
                 ``pixel_range`` R is given: then it is taken w.r.t. pixels rescaled to [0, R], i.e.
                 multiplied by ((high - low) / R)^2. Wang trained on raw 0-255 pixels, so the paper's
                 s = 1e6 is ``scale=1e6, pixel_range=255`` (= s 15.4 on [0, 1] inputs).
- ``pgd``:       Madry et al. adversarial training, CE at a PGD point (L-inf or L2).
- ``ig_norm``:   Chen et al. 2019: CE + beta * ||IG of the loss from x to x'||_1 at the PGD point x' that
                 maximises that norm (eps 8/255, 7 steps of 2/255, beta 0.1).
- ``lipschitz``: Ghorbani App. J (eq. 6): CE + weight * prod_l ||W_l||_2 (power-iteration spectral norms).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from fragile.errors import FragileError
from fragile.explanations.base import model_bounds
from fragile.geometry.ssr import ssr_top_eigenvalue
from fragile.models.outputs import model_output

F = torch.nn.functional


def ce_loss(model, x, y):
    """Cross-entropy (natural training): ``(loss, {'ce': value})``."""
    loss = F.cross_entropy(model_output(model, x), y)
    return loss, {"ce": loss.item()}


def ssr_loss(model, x, y, *, alpha: float = 0.3, scale: float = 1e6, pixel_range: float | None = None):
    """Smooth Surface Regularization (Wang et al. 2020, Def. 7): (1 - alpha) CE + alpha * s * mean_n lambda_max,
    lambda_max the top eigenvalue of the closed-form input Hessian J^T (diag p - p p^T) J; with ``pixel_range``
    R it is taken w.r.t. pixels rescaled to [0, R] (see the module docstring).
    """
    ce = F.cross_entropy(model_output(model, x), y)
    lam = ssr_top_eigenvalue(model, x, create_graph=True).mean()
    if pixel_range is not None:
        if not pixel_range > 0:
            raise FragileError(f"ssr pixel_range must be positive, got {pixel_range!r}")
        low, high = model_bounds(model)
        lam = lam * ((high - low) / pixel_range) ** 2  # d2/dx_pix2 = (dx_raw/dx_pix)^2 d2/dx_raw2
    return (1 - alpha) * ce + alpha * scale * lam, {"ce": ce.item(), "lambda_max": lam.item()}


def pgd_attack(loss_fn, x, *, eps: float, steps: int, step_size: float, norm: str, bounds, seed: int = 0):
    """Maximise loss_fn(x') over the eps-ball (random start); returns x' detached."""
    low, high = bounds
    g = torch.Generator(device=x.device).manual_seed(seed)
    delta = (torch.rand(x.shape, generator=g, device=x.device, dtype=x.dtype) * 2 - 1) * eps
    if norm == "l2":
        delta = delta / delta.flatten(1).norm(dim=1).clamp(min=1e-12).view(-1, 1, 1, 1) * eps * 0.5
    for _ in range(int(steps)):
        delta = delta.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(loss_fn((x + delta).clamp(low, high)), delta)
        if norm == "linf":
            delta = (delta + step_size * grad.sign()).clamp(-eps, eps)
        else:
            grad = grad / grad.flatten(1).norm(dim=1).clamp(min=1e-12).view(-1, 1, 1, 1)
            delta = delta + step_size * grad
            delta = delta * (eps / delta.flatten(1).norm(dim=1).clamp(min=1e-12)).clamp(max=1).view(-1, 1, 1, 1)
    return (x + delta.detach()).clamp(low, high)


def pgd_loss(model, x, y, *, eps: float = 8.0, steps: int = 7, step_size: float = 2.0, norm: str = "linf"):
    """Madry et al. adversarial training: CE at a PGD point of the eps-ball (``eps``, ``step_size`` in pixel units
    of 255, ``norm`` "linf" or "l2", ``steps`` iterations, random start).
    """
    low, high = model_bounds(model)
    unit = (high - low) / 255.0
    x_adv = pgd_attack(lambda z: F.cross_entropy(model_output(model, z), y), x, eps=eps * unit, steps=steps,
                       step_size=step_size * unit, norm=norm, bounds=(low, high))
    loss = F.cross_entropy(model_output(model, x_adv), y)
    return loss, {"adv_ce": loss.item()}


def loss_ig(model, x, x_prime, y, m: int, create_graph: bool):
    """Integrated gradients of the per-sample CE from x to x' (m Riemann points), (N, ...)."""
    total = torch.zeros_like(x)
    for k in range(1, m + 1):
        z = (x + k / m * (x_prime - x))
        if not z.requires_grad:
            z = z.requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model_output(model, z), y, reduction="sum"), z, create_graph=create_graph)
        total = total + g / m
    return (x_prime - x) * total


def ig_norm_loss(model, x, y, *, eps: float = 8.0, steps: int = 7, step_size: float = 2.0, beta: float = 0.1,
                 m: int = 10):
    """IG-NORM (Chen et al. 2019): CE + beta * ||IG of the loss from x to x'||_1, x' the PGD point (``eps``,
    ``step_size`` in pixel units of 255) that maximises that norm; ``m`` Riemann points per integral.
    """
    low, high = model_bounds(model)
    unit = (high - low) / 255.0
    x_adv = pgd_attack(lambda z: loss_ig(model, x, z, y, m, True).abs().sum(), x, eps=eps * unit, steps=steps,
                       step_size=step_size * unit, norm="linf", bounds=(low, high))
    ce = F.cross_entropy(model_output(model, x), y)
    penalty = loss_ig(model, x, x_adv.requires_grad_(False), y, m, True).abs().flatten(1).sum(1).mean()
    return ce + beta * penalty, {"ce": ce.item(), "ig_norm": penalty.item()}


def spectral_norm(module: nn.Module, input_shape: tuple[int, ...] | None = None, iters: int = 20,
                  seed: int = 0) -> torch.Tensor:
    """Largest singular value of a Linear layer, or of a Conv2d as an operator on ``input_shape``
    (C, H, W), by power iteration (differentiable in the weights at the last step)."""
    g = torch.Generator().manual_seed(seed)
    if isinstance(module, nn.Linear):
        w = module.weight
        v = torch.randn(w.shape[1], generator=g, dtype=w.dtype).to(w.device)
        with torch.no_grad():
            for _ in range(iters):
                v = w.T @ (w @ v)
                v = v / v.norm()
        return (w @ v).norm()
    if isinstance(module, nn.Conv2d):
        if input_shape is None:
            raise FragileError("a conv layer's spectral norm needs its input shape (C, H, W)")
        w = module.weight
        conv = lambda t, weight=w: F.conv2d(t, weight, None, module.stride, module.padding, module.dilation,  # noqa: E731
                                            module.groups)
        v = torch.randn((1, *input_shape), generator=g, dtype=w.dtype).to(w.device)
        with torch.no_grad():
            for _ in range(iters):
                out = conv(v)
                v = torch.nn.grad.conv2d_input(v.shape, w, out, module.stride, module.padding, module.dilation,
                                               module.groups)
                v = v / v.norm()
        return conv(v).norm()
    raise FragileError(f"no spectral norm for {type(module).__name__}")


def lipschitz_loss(model, x, y, *, weight: float = 1e-3, iters: int = 5):
    """Ghorbani et al. App. J (eq. 6): CE + weight * prod_l ||W_l||_2 over the Conv2d and Linear layers (their
    spectral norms by ``iters`` power iterations, convolutions as operators on their input shape).
    """
    shapes = {}
    hooks = [m.register_forward_hook(lambda m, i, o: shapes.__setitem__(m, tuple(i[0].shape[1:])))
             for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        logits = model_output(model, x)
    finally:
        for h in hooks:
            h.remove()
    norms = [spectral_norm(m, shapes.get(m), iters=iters) for m in shapes]
    product = torch.stack(norms).log().sum().exp()
    ce = F.cross_entropy(logits, y)
    return ce + weight * product, {"ce": ce.item(), "lipschitz_bound": product.item()}


REGULARIZERS: dict[str, Callable] = {"ce": ce_loss, "ssr": ssr_loss, "pgd": pgd_loss, "ig_norm": ig_norm_loss,
                                     "lipschitz": lipschitz_loss}


def create(name: str, **params) -> Callable:
    """The regulariser ``name`` (ce, ssr, pgd, ig_norm, lipschitz) with ``params`` bound: a function
    ``(model, x, y) -> (loss, logs)`` carrying ``.name`` and ``.params``.
    """
    if name not in REGULARIZERS:
        raise FragileError(f"unknown regulariser {name!r}; known: {', '.join(sorted(REGULARIZERS))}")
    fn = REGULARIZERS[name]

    def loss(model, x, y):
        return fn(model, x, y, **params)

    loss.name, loss.params = name, params
    return loss
