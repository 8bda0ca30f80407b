"""The result of an attack on a batch: inputs, maps, per-image metrics, bookkeeping."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class AttackResult:
    """Per-image tensors (leading dimension N) plus settings.

    ``success[n]`` is True iff some iterate kept the label (and, for ``manipulate``, the output within
    tolerance); otherwise ``x_adv[n] == x[n]`` and the image must not be counted as attacked.
    ``maps``/``maps_adv`` are the processed saliency maps on the *original* model.
    """

    attack: str
    method: str
    eps: float
    norm: str
    x: torch.Tensor
    x_adv: torch.Tensor
    maps: torch.Tensor
    maps_adv: torch.Tensor
    success: torch.Tensor
    label: torch.Tensor
    label_adv: torch.Tensor
    best_iteration: torch.Tensor
    objective: torch.Tensor
    metrics: dict[str, torch.Tensor]
    seconds: float
    settings: dict = field(default_factory=dict)
    maps_surrogate_adv: torch.Tensor | None = None

    def summary(self) -> dict:
        """Means over successful images (and the success count), as plain floats."""
        ok = self.success
        out = {"attack": self.attack, "method": self.method, "eps": self.eps, "norm": self.norm,
               "images": int(ok.numel()), "successes": int(ok.sum()), "seconds": self.seconds}
        for name, values in self.metrics.items():
            out[name] = float(values[ok].double().mean()) if bool(ok.any()) else float("nan")
        return out

    def rows(self) -> list[dict]:
        """One plain dict per image (for stores and CSV)."""
        rows = []
        for n in range(self.x.shape[0]):
            row = {"image": n, "attack": self.attack, "method": self.method, "eps": self.eps, "norm": self.norm,
                   "success": bool(self.success[n]), "label": int(self.label[n]), "label_adv": int(self.label_adv[n]),
                   "best_iteration": int(self.best_iteration[n])}
            row.update({k: float(v[n]) for k, v in self.metrics.items()})
            rows.append(row)
        return rows
