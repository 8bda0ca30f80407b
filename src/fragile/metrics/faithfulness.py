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
