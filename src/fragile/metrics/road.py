"""ROAD: RemOve And Debias (Rong, Leemann et al. 2022; Quantus 0.6 ``ROAD``).

Pixels are removed in the order of their relevance (most relevant first, MoRF) and *imputed* instead of being
set to a constant, so that the shape of the removed region does not leak the ranking to the model (the "class
information leakage" of sec. 4). The noisy linear imputation (sec. 5, eq. 5) sets each removed pixel to the
weighted mean of its 8 neighbours, removed neighbours being unknowns themselves:

    x_i = sum_{j in N(i)} w_ij x_j / sum_{j in N(i)} w_ij,   w = 1/6 (4-neighbours), 1/12 (diagonals)

(the sum over the neighbours inside the image), one sparse linear system over the removed pixels per image and
fraction, solved for all channels at once; Gaussian noise of std ``noise`` is then added to the imputed
values. The curve is the top-1 accuracy (prediction == target) against the percentage removed; a faithful map
makes it fall fast (a *low* area under it, MoRF).
"""

from __future__ import annotations

import numbers

import numpy as np
import torch

from fragile.errors import FragileError
from fragile.explanations.gradient import chunked
from fragile.metrics import _perturb as P

#: (row offset, column offset, weight) of the 8 neighbours (Rong et al. 2022, sec. 5; Quantus' offset_weight).
NEIGHBOURS = ((1, 1, 1 / 12), (0, 1, 1 / 6), (-1, 1, 1 / 12), (1, -1, 1 / 12), (0, -1, 1 / 6), (-1, -1, 1 / 12),
              (1, 0, 1 / 6), (-1, 0, 1 / 6))


