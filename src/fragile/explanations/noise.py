"""Noise-averaged explanations: SmoothGrad and Uniform Gradient.

    SmoothGrad (Smilkov et al. 2017; Dombrowski et al. 2019 sec. 4.3 and footnote 7):
        h_sg(x) = (1/S) sum_s h(x + n_s),   n_s ~ N(0, (sigma * (high - low))^2 I)
    Uniform Gradient (Wang et al. 2020, Def. 8):
        h_ug(x) = (1/S) sum_s grad f(x + u_s),   u_s ~ U([-r, r]^d),  r = radius * (high - low)

Both wrap any other method (``method=...``, default ``gradient``). The noise is drawn as
``randn``/``rand`` of shape (S, N, C, H, W), chunk by chunk, from a generator chosen by ``noise_mode``:

- ``"fresh"`` (default, as in the papers): the explainer owns a noise *stream*, one
  ``torch.Generator`` per device (created lazily on ``x.device``) seeded with ``seed``, that
  advances with every call. Two calls draw new, independent noise; the sequence of draws is
  reproducible (the first call equals the ``"fixed"`` draw). ``seed=None`` takes the seed from
  torch's global RNG when the explainer is built (reproducible under ``torch.manual_seed``).
  :meth:`NoiseAveraged.reseed` restarts the stream at a seed derived from the given one (the attack
  loop does this with the attack's seed, so a whole run is reproducible from it).
- ``"fixed"``: fixed noise (common random numbers): the generator is reseeded with ``seed`` at every
  call, so every call, on any input, draws the same noise (the behaviour before fresh noise
  existed; ``reseed`` does not change it). Finite-difference checks need it.

Shallow copies (``smoothed()``, ``surrogate()``) share the stream: the softplus surrogate an attack
differentiates and the original explainer it is evaluated on draw successive, hence independent,
noise, and the interleaved sequence is still reproducible after ``reseed``.

Expectation over transformation. With fresh noise, the gradient an attack takes through the map,
d/dx L((1/S) sum_s h(x + n_s)), is a one-draw unbiased estimate of

    d/dx E_{n_1..n_S} [ L( (1/S) sum_s h(x + n_s) ) ],

the EOT gradient (Athalye et al. 2018): the attack optimises the expected loss of the S-sample map
by a fresh S-sample estimate each iteration (stochastic gradient), not the loss at one frozen noise
sample it could overfit, and the attacked map is then evaluated on independent draws.
"""

from __future__ import annotations

import copy
import functools

import torch

from fragile.errors import FragileError
from fragile.explanations.base import Explainer, float_param, int_param, model_bounds
from fragile.explanations.chunks import chunk_param, chunk_sum, points_per_chunk
from fragile.explanations.gradient import chunked, repeat_target
from fragile.models.outputs import OUTPUT_KEY

NOISES = {
    "gaussian": lambda shape, g, x: torch.randn(shape, generator=g, dtype=x.dtype, device=x.device),
    "uniform": lambda shape, g, x: 2 * torch.rand(shape, generator=g, dtype=x.dtype, device=x.device) - 1,
}
NOISE_MODES = ("fresh", "fixed")
_MASK64 = 2**64 - 1


def derive_seed(seed: int) -> int:
    """A well-mixed 63-bit seed from any int (SplitMix64 finaliser), so nearby seeds give unrelated streams."""
    z = (int(seed) + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) >> 1


class NoiseStream:
    """One ``torch.Generator`` per device, created lazily and seeded with ``seed``; it advances with
    every draw. Shared (not copied) by shallow copies of the explainer that owns it."""

    def __init__(self, seed: int):
        self.reset(seed)

    def reset(self, seed: int) -> None:
        """Restart every device's stream at ``seed`` (in place, so every sharer sees it)."""
        self.seed = int(seed)
        self._generators: dict[str, torch.Generator] = {}

    def generator(self, device: torch.device) -> torch.Generator:
        """This stream's generator on ``device`` (created from the seed on first use)."""
        key = str(device)
        if key not in self._generators:
            self._generators[key] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[key]


def _check_seed(seed, what: str) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise FragileError(f"{what} must be an int, got {seed!r}")


