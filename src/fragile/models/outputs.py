"""What a model returns and what it takes, checked at the public boundary.

``model_output(model, x, key)`` is the one place a model is called for its class scores: it accepts

- an ``(N, K)`` tensor of class scores (logits);
- a tuple or list: its first element (e.g. ``(logits, features)``);
- a mapping (a dict, a Hugging Face ``ModelOutput``): the entry ``key`` (default ``"logits"``);
- any other object with a tensor attribute ``key`` (``out.logits``);
- a single-logit binary classifier, an ``(N,)`` logit z: the two-class scores ``(-z/2, z/2)`` (the centred
  logits whose softmax is ``(1 - sigmoid(z), sigmoid(z))``); class 1 is the positive class, the predicted
  class is ``z > 0``, and the maps of class 1 are those of z / 2 (half of d z / dx for the gradient), of
  class 0 their negatives. An ``(N, 1)`` output stays one score (target 0); attacks refuse it, since the
  label of a single score never changes.

anything else is refused with one sentence saying what came back. ``match_input(model, x)`` casts ``x`` to
the model's floating-point dtype (float32 input on a float64 model; float64 input on a float32 model, which
computes in float32 anyway) and refuses a model on another device than ``x`` (naming both) and float16 /
bfloat16 models (the second derivatives an attack takes underflow there: call ``model.float()``).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import torch
from torch import nn

from fragile.errors import FragileError

#: The entry of a mapping output (or attribute of an output object) holding the class scores.
OUTPUT_KEY = "logits"
#: Parameter dtypes explanations and attacks compute in.
DTYPES = (torch.float32, torch.float64)


def check_output_key(key) -> str:
    """``key`` if it is a non-empty string (the mapping key or attribute holding the class scores, see the
    module docstring); :class:`FragileError` otherwise.
    """
    if not isinstance(key, str) or not key:
        raise FragileError(f"output_key must be a non-empty string (the dict key of the class scores), got {key!r}")
    return key


def class_scores(out, n: int | None = None, key: str = OUTPUT_KEY) -> torch.Tensor:
    """The ``(N, K)`` class scores in a model's output ``out`` (see the module docstring); ``n``: the batch."""
    got = type(out).__name__
    if isinstance(out, (tuple, list)):
        if not out:
            raise FragileError(f"the model returned an empty {got}; it must return class scores (N, classes)")
        out = out[0]
        got = f"a {got} whose first element is {type(out).__name__}"
    elif isinstance(out, Mapping):
        if key not in out:
            raise FragileError(f"the model returned a mapping without the key {key!r} (keys: "
                               f"{', '.join(map(repr, list(out)[:10]))}); pass output_key= naming its class scores")
        out = out[key]
        got = f"a mapping whose {key!r} is {type(out).__name__}"
    elif not isinstance(out, torch.Tensor) and isinstance(getattr(out, key, None), torch.Tensor):
        out = getattr(out, key)
    if not isinstance(out, torch.Tensor):
        raise FragileError(f"the model returned {got}, not a tensor of class scores (N, classes); return logits, "
                           f"a tuple/list with them first, or a dict / object with output_key ({key!r})")
    if not out.is_floating_point():
        raise FragileError(f"the model returned a {out.dtype} tensor; class scores must be floating point")
    if out.dim() == 1:  # one logit z per image: binary
        z = out.reshape(-1, 1)
        out = torch.cat([-z / 2, z / 2], dim=1)
    if out.dim() != 2:
        raise FragileError(f"model output must be (N, classes), got shape {tuple(out.shape)}")
    if n is not None and out.shape[0] != n:
        raise FragileError(f"the model returned {out.shape[0]} rows of class scores for a batch of {n} images")
    bad = ~torch.isfinite(out.detach()).all(1)
    if bool(bad.any()):
        raise FragileError(f"the model returned NaN or inf class scores for {int(bad.sum())} of {out.shape[0]} images "
                           "(overflow on these inputs, or NaN weights)")
    return out


def run_model(model: nn.Module, x: torch.Tensor):
    """``model(x)``; an error inside the model (``x`` of a size or channel count it cannot take, ...) becomes one
    FragileError naming the shape of ``x`` (the original error chained for debugging)."""
    try:
        return model(x)
    except FragileError:
        raise
    except (RuntimeError, ValueError, TypeError, IndexError) as err:
        lines = str(err).strip().splitlines()
        raise FragileError(f"the model failed on x of shape {tuple(x.shape)} ({type(err).__name__}: "
                           f"{(lines[0] if lines else '')[:300]}); is x the size and channel count it takes?") from err


def model_output(model: nn.Module, x: torch.Tensor, key: str = OUTPUT_KEY) -> torch.Tensor:
    """``model(x)`` as ``(N, K)`` class scores, ``x`` matched to the model first (see the module docstring)."""
    return class_scores(run_model(model, match_input(model, x)), x.shape[0], key)


def model_dtype(model: nn.Module) -> torch.dtype | None:
    """The dtype of the model's first floating-point parameter (else buffer); None if it has neither."""
    for t in itertools.chain(model.parameters(), model.buffers()):
        if t.is_floating_point():
            return t.dtype
    return None


def _first_device(model: nn.Module) -> torch.device | None:
    for t in itertools.chain(model.parameters(), model.buffers()):
        return t.device
    return None


def match_input(model: nn.Module, x: torch.Tensor, name: str = "x") -> torch.Tensor:
    """``x`` in the model's dtype (differentiably), after refusing another device or a half-precision model."""
    device = _first_device(model)
    if device is not None and device != x.device:
        raise FragileError(f"the model is on {device} but {name} is on {x.device}; move them to one device "
                           f"(e.g. {name}.to('{device}') or model.to('{x.device}'))")
    dtype = model_dtype(model)
    if dtype is None:
        return x
    if dtype not in DTYPES:
        raise FragileError(f"the model computes in {dtype}; explanations and attacks need float32 or float64 "
                           "(their second derivatives underflow in half precision): call model.float()")
    return x if x.dtype == dtype else x.to(dtype)


def check_finite_weights(model: nn.Module, what: str = "the model") -> None:
    """Refuse a model with NaN or inf in a floating-point parameter or buffer (every map would be NaN),
    naming the first such tensor and how many hold them."""
    bad = [name for name, t in itertools.chain(model.named_parameters(), model.named_buffers())
           if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all())]
    if bad:
        raise FragileError(f"{what} has NaN or inf weights in {len(bad)} tensor(s), first {bad[0]!r}; its outputs and "
                           "maps would be NaN (a diverged training run or a damaged file?)")