def _solve(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Noise-free linear imputation, all systems of ``x: (S, C, H, W)``, ``mask: (S, H, W)`` in one block-diagonal
    sparse solve (float64) -> (S, C, H, W) float64 on x's device."""
    from scipy.sparse import csc_matrix
    from scipy.sparse.linalg import spsolve

    n, c, h, w = x.shape
    m = mask.cpu().numpy().reshape(n, h * w)
    flat = x.detach().double().reshape(n, c, h * w).permute(0, 2, 1).clone()  # (S, HW, C)
    if not m.any():
        return flat.permute(0, 2, 1).reshape(n, c, h, w)
    img = flat.cpu().numpy()
    var_id = np.full(m.shape, -1, dtype=np.int64)
    var_id[m] = np.arange(int(m.sum()))
    sys_of, pix = np.nonzero(m)  # the unknowns, in order: (system, pixel)
    r, q = pix // w, pix % w
    rows, cols, vals = [], [], []
    b = np.zeros((len(pix), c))
    diag = np.ones(len(pix))
    for dr, dq, wt in NEIGHBOURS:
        rr, qq = r + dr, q + dq
        inside = (rr >= 0) & (rr < h) & (qq >= 0) & (qq < w)
        diag[~inside] -= wt
        i = np.nonzero(inside)[0]
        nb = rr[i] * w + qq[i]
        nb_var = var_id[sys_of[i], nb]
        unknown = nb_var >= 0
        rows.append(i[unknown])
        cols.append(nb_var[unknown])
        vals.append(np.full(int(unknown.sum()), wt))
        known = i[~unknown]
        b[known] -= wt * img[sys_of[known], nb[~unknown], :]
    k = np.arange(len(pix))
    a = csc_matrix((np.concatenate(vals + [-diag]), (np.concatenate(rows + [k]), np.concatenate(cols + [k]))),
                   shape=(len(pix), len(pix)))
    solution = torch.from_numpy(spsolve(a, b).reshape(len(pix), c)).to(x.device)
    flat[torch.from_numpy(sys_of).to(x.device), torch.from_numpy(pix).to(x.device)] = solution
    return flat.permute(0, 2, 1).reshape(n, c, h, w)


def _noisy(x: torch.Tensor, solved: torch.Tensor, mask: torch.Tensor, noise: float, seed: int) -> torch.Tensor:
    """``solved`` plus N(0, noise^2) on the imputed pixels (one seeded draw of x's shape), in x's dtype."""
    if noise > 0:
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        z = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(x.device)
        solved = torch.where(mask.unsqueeze(1), solved + noise * z, solved)
    return solved.to(x.dtype)


def linear_imputation(x: torch.Tensor, mask: torch.Tensor, *, noise: float = 0.01, seed: int = 0) -> torch.Tensor:
    """Noisy linear imputation (Rong et al. 2022, eq. 5; Quantus' ``noisy_linear_imputation``) of the pixels where
    ``mask`` is True: ``x: (N, C, H, W)``, ``mask: (N, H, W)`` bool -> (N, C, H, W) in x's dtype.

    All N systems are one block-diagonal sparse system (scipy.sparse; the solve is in float64), each removed pixel
    the weighted mean of its in-image neighbours; ``noise``: the std of the Gaussian noise added to the imputed
    values (seeded by ``seed``; Quantus draws it with np.random, so only noise=0 is reproducible across the two).
    """
    x = P.check_x(x)
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.shape != (x.shape[0], *x.shape[-2:]):
        raise FragileError(f"mask must be a bool tensor (N, H, W) = {(x.shape[0], *x.shape[-2:])}, got "
                           f"{getattr(mask, 'dtype', type(mask).__name__)} {tuple(getattr(mask, 'shape', ()))}")
    noise = P.float_param(noise, "noise")
    return _noisy(x, _solve(x, mask.to(x.device)), mask.to(x.device), noise, seed)


def road(model, x: torch.Tensor, relevance: torch.Tensor, *, target=None, percentages=None, noise: float = 0.01,
         order: str = "morf", seed: int = 0, batch_size: int = 512) -> dict[str, torch.Tensor]:
    """ROAD curve (Rong et al. 2022) of ``relevance`` for ``x: (N, C, H, W)``.

    ``relevance``: (N, H, W) or (N, 1, H, W) pixel relevance, or (N, C, H, W), summed over the channels (the
    imputation removes whole pixels). For each percentage p (default 1, 3, ..., 99, Quantus'), the
    int(H W p / 100) most relevant pixels (``order='lerf'``: least relevant) are removed and imputed by
    :func:`linear_imputation` (noise std ``noise``, seeded); ``target`` (default: the predicted class on x)
    is the class whose top-1 accuracy is tracked. Returns {"percentages": (P,) float64, "correct": (P, N)
    float64 (1 where the model still predicts the target), "curve": (P,) the mean over the images (Quantus'
    result, a dict percentage -> accuracy), "auc": (N,) the trapezoid area of each image's curve over the
    fractions p / 100}. One block-diagonal sparse solve and one batched forward pass per ``batch_size`` // N percentages.

    Quantus 0.6's ROAD gives the same curve with noise=0 on one-channel images (with more channels it indexes
    the per-pixel imputation with channel-flattened feature indices and fails); it ranks with an unstable sort
    (ties may be broken differently; here: stable, first pixel first).
    """
    x = P.check_x(x)
    a = P.check_relevance(relevance, x)
    if relevance.dim() == 4 and relevance.shape[1] > 1:
        pixel_rel = a.sum(1)
    else:
        pixel_rel = a[:, 0]
    if percentages is None:
        percentages = list(range(1, 100, 2))
    pcts = [percentages] if isinstance(percentages, numbers.Real) else list(percentages)
    if not pcts or any(isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0 <= p < 100 for p in pcts):
        raise FragileError(f"percentages must be numbers in [0, 100) (with all pixels removed nothing is left to impute "
                           f"from), got {percentages!r}")
    if order not in ("morf", "lerf"):
        raise FragileError(f"order must be 'morf' or 'lerf', got {order!r}")
    noise = P.float_param(noise, "noise")
    n, hw = x.shape[0], x.shape[-2] * x.shape[-1]
    _, t = P.predict(model, x, target)
    counts = [int(hw * p / 100) for p in pcts]  # Quantus: int(a_size * p / 100)
    ranking = pixel_rel.reshape(n, -1).argsort(dim=1, descending=order == "morf", stable=True)
    rank = torch.empty_like(ranking).scatter_(1, ranking, torch.arange(hw, device=x.device).expand(n, -1))
    ks = torch.tensor(counts, device=x.device).view(-1, 1, 1, 1)
    masks = rank.view(1, n, *x.shape[-2:]) < ks  # (P, N, H, W)
    correct = []
    for sl in chunked(len(pcts), P.steps_per_chunk(n, batch_size)):  # one sparse solve per chunk of percentages
        m = masks[sl].reshape(-1, *x.shape[-2:])
        xk = x.unsqueeze(0).expand(masks[sl].shape[0], -1, -1, -1, -1).reshape(-1, *x.shape[1:])
        solved = _solve(xk, m).view(-1, *x.shape)
        xs = torch.stack([_noisy(x, solved[i], masks[j], noise, int(seed) * 1_000_003 + j)  # seeded per percentage
                          for i, j in enumerate(range(sl.start, sl.stop))])
        correct.append((P.stack_outputs(model, xs, batch_size).argmax(2) == t.view(1, n)).double())
    correct = torch.cat(correct)
    fr = torch.tensor([float(p) / 100 for p in pcts], dtype=torch.float64, device=x.device)
    auc = ((correct[1:] + correct[:-1]) / 2 * (fr[1:] - fr[:-1]).view(-1, 1)).sum(0)
    given = torch.tensor([float(p) for p in pcts], dtype=torch.float64, device=x.device)
    return {"percentages": given, "correct": correct, "curve": correct.mean(1), "auc": auc}
