"""Noise-averaged explanations: SmoothGrad and Uniform Gradient.

    SmoothGrad (Smilkov et al. 2017; Dombrowski et al. 2019 sec. 4.3 and footnote 7):
        h_sg(x) = (1/S) sum_s h(x + n_s),   n_s ~ N(0, (sigma * (high - low))^2 I)
    Uniform Gradient (Wang et al. 2020, Def. 8):
        h_ug(x) = (1/S) sum_s grad f(x + u_s),   u_s ~ U([-r, r]^d),  r = radius * (high - low)

Both wrap any other method (``method=...``, default ``gradient``). The noise is drawn per call from a
generator seeded with ``seed`` (``randn``/``rand`` of shape (S, N, C, H, W), chunk by chunk), so the
same noise is used for an image and its perturbed copy (common random numbers, which keeps attack
comparisons fair; Wang's reference code used different sigmas there). ``seed=None`` draws fresh noise.
"""

from __future__ import annotations

import torch

from fragile.errors import FragileError
from fragile.explanations.base import Explainer, model_bounds
from fragile.explanations.gradient import chunked, repeat_target

NOISES = {
    "gaussian": lambda shape, g, x: torch.randn(shape, generator=g, dtype=x.dtype, device=x.device),
    "uniform": lambda shape, g, x: 2 * torch.rand(shape, generator=g, dtype=x.dtype, device=x.device) - 1,
}


class NoiseAveraged(Explainer):
    """Average of ``method`` over ``samples`` noisy copies of x (see module docstring)."""

    name = "smoothgrad"
    noise = "gaussian"

    def __init__(self, model, *, method="gradient", scale: float = 0.15, samples: int = 50,
                 seed: int | None = 0, method_params: dict | None = None,
                 batch_size: int | None = 256, **kw):
        from fragile.explanations.registry import create

        super().__init__(model, output=kw.pop("output", "logit"))
        if int(samples) < 1:
            raise FragileError(f"samples must be >= 1, got {samples}")
        if float(scale) < 0:
            raise FragileError(f"noise scale must be >= 0, got {scale}")
        self.inner = method if isinstance(method, Explainer) else create(
            method, model, output=self.output, **kw, **(method_params or {}))
        self.scale, self.samples, self.seed, self.batch_size = float(scale), int(samples), seed, batch_size
        low, high = model_bounds(model)
        self.sigma = self.scale * (high - low)

    def smoothed(self, beta):
        clone = super().smoothed(None)
        clone.inner = self.inner.smoothed(beta)
        return clone

    def surrogate(self, beta):
        return self if self.inner.smooth_beta is not None else self.smoothed(beta)

    def _attribute(self, net, x, target, create_graph):
        n = x.shape[0]
        gen = torch.Generator(device=x.device)
        gen.manual_seed(self.seed if self.seed is not None else int(torch.seed() % 2**62))
        xg = x if (create_graph and x.requires_grad) else x.detach()
        total = torch.zeros_like(x)
        per_chunk = max(1, (self.batch_size or n * self.samples) // n)
        for sl in chunked(self.samples, per_chunk):
            s = sl.stop - sl.start
            eps = NOISES[self.noise]((s, *x.shape), gen, x) * self.sigma
            noisy = (xg.unsqueeze(0) + eps).reshape(-1, *x.shape[1:])
            t = repeat_target(target, n, s, x.device)
            total = total + self.inner.attribute(noisy, t, create_graph).view(s, *x.shape).sum(0)
        return total / self.samples


class SmoothGrad(NoiseAveraged):
    """SmoothGrad; ``scale`` is sigma relative to the data range (default 0.15)."""

    name = "smoothgrad"
    noise = "gaussian"


class UniformGradient(NoiseAveraged):
    """Uniform Gradient (Wang Def. 8); ``radius`` relative to the data range (default 0.1)."""

    name = "uniform_gradient"
    noise = "uniform"

    def __init__(self, model, *, radius: float = 0.1, **kw):
        super().__init__(model, scale=radius, **kw)