class NoiseAveraged(Explainer):
    """Average of ``method`` over ``samples`` noisy copies of x (see module docstring).

    ``noise_mode``: ``"fresh"`` (default; new noise at every call from a reproducible stream seeded
    with ``seed``) or ``"fixed"`` (fixed noise, common random numbers: the same draw at every call).
    ``batch_size``: images (samples x batch) per call of ``method``, ``"auto"`` (default) from the image
    size (``fragile.explanations.chunks``), an integer or None (all at once). ``replay`` (default True):
    differentiating through the map recomputes one chunk of samples at a time in the backward, with the
    call's own noise (memory of one chunk; ``False``: keep every chunk's graph; the same gradient).
    """

    name = "smoothgrad"
    plain_autograd = True
    noise = "gaussian"
    smooth_in_input = True  # the expectation over the noise is smooth in x, also on a ReLU network

    def __init__(self, model, *, method="gradient", scale: float = 0.15, samples: int = 50,
                 seed: int | None = 0, noise_mode: str = "fresh", method_params: dict | None = None,
                 batch_size: int | str | None = "auto", replay: bool = True, **kw):
        from fragile.explanations.registry import create

        super().__init__(model, output=kw.pop("output", "logit"), output_key=kw.pop("output_key", OUTPUT_KEY))
        samples = int_param(samples, "samples")
        scale = float_param(scale, "noise scale" if self.noise == "gaussian" else "radius")
        batch_size = chunk_param(batch_size)
        if noise_mode not in NOISE_MODES:
            raise FragileError(f"unknown noise_mode {noise_mode!r}; choose one of {NOISE_MODES}")
        if seed is not None:
            _check_seed(seed, "seed")
        self.inner = method if isinstance(method, Explainer) else create(
            method, model, output=self.output, output_key=self.output_key, **kw, **(method_params or {}))
        self.scale, self.samples, self.seed, self.batch_size = float(scale), int(samples), seed, batch_size
        self.noise_mode, self.replay = noise_mode, bool(replay)
        self._fixed_seed = int(torch.randint(0, 2**62, ()).item()) if seed is None else seed
        self._stream = NoiseStream(self._fixed_seed)
        low, high = model_bounds(model)
        self.sigma = self.scale * (high - low)

    def reseed(self, seed: int) -> None:
        """Restart the fresh-noise stream (shared with this explainer's shallow copies) at
        ``derive_seed(seed)`` and reseed the inner method with that derived seed. Fixed noise is
        unchanged (it depends on ``seed`` given at construction only)."""
        _check_seed(seed, "reseed's seed")
        derived = derive_seed(seed)
        self._stream.reset(derived)
        self.inner.reseed(derived)

    def independent_noise(self, seed: int) -> NoiseAveraged:
        """A shallow copy with its own fresh-noise stream at ``derive_seed(seed)`` (the inner method too, when it
        draws noise itself), so its draws neither consume nor follow this explainer's stream."""
        _check_seed(seed, "independent_noise's seed")
        clone = copy.copy(self)
        clone._stream = NoiseStream(derive_seed(seed))
        clone.inner = self.inner.independent_noise(derive_seed(seed))
        return clone

    def smoothed(self, beta):
        """A copy whose inner method is beta-smoothed (softplus(beta)); it shares this one's noise stream."""
        clone = super().smoothed(None)  # a shallow copy: shares the noise stream
        clone.inner = self.inner.smoothed(beta)
        return clone

    def surrogate(self, beta):
        """What an attack differentiates: this method if its inner method is already smoothed, else ``smoothed(beta)``."""
        return self if self.inner.smooth_beta is not None else self.smoothed(beta)

    def average_points(self) -> int:
        """The noise samples S."""
        return self.samples

    def subsampled(self, points: int, generator: torch.Generator) -> NoiseAveraged:
        """A copy drawing ``points`` fresh samples per call from this one's stream (shared): an unbiased estimate of
        the S-sample map (both average to the same expectation over the noise). ``generator`` is not used. Fixed noise
        is refused: every call would take the same first samples of the same draw, a biased estimate of its map."""
        if self.noise_mode == "fixed":
            raise FragileError(f"{self.name} with noise_mode='fixed' cannot be subsampled (every call draws the same "
                               "noise, so fewer samples would be a fixed, biased subset); use noise_mode='fresh'")
        clone = copy.copy(self)
        clone.samples = int(points)
        return clone

    def _generator(self, device) -> torch.Generator:
        if self.noise_mode == "fixed":
            return torch.Generator(device=device).manual_seed(self._fixed_seed)
        return self._stream.generator(device)

    def _attribute(self, net, x, target, create_graph):
        xg = x if (create_graph and x.requires_grad) else x.detach()
        return chunk_sum(self, net, self._terms(target, self._generator(x.device)), (xg,), create_graph,
                         self.replay) / self.samples

    def _terms(self, target, gen: torch.Generator):
        """The chunks of sum_s h(x + n_s). The first pass draws the noise from ``gen`` (advancing the stream);
        a replay (``fragile.explanations.chunks``) draws the same noise again from ``gen``'s state at the start."""
        start, first = gen.get_state(), [gen]

        def terms(net, x):
            g = first.pop() if first else torch.Generator(device=x.device).set_state(start)
            for sl in chunked(self.samples, points_per_chunk(self.batch_size, x, self.samples)):
                eps = NOISES[self.noise]((sl.stop - sl.start, *x.shape), g, x) * self.sigma
                yield functools.partial(self._noise_chunk, x, eps, target)

        return terms

    def _noise_chunk(self, x, eps, target, create_graph):
        """sum_{s in chunk} h(x + n_s): (N, C, H, W), for the noise ``eps: (S_chunk, N, C, H, W)``."""
        s = eps.shape[0]
        noisy = (x.unsqueeze(0) + eps).reshape(-1, *x.shape[1:])
        t = repeat_target(target, x.shape[0], s, x.device)
        return self.inner.attribute(noisy, t, create_graph).view(s, *x.shape).sum(0)


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
