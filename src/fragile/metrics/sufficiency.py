"""Sufficiency (Dasgupta, Frost & Moshkovitz 2022, sec. 3 "local sufficiency"; Quantus 0.6 ``Sufficiency``).

An explanation is sufficient when inputs with (nearly) the same explanation get the same prediction. Over a
batch of N images with maps a_i and predicted classes y_i:

    suff(i) = |{j != i : d(a_i, a_j) <= threshold, y_j = y_i}| / |{j != i : d(a_i, a_j) <= threshold}|

(0 where image i has no neighbour within the threshold), with d the distance between the flattened maps divided
by its largest value in the batch (as Quantus), so that the threshold is a fraction of the batch's spread. The
metric is defined *over the batch*: the same image scores differently in another batch.
"""

from __future__ import annotations

import torch

from fragile.errors import FragileError
from fragile.metrics import _perturb as P

DISTANCES = ("seuclidean", "euclidean")


def explanation_distances(relevance: torch.Tensor, distance: str = "seuclidean") -> torch.Tensor:
    """Pairwise distances of the flattened maps (N, ...) -> (N, N) float64.

    'seuclidean': scipy's standardised Euclidean distance as ``cdist(a, a, 'seuclidean')`` computes it, each
    feature divided by its variance over the rows of [a; a] (2N rows, ddof=1, i.e. 2 / (2N - 1) times the sum
    of squares about the mean); features that are constant over the batch carry no information and are left
    out (scipy divides 0 by 0 there and every distance becomes NaN). 'euclidean': the plain distance."""
    n = relevance.shape[0]
    flat = relevance.reshape(n, -1).double()
    if distance == "seuclidean":
        centred = flat - flat.mean(0, keepdim=True)
        var = centred.pow(2).sum(0) * 2 / (2 * n - 1)
        keep = var > 0
        flat = flat[:, keep] / var[keep].sqrt()
    return torch.cdist(flat, flat, compute_mode="donot_use_mm_for_euclid_dist")


def sufficiency(model, x: torch.Tensor, relevance: torch.Tensor, *, threshold: float = 0.6,
                distance: str = "seuclidean", normalise: bool = True) -> torch.Tensor:
    """Sufficiency (Dasgupta et al. 2022) of the maps ``relevance`` of the batch ``x: (N, C, H, W)``, per image,
    (N,) float64 in [0, 1]: the fraction of the other images whose map is within ``threshold`` (in
    :func:`explanation_distances` ``distance``, divided by the largest distance in the batch unless
    ``normalise=False``; all-zero distances stay 0) that the model assigns the same predicted class; 0 where there
    is none. Higher = more faithful.

    ``relevance``: (N, C, H, W), (N, 1, H, W) or (N, H, W), compared flattened as given. Quantus 0.6's
    Sufficiency (threshold 0.6, 'seuclidean') gives the same values on one batch (it computes within each of its
    ``batch_size`` batches) when no feature is constant over the batch; where one is, scipy's distances are all
    NaN and Quantus scores 0 for every image, while here the constant features are left out of the distance.
    Quantus' defaults abs=True, normalise=True change the distances: apply them to the maps first to reproduce it.
    """
    x = P.check_x(x)
    P.check_relevance(relevance, x)
    if distance not in DISTANCES:
        raise FragileError(f"distance must be one of {list(DISTANCES)}, got {distance!r}")
    threshold = P.float_param(threshold, "threshold")
    n = x.shape[0]
    if n < 2:
        raise FragileError("sufficiency compares the maps of a batch: x needs at least 2 images")
    d = explanation_distances(relevance, distance)
    if normalise and bool((d > 0).any()):
        d = d / d.max()
    near = (d <= threshold) & ~torch.eye(n, dtype=torch.bool, device=d.device)
    out, _ = P.predict(model, x)
    y = out.argmax(1)
    same = y.view(1, -1) == y.view(-1, 1)
    count = near.sum(1).double()
    return torch.where(count > 0, (near & same).sum(1).double() / count.clamp(min=1), torch.zeros_like(count))
