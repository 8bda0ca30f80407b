"""Region perturbation (Samek et al. 2017, sec. III; Quantus 0.6 ``RegionPerturbation``).

The image is cut into non-overlapping square patches; patches are replaced by a baseline one after another,
in the order of their summed relevance (most relevant first, MoRF), and the drop of the class score is tracked:

    AOPC = 1 / (L + 1) * sum_{k=0}^{L} [f(x^(0)) - f(x^(k))]          (Samek et al. 2017, eq. 12)

with x^(k) the image after k patches removed. A faithful map has a *high* AOPC (MoRF). The patch grid is
Quantus': when the patch size does not divide H or W, the grid is that of the image padded symmetrically
(the floor of half the padding on the top / left), so the border patches are cut.
"""

from __future__ import annotations

import torch

from fragile.errors import FragileError
from fragile.explanations.gradient import chunked
from fragile.metrics import _perturb as P

ORDERS = ("morf", "lerf", "random")


def patch_grid(h: int, w: int, patch_size: int, device=None) -> tuple[torch.Tensor, int]:
    """The patch index of every pixel, (H, W) long, raster order (row by row) over the grid of ``patch_size``
    patches of the image padded as Quantus does (``get_padding_size``: the floor of half the padding before),
    and the number of patches."""
    p = int(patch_size)
    ph0, pw0 = ((-h) % p) // 2, ((-w) % p) // 2
    rows = (torch.arange(h, device=device) + ph0) // p
    cols = (torch.arange(w, device=device) + pw0) // p
    n_cols = (w + (-w) % p) // p
    n_rows = (h + (-h) % p) // p
    return rows.view(-1, 1) * n_cols + cols.view(1, -1), n_rows * n_cols


def patch_sums(relevance: torch.Tensor, grid: torch.Tensor, n_patches: int) -> torch.Tensor:
    """Relevance summed over each patch (and the channels): (N, C, H, W) -> (N, n_patches) float64."""
    n = relevance.shape[0]
    flat = relevance.double().sum(1).reshape(n, -1)
    return torch.zeros((n, n_patches), dtype=torch.float64, device=flat.device).scatter_add_(
        1, grid.reshape(1, -1).expand(n, -1), flat)


def region_perturbation(model, x: torch.Tensor, relevance: torch.Tensor, *, target=None, patch_size: int = 8,
                        regions_evaluation: int = 100, order: str = "morf", baseline="black", output: str = "softmax",
                        seed: int = 0, batch_size: int = 512) -> dict[str, torch.Tensor]:
    """Region perturbation curve and AOPC (Samek et al. 2017, eq. 12) of ``relevance`` for ``x: (N, C, H, W)``.

    ``relevance``: (N, C, H, W), (N, 1, H, W) or (N, H, W); each patch's score is its relevance summed over the
    patch's pixels and channels. ``order``: 'morf' (largest sum first), 'lerf' (smallest first) or 'random'
    (a seeded permutation per image). The first ``regions_evaluation`` patches (at most all of them) are
    replaced cumulatively by ``baseline`` ('black' the image minimum, Quantus' default; 'white' the maximum;
    'mean' the image mean; 'zero'; or a number). ``output``: 'softmax' (Quantus' default) or 'logit'.
    ``target`` (default: the predicted class) is the tracked class.

    Returns {"curve": (R, N) float64, f(x) - f(x^(k)) for k = 1..R (Quantus' per-image result), "aopc": (N,),
    the sum of the curve / (R + 1) (eq. 12; the k = 0 term is 0), "patches": the number of patches}. All
    steps of all images are batched (``batch_size`` images per forward pass).

    Quantus 0.6 gives the same curve for 'black', 'white' and numbers (its patches do not overlap either);
    its 'mean' is the mean of the image *as perturbed so far* (here: of the original image), and it sorts
    the patch sums with an unstable sort (ties may be broken differently; here: stable, first patch first).
    """
    x = P.check_x(x)
    a = P.check_relevance(relevance, x)
    ps = P.int_at_least(patch_size, "patch_size")
    if ps > min(x.shape[-2:]):
        raise FragileError(f"patch_size must be at most min(H, W) = {min(x.shape[-2:])}, got {ps}")
    regions = P.int_at_least(regions_evaluation, "regions_evaluation")
    if order not in ORDERS:
        raise FragileError(f"order must be one of {list(ORDERS)}, got {order!r}")
    P.check_baseline(baseline)
    output = P.check_output(output)
    n = x.shape[0]
    grid, n_patches = patch_grid(*x.shape[-2:], ps, device=x.device)
    sums = patch_sums(a, grid, n_patches)
    if order == "random":
        gen = torch.Generator(device=x.device).manual_seed(int(seed))
        ranking = torch.rand((n, n_patches), generator=gen, device=x.device).argsort(1)
    else:
        ranking = sums.argsort(dim=1, descending=order == "morf", stable=True)
    rank = torch.empty_like(ranking).scatter_(1, ranking, torch.arange(n_patches, device=x.device).expand(n, -1))
    pixel_rank = rank.gather(1, grid.reshape(1, -1).expand(n, -1)).view(n, 1, *x.shape[-2:])
    fill = P.fill_value(x, baseline)
    _, t = P.predict(model, x, target)
    y0 = P.stack_scores(model, x.unsqueeze(0), t, output, batch_size)[0]
    steps = min(regions, n_patches)
    drops = []
    for sl in chunked(steps, P.steps_per_chunk(n, batch_size)):
        ks = torch.arange(sl.start + 1, sl.stop + 1, device=x.device).view(-1, 1, 1, 1, 1)
        xs = torch.where(pixel_rank.unsqueeze(0) < ks, fill.unsqueeze(0), x.unsqueeze(0))
        drops.append(y0.unsqueeze(0) - P.stack_scores(model, xs, t, output, batch_size))
    curve = torch.cat(drops)
    return {"curve": curve, "aopc": curve.sum(0) / (steps + 1), "patches": n_patches}
