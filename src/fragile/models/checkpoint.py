"""One checkpoint format: architecture name, weights, preprocessing, class names, training config and
metrics, loaded with ``torch.load(weights_only=True)`` (no pickled code)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from fragile.errors import FragileError

FORMAT = "fragile-checkpoint-v1"


def save_checkpoint(model: nn.Module, path: str | Path, *, arch: str, training: dict | None = None,
                    metrics: dict | None = None) -> Path:
    """Save a registry model (its ``Preprocessed`` wrapper included) with its metadata."""
    path = Path(path)
    torch.save({"format": FORMAT, "arch": arch, "state_dict": model.state_dict(),
                "class_names": list(getattr(model, "class_names", []) or []),
                "training": training or {}, "metrics": metrics or {}}, path)
    return path


def load_checkpoint(path: str | Path) -> nn.Module:
    """The model saved by :func:`save_checkpoint` at ``path``, in eval mode, on the CPU.

    The architecture ``arch`` is rebuilt from the registry (turned into its softplus version first when the training
    config has ``softplus_beta``: a softplus-retrained network, Ghorbani App. A), the weights are loaded strictly,
    and ``class_names`` and ``checkpoint_info`` (the saved ``training`` and ``metrics`` dicts) are set on it.
    Raises :class:`FragileError` for an unreadable file, another format, or weights that do not fit ``arch``.
    """
    from fragile.models.registry import create

    path = Path(path)
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 -- any unreadable file is reported the same way
        raise FragileError(f"{path} is not a loadable checkpoint: {err}") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise FragileError(f"{path} is not a fragile checkpoint (expected format {FORMAT!r})")
    model = create(blob["arch"])
    beta = (blob.get("training") or {}).get("softplus_beta")
    if beta is not None:  # a softplus-retrained network (Ghorbani App. A)
        from fragile.defenses.training import to_softplus

        to_softplus(model, beta)
    try:
        missing, unexpected = model.load_state_dict(blob["state_dict"], strict=False)
    except RuntimeError as err:  # shape mismatches
        raise FragileError(f"{path} does not match architecture {blob['arch']!r}: {str(err)[:300]}") from None
    if missing or unexpected:
        raise FragileError(f"{path} does not match architecture {blob['arch']!r}: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
    if blob.get("class_names"):
        model.class_names = tuple(blob["class_names"])
    model.checkpoint_info = {"training": blob.get("training", {}), "metrics": blob.get("metrics", {})}
    return model.eval()


def load_model(spec: str, **options) -> nn.Module:
    """A registry name, checkpoint file or any other spec of :func:`fragile.models.load`."""
    from fragile.models.loading import load

    return load(spec, **options)
