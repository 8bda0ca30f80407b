"""Infidelity (Yeh et al. 2019, eq. 3; Quantus 0.6 ``Infidelity``).

    INFD(phi, f, x) = E_I [ (I^T phi(x) - (f(x) - f(x - I)))^2 ]

the mean squared error between the change of the class score under a perturbation I and the change the map
predicts for it (a first-order, "completeness" view of the map). Lower = more faithful.

The perturbations are Quantus' square-patch ones: for a patch size p, the patches of the image's p x p grid
(the grid of :func:`fragile.metrics.region.patch_grid`) are replaced by the baseline one after another in raster
order, *cumulatively*, and I_k = x - x^(k) with x^(k) the image after the first k patches are replaced; the
expectation is the mean over the k = 1..P patches of the grid, then over the patch sizes and the
``n_perturb_samples`` draws (which differ only for the random 'uniform' baseline). This is Quantus 0.6's
protocol, not a random draw of I from a distribution as in Yeh et al.'s paper.
"""

from __future__ import annotations

import torch

from fragile.errors import FragileError
from fragile.explanations.gradient import chunked
from fragile.metrics import _perturb as P
from fragile.metrics.region import patch_grid


def infidelity(model, x: torch.Tensor, relevance: torch.Tensor, *, target=None, perturb_patch_sizes=(4,),
               n_perturb_samples: int = 10, baseline="black", loss: str = "mse", output: str = "logit",
               uniform_range: tuple[float, float] = (0.0, 1.0), seed: int = 0, batch_size: int = 512) -> torch.Tensor:
    """Infidelity (Yeh et al. 2019, eq. 3) of ``relevance`` for ``x: (N, C, H, W)``, per image, (N,) float64,
    in squared units of the class score (logit by default, as Quantus; ``output='softmax'``: probability).

    ``relevance``: (N, C, H, W), (N, 1, H, W) or (N, H, W) (broadcast over the channels); phi^T I is the sum over
    all C x H x W features of relevance * (x - x^(k)). ``perturb_patch_sizes``: the patch sizes p (each <=
    min(H, W)); ``baseline``: the replacement value ('black' the image minimum, Quantus' default; 'white',
    'mean' (of the original image), 'zero', a number, or 'uniform': a value drawn uniformly in
    ``uniform_range`` per image, patch and sample, seeded by ``seed``, as Quantus draws it); ``loss``: 'mse'
    (Quantus' default and only loss). ``target`` (default: the predicted class) is the explained class.
    Every patch step of every image (and of every sample, for 'uniform') is batched, ``batch_size`` images
    per forward pass.

    Quantus 0.6's Infidelity gives the same values for 'black', 'white' and numbers (in the test, to 1e-10).
    Differences: its 'mean' is the mean of the image as perturbed so far (here: of the original image); its
    patch loop fails when p does not divide H and W (here: Quantus' padded grid, the border patches cut);
    'uniform' is the same distribution from another random stream.
    """
    x = P.check_x(x)
    a = P.check_relevance(relevance, x)
    sizes = [perturb_patch_sizes] if isinstance(perturb_patch_sizes, int) else list(perturb_patch_sizes)
    if not sizes:
        raise FragileError("perturb_patch_sizes must name at least one patch size")
    sizes = [P.int_at_least(p, "perturb_patch_sizes") for p in sizes]
    if max(sizes) > min(x.shape[-2:]):
        raise FragileError(f"perturb_patch_sizes must be at most min(H, W) = {min(x.shape[-2:])}, got {sizes}")
    samples = P.int_at_least(n_perturb_samples, "n_perturb_samples")
    P.check_baseline(baseline, extra=("uniform",))
    if loss != "mse":
        raise FragileError(f"loss must be 'mse', got {loss!r}")
    output = P.check_output(output)
    lo, hi = (float(v) for v in uniform_range)
    if not lo <= hi:
        raise FragileError(f"uniform_range must be (low, high) with low <= high, got {uniform_range!r}")
    n = x.shape[0]
    _, t = P.predict(model, x, target)
    y0 = P.stack_scores(model, x.unsqueeze(0), t, output, batch_size)[0]
    gen = torch.Generator(device=x.device).manual_seed(int(seed))
    random = baseline == "uniform"
    draws = samples if random else 1  # a fixed baseline gives the same perturbations in every sample
    per_size = []
    for p in sizes:
        grid, n_patches = patch_grid(*x.shape[-2:], p, device=x.device)
        pixel_patch = grid.view(1, 1, 1, *x.shape[-2:])
        if random:
            values = torch.rand((draws, n_patches, n), generator=gen, device=x.device, dtype=torch.float64) * (hi - lo) + lo
        else:
            values = P.fill_value(x, baseline).reshape(1, 1, n).double().expand(draws, n_patches, n)
        # (draws, n_patches, N, 1, 1, 1) -> the value of each pixel's patch: (draws, N, 1, H, W)
        pixel_value = values.permute(0, 2, 1).gather(2, grid.reshape(1, 1, -1).expand(draws, n, -1))
        pixel_value = pixel_value.view(draws, n, 1, *x.shape[-2:]).to(x.dtype)
        errors = []
        jobs = [(s, k) for s in range(draws) for k in range(1, n_patches + 1)]
        for sl in chunked(len(jobs), P.steps_per_chunk(n, batch_size)):
            s_idx = torch.tensor([jobs[i][0] for i in range(sl.start, sl.stop)], device=x.device)
            ks = torch.tensor([jobs[i][1] for i in range(sl.start, sl.stop)], device=x.device).view(-1, 1, 1, 1, 1)
            xs = torch.where(pixel_patch < ks, pixel_value[s_idx], x.unsqueeze(0))  # (J, N, C, H, W)
            drop = y0.unsqueeze(0) - P.stack_scores(model, xs, t, output, batch_size)
            predicted = (a.unsqueeze(0) * (x.unsqueeze(0) - xs).double()).flatten(2).sum(2)
            errors.append((predicted - drop) ** 2)
        per_size.append(torch.cat(errors).view(draws, n_patches, n).mean(1).mean(0))
    return torch.stack(per_size).mean(0)
