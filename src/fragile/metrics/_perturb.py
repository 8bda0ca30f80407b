"""Shared pieces of the perturbation metrics (infidelity, ROAD, region perturbation, monotonicity, sufficiency):
the checks at their public boundary, the per-image replacement value and the batched class scores of a stack of
perturbed batches."""

from __future__ import annotations

import numbers

import torch

from fragile.errors import FragileError
from fragile.explanations.base import check_input, check_target
from fragile.explanations.gradient import chunked
from fragile.models.outputs import model_output

OUTPUTS = ("logit", "softmax")
BASELINES = ("black", "white", "mean", "zero")


def check_relevance(relevance, x: torch.Tensor, name: str = "relevance") -> torch.Tensor:
    """``relevance``: (N, C, H, W), (N, 1, H, W) or (N, H, W) finite map of ``x: (N, C, H, W)`` -> (N, C, H, W)
    float64, broadcast over the channels (as Quantus)."""
    if not isinstance(relevance, torch.Tensor):
        raise FragileError(f"{name} must be a tensor (N, C, H, W), (N, 1, H, W) or (N, H, W), got {type(relevance).__name__}")
    if relevance.is_complex() or relevance.dtype == torch.bool:
        raise FragileError(f"{name} must be a real-valued tensor, got dtype {relevance.dtype}")
    a = relevance.unsqueeze(1) if relevance.dim() == 3 else relevance
    n, c, h, w = x.shape
    if a.dim() != 4 or a.shape[0] != n or a.shape[1] not in (1, c) or tuple(a.shape[2:]) != (h, w):
        raise FragileError(f"{name} must be (N, C, H, W) = {(n, c, h, w)}, (N, 1, H, W) or (N, H, W), "
                           f"got {tuple(relevance.shape)}")
    if a.device != x.device:
        raise FragileError(f"{name} is on {a.device} but x on {x.device}")
    bad = ~torch.isfinite(a.reshape(n, -1)).all(1)
    if bool(bad.any()):
        raise FragileError(f"{name} must be finite: NaN or inf in {int(bad.sum())} of {n} maps")
    return torch.broadcast_to(a.detach().double(), (n, c, h, w))


def check_x(x) -> torch.Tensor:
    """The image batch ``x: (N, C, H, W)`` of finite floats."""
    return check_input(x)


def check_output(output: str) -> str:
    """'logit' (the raw class score) or 'softmax' (its probability)."""
    if output not in OUTPUTS:
        raise FragileError(f"output must be 'logit' or 'softmax', got {output!r}")
    return output


def int_at_least(value, name: str, minimum: int = 1) -> int:
    """An integer parameter >= ``minimum`` (not a bool, float or string)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise FragileError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def float_param(value, name: str, minimum: float = 0.0) -> float:
    """A finite real parameter >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not float(value) >= minimum \
            or float(value) == float("inf"):
        raise FragileError(f"{name} must be a finite number >= {minimum}, got {value!r}")
    return float(value)


def check_baseline(baseline, extra: tuple[str, ...] = ()) -> None:
    """``baseline``: one of BASELINES (+ ``extra``) or a finite number."""
    if isinstance(baseline, str) and baseline in BASELINES + extra:
        return
    if isinstance(baseline, numbers.Real) and not isinstance(baseline, bool) and abs(float(baseline)) < float("inf"):
        return
    raise FragileError(f"baseline must be one of {list(BASELINES + extra)} or a finite number, got {baseline!r}")


def fill_value(x: torch.Tensor, baseline) -> torch.Tensor:
    """The replacement value per image, (N, 1, 1, 1) in x's dtype: ``black`` / ``white`` the image minimum /
    maximum over C x H x W (Quantus' "black" / "white"), ``mean`` the image mean, ``zero`` or a number."""
    flat = x.reshape(x.shape[0], -1)
    if baseline == "black":
        v = flat.amin(1)
    elif baseline == "white":
        v = flat.amax(1)
    elif baseline == "mean":
        v = flat.mean(1)
    elif baseline == "zero":
        v = torch.zeros_like(flat[:, 0])
    else:
        v = torch.full_like(flat[:, 0], float(baseline))
    return v.view(-1, 1, 1, 1)


def predict(model, x: torch.Tensor, target=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Class scores on ``x`` (N, K) and the target (N,) (default: the predicted class)."""
    with torch.no_grad():
        out = model_output(model, x)
    t = out.argmax(1) if target is None else check_target(target, x.shape[0], out.shape[1], x.device)
    return out, t


def stack_outputs(model, xs: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Class scores of a stack of batches, (S, N, C, H, W) -> (S, N, K), in chunks of ``batch_size`` images."""
    s, n = xs.shape[:2]
    flat = xs.reshape(-1, *xs.shape[2:])
    with torch.no_grad():
        out = torch.cat([model_output(model, flat[sl]) for sl in chunked(flat.shape[0], batch_size)])
    return out.view(s, n, -1)


def stack_scores(model, xs: torch.Tensor, t: torch.Tensor, output: str, batch_size: int) -> torch.Tensor:
    """The target's logit or softmax probability for a stack (S, N, C, H, W) -> (S, N) float64."""
    out = stack_outputs(model, xs, batch_size).double()
    if output == "softmax":
        out = torch.softmax(out, dim=2)
    s, n = out.shape[:2]
    return out.gather(2, t.view(1, n, 1).expand(s, n, 1)).squeeze(2)


def steps_per_chunk(n: int, batch_size: int) -> int:
    """How many perturbed copies of a batch of ``n`` images fit in one forward pass of ``batch_size``."""
    return max(1, int(batch_size) // n)
