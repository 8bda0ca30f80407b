"""Faithfulness of a map: pixel flipping / deletion and insertion curves (Samek et al. 2017;
Dombrowski et al. 2019 Fig. 7; Petsiuk et al. 2018 for insertion).

Pixels are ranked by relevance (most relevant first). For fractions f_j = j / steps:

    deletion:   x_j = x with the top f_j of pixels replaced by the baseline
    insertion:  x_j = baseline with the top f_j of pixels taken from x

and the class score, its probability and top-1 accuracy (prediction == label) are tracked. The area
under each curve over f in [0, 1] (trapezoid) summarises it: a faithful map has a *low* deletion AUC
and a *high* insertion AUC. ``random_relevance`` gives the random-order baseline of the same protocol.
All images and all fractions are batched.
"""

from __future__ import annotations

import torch

from fragile.errors import FragileError
from fragile.metrics._perturb import check_baseline, fill_value
from fragile.explanations.base import check_input, check_target
from fragile.explanations.gradient import chunked
from fragile.explanations.postprocess import reduce_channels
from fragile.models.outputs import match_input, model_output


def _blur(x: torch.Tensor, sigma: float = 2.0) -> torch.Tensor:
    radius = max(1, int(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-t ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    c = x.shape[1]
    x = torch.nn.functional.pad(x, (radius,) * 4, mode="replicate")
    x = torch.nn.functional.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1).contiguous(), groups=c)
    return torch.nn.functional.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1).contiguous(), groups=c)


BASELINES = {
    "zero": lambda x: torch.zeros_like(x),
    "mean": lambda x: x.mean(dim=(2, 3), keepdim=True).expand_as(x),
    "blur": _blur,
}


def random_relevance(x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """A random pixel ranking, (N, H, W)."""
    g = torch.Generator(device=x.device).manual_seed(seed)
    return torch.rand((x.shape[0], *x.shape[-2:]), generator=g, device=x.device)


def _auc(values: torch.Tensor, fractions: torch.Tensor) -> torch.Tensor:
    """Trapezoid area over fractions in [0, 1], per image: values (S+1, N) -> (N,)."""
    df = (fractions[1:] - fractions[:-1]).view(-1, 1)
    return ((values[1:] + values[:-1]) / 2 * df).sum(0)


def perturbation_curve(model, x: torch.Tensor, relevance: torch.Tensor, *, target=None, labels=None,
                       mode: str = "deletion", steps: int = 20, baseline: str = "zero",
                       batch_size: int = 512) -> dict[str, torch.Tensor]:
    """Deletion or insertion curve of ``relevance`` ((N, H, W), or (N, C, H, W) reduced by abs_sum).

    Returns fractions (S+1,), score / probability / correct (S+1, N) and their AUCs (N,). ``target``
    (default: the predicted class on x) is the tracked class; ``labels`` (default: target) define
    top-1 correctness.
    """
    x = match_input(model, check_input(x))
    if not isinstance(relevance, torch.Tensor):
        raise FragileError(f"relevance must be a tensor (N, C, H, W) or (N, H, W), got {type(relevance).__name__}")
    if mode not in ("deletion", "insertion"):
        raise FragileError(f"mode must be 'deletion' or 'insertion', got {mode!r}")
    if baseline not in BASELINES:
        raise FragileError(f"unknown baseline {baseline!r}; choose one of {sorted(BASELINES)}")
    if int(steps) < 1:
        raise FragileError(f"steps must be >= 1, got {steps}")
    rel = reduce_channels(relevance, "abs_sum") if relevance.dim() == 4 else relevance
    if rel.shape != (x.shape[0], *x.shape[-2:]):
        raise FragileError(f"relevance must be (N, H, W) = {(x.shape[0], *x.shape[-2:])}, got {tuple(relevance.shape)}")
    n, hw = x.shape[0], x.shape[-2] * x.shape[-1]
    with torch.no_grad():
        out0 = model_output(model, x)
    t = out0.argmax(1) if target is None else check_target(target, n, out0.shape[1], x.device)
    lab = t if labels is None else torch.as_tensor(labels, device=x.device)
    order = rel.reshape(n, -1).argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(hw, device=x.device).expand(n, -1))
    rank = rank.view(n, 1, *x.shape[-2:])
    base = BASELINES[baseline](x)
    fractions = torch.linspace(0, 1, int(steps) + 1, dtype=torch.float64)
    counts = (fractions * hw).round().long().tolist()
    scores, probs, correct = [], [], []
    per_chunk = max(1, batch_size // n)
    for sl in chunked(len(counts), per_chunk):
        ks = torch.tensor(counts[sl], device=x.device).view(-1, 1, 1, 1, 1)
        chosen = rank.unsqueeze(0) < ks  # (S', N, 1, H, W): the top-k pixels
        if mode == "deletion":
            xs = torch.where(chosen, base.unsqueeze(0), x.unsqueeze(0))
        else:
            xs = torch.where(chosen, x.unsqueeze(0), base.unsqueeze(0))
        with torch.no_grad():
            out = model_output(model, xs.reshape(-1, *x.shape[1:])).view(ks.shape[0], n, -1)
        scores.append(out.gather(2, t.view(1, n, 1).expand(ks.shape[0], n, 1)).squeeze(2))
        p = torch.softmax(out, dim=2)
        probs.append(p.gather(2, t.view(1, n, 1).expand(ks.shape[0], n, 1)).squeeze(2))
        correct.append((out.argmax(2) == lab.view(1, n)).double())
    score, prob, acc = (torch.cat(v).double() for v in (scores, probs, correct))
    return {"fractions": fractions, "score": score, "probability": prob, "correct": acc,
            "auc_score": _auc(score, fractions.to(score.device)), "auc_probability": _auc(prob, fractions.to(score.device)),
            "auc_accuracy": _auc(acc, fractions.to(score.device))}


# -- FaithfulnessCorrelation (Bhatt et al. 2020) and IROF (Rieger & Hansen 2020), as in Quantus 0.6 ---------------------

def _fill(x: torch.Tensor, baseline) -> torch.Tensor:
    """The replacement value per image, (N, 1, 1, 1) (``fragile.metrics._perturb.fill_value``), checked first."""
    check_baseline(baseline)
    return fill_value(x, baseline)


def _scores_of(model, xs: torch.Tensor, t: torch.Tensor, output: str, batch_size: int) -> torch.Tensor:
    """Class scores (logit or softmax probability) of the target for a stack (S, N, C, H, W) -> (S, N)."""
    s, n = xs.shape[:2]
    flat = xs.reshape(-1, *xs.shape[2:])
    with torch.no_grad():
        out = torch.cat([model(flat[sl]) for sl in chunked(flat.shape[0], batch_size)])
    if output == "softmax":
        out = torch.softmax(out, dim=1)
    return out.view(s, n, -1).gather(2, t.view(1, n, 1).expand(s, n, 1)).squeeze(2).double()


def _pearson_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.pow(2).sum(1) * b.pow(2).sum(1)).sqrt()


def faithfulness_correlation(model, x: torch.Tensor, relevance: torch.Tensor, *, target=None, runs: int = 100,
                             subset_size: int = 224, baseline="black", output: str = "logit", seed: int = 0,
                             subsets: torch.Tensor | None = None, batch_size: int = 512) -> torch.Tensor:
    """FaithfulnessCorrelation (Bhatt et al. 2020, eq. 3): over ``runs`` random subsets S of ``subset_size``
    input features (of the C x H x W features), the Pearson correlation between sum_{i in S} a_i and
    f(x) - f(x with x_S replaced by the baseline), per image, (N,) float64. Higher = more faithful.

    ``relevance``: (N, C, H, W), or (N, 1, H, W) / (N, H, W) broadcast over the channels (as Quantus). ``output``:
    'logit' (Quantus' default) or 'softmax'. ``subsets``: (runs, N, subset_size) feature indices to use instead of
    the seeded draw (one uniform random subset per run and image). All runs x images are batched.
    Quantus 0.6's FaithfulnessCorrelation with the same subsets gives the same values (its default baseline
    'black' is the image minimum, as here)."""
    check_input(x)
    if output not in ("logit", "softmax"):
        raise FragileError(f"output must be 'logit' or 'softmax', got {output!r}")
    a = relevance if relevance.dim() == 4 else relevance.unsqueeze(1)
    a = torch.broadcast_to(a, x.shape).reshape(x.shape[0], -1).double()
    n, d = a.shape
    if subsets is None:
        if not 1 <= int(subset_size) <= d:
            raise FragileError(f"subset_size must be in 1..{d} (the number of features), got {subset_size}")
        gen = torch.Generator(device=x.device).manual_seed(int(seed))
        subsets = torch.rand((int(runs), n, d), generator=gen, device=x.device).argsort(2)[:, :, : int(subset_size)]
    subsets = torch.as_tensor(subsets, device=x.device).long()
    with torch.no_grad():
        out0 = model(x)
    t = out0.argmax(1) if target is None else check_target(target, n, out0.shape[1], x.device)
    y0 = _scores_of(model, x.unsqueeze(0), t, output, batch_size)[0]
    fill = _fill(x, baseline).reshape(n, 1)
    flat = x.reshape(n, -1)
    drops, sums = [], []
    per_chunk = max(1, batch_size // n)
    for sl in chunked(subsets.shape[0], per_chunk):
        idx = subsets[sl]
        mask = torch.zeros((idx.shape[0], n, d), dtype=torch.bool, device=x.device).scatter_(2, idx, True)
        xs = torch.where(mask, fill.unsqueeze(0).to(x.dtype), flat.unsqueeze(0)).view(idx.shape[0], *x.shape)
        drops.append(y0.unsqueeze(0) - _scores_of(model, xs, t, output, batch_size))
        sums.append(a.unsqueeze(0).expand(idx.shape[0], -1, -1).gather(2, idx).sum(2))
    return _pearson_rows(torch.cat(sums).T, torch.cat(drops).T)


def slic_segments(x: torch.Tensor, **slic_params) -> torch.Tensor:
    """SLIC superpixels (scikit-image; Quantus' IROF calls ``slic(image, start_label=0)`` with the defaults) of
    each image, (N, H, W) long, labels 0..L-1."""
    try:
        from skimage.segmentation import slic
    except ImportError:
        raise FragileError("superpixels need scikit-image: pip install scikit-image") from None
    params = {"start_label": 0, **slic_params}
    return torch.stack([torch.from_numpy(slic(img.permute(1, 2, 0).cpu().numpy().astype("double"), **params)).long()
                        for img in x]).to(x.device)


def irof(model, x: torch.Tensor, relevance: torch.Tensor, *, target=None, segments: torch.Tensor | None = None,
         baseline="mean", output: str = "softmax", batch_size: int = 512) -> dict[str, torch.Tensor]:
    """Iterative Removal Of Features (Rieger & Hansen 2020): the superpixels are removed (set to the baseline) in
    the order of their mean relevance, most relevant first; ``curve[j]`` = f(x with the top j + 1 segments
    removed) / f(x) for the target class (softmax probability by default, as Quantus), and ``aoc`` = the area
    over it, L - trapezoid(curve) with L the image's number of segments (Quantus' unnormalised IROF score;
    ``aoc / L`` is in [0, 1]). Higher = more faithful. ``segments``: (N, H, W) superpixel labels (default
    :func:`slic_segments`). Returns {"curve": (Lmax, N) (0 past an image's last segment), "aoc": (N,),
    "segments": (N,)}. Every removal step of every image is one batched forward pass.

    The baseline value is fixed per image (``mean``: the mean of the original image); Quantus' "mean" takes the
    mean of the batch as perturbed so far, so it depends on the batch and the step: give both a number (e.g.
    0.0) to compare them."""
    check_input(x)
    seg = slic_segments(x) if segments is None else torch.as_tensor(segments, device=x.device).long()
    n = x.shape[0]
    if seg.shape != (n, *x.shape[-2:]):
        raise FragileError(f"segments must be (N, H, W) = {(n, *x.shape[-2:])}, got {tuple(seg.shape)}")
    a = relevance if relevance.dim() == 4 else relevance.unsqueeze(1)
    a = torch.broadcast_to(a, x.shape).double().mean(1)  # (N, H, W): the channel mean, then the segment mean
    counts = torch.stack([torch.bincount(s.flatten(), minlength=int(seg.max()) + 1) for s in seg])
    sums = torch.stack([torch.bincount(s.flatten(), weights=v.flatten(), minlength=int(seg.max()) + 1)
                        for s, v in zip(seg, a)])
    present = counts > 0
    mean_rel = torch.where(present, sums / counts.clamp(min=1), torch.full_like(sums, -float("inf")))
    order = mean_rel.argsort(dim=1, descending=True, stable=True)   # absent labels last
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(order.shape[1], device=x.device).expand(n, -1))
    pixel_rank = rank.gather(1, seg.reshape(n, -1)).view(n, 1, *x.shape[-2:])
    n_seg = present.sum(1)
    steps = int(n_seg.max())
    with torch.no_grad():
        out0 = model(x)
    t = out0.argmax(1) if target is None else check_target(target, n, out0.shape[1], x.device)
    y0 = _scores_of(model, x.unsqueeze(0), t, output, batch_size)[0]
    fill = _fill(x, baseline).to(x.dtype)
    curve = []
    per_chunk = max(1, batch_size // n)
    for sl in chunked(steps, per_chunk):
        ks = torch.arange(sl.start + 1, sl.stop + 1, device=x.device).view(-1, 1, 1, 1, 1)
        xs = torch.where(pixel_rank.unsqueeze(0) < ks, fill.unsqueeze(0), x.unsqueeze(0))
        curve.append(_scores_of(model, xs, t, output, batch_size) / y0)
    curve = torch.cat(curve)
    valid = torch.arange(steps, device=x.device).view(-1, 1) < n_seg.view(1, -1)
    curve = torch.where(valid, curve, torch.zeros_like(curve))
    area = ((curve[1:] + curve[:-1]) / 2).sum(0) if steps > 1 else torch.zeros_like(y0)
    return {"curve": curve, "aoc": n_seg.double() - area, "segments": n_seg}
