"""The result of an attack on a batch: inputs, maps, per-image metrics, bookkeeping."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class AttackResult:
    """Per-image tensors (leading dimension N) plus settings.

    ``success[n]`` is True iff some iterate kept the label (and, for ``manipulate``, the output within
    tolerance) and the objective's gradient was not zero throughout; otherwise ``x_adv[n] == x[n]``, every
    metric of image n is NaN and ``reasons[n]`` says why (a failure is a missing value, never a perfect
    score). ``maps``/``maps_adv`` are the processed saliency maps on the *original* model.
    ``trajectory: (P, N)`` the best qualifying objective at iterations ``trajectory_iterations`` (0: the
    clean image, i: after iteration i; inf before the first qualifying iterate); ``converged: (N,)`` bool,
    whether it had stopped improving in the last 10% of the iterations (None for random attacks).
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
    converged: torch.Tensor | None = None
    reasons: list[str | None] = field(default_factory=list)
    trajectory: torch.Tensor | None = None
    trajectory_iterations: list[int] = field(default_factory=list)

    @property
    def not_converged(self) -> int:
        """Number of successful images whose objective was still improving at the end."""
        return 0 if self.converged is None else int((self.success & ~self.converged).sum())

    def summary(self) -> dict:
        """Means over successful images with 95% bootstrap intervals (``<metric>_ci``), the success
        count, the iterations run and how many images had not converged, as plain Python values."""
        from fragile.metrics.statistics import bootstrap_ci

        ok = self.success
        out = {"attack": self.attack, "method": self.method, "eps": self.eps, "norm": self.norm,
               "images": int(ok.numel()), "successes": int(ok.sum()), "iterations": self.settings.get("iterations"),
               "beta": self.settings.get("beta"), "not_converged": self.not_converged, "seconds": self.seconds}
        for name, values in self.metrics.items():
            ci = bootstrap_ci(values[ok].double().cpu().numpy())
            out[name] = float(ci.mean)
            out[f"{name}_ci"] = [float(ci.low), float(ci.high)]
        return out

    def rows(self) -> list[dict]:
        """One plain dict per image (for stores and CSV); failed images have NaN metrics and a reason."""
        rows = []
        for n in range(self.x.shape[0]):
            row = {"image": n, "attack": self.attack, "method": self.method, "eps": self.eps, "norm": self.norm,
                   "success": bool(self.success[n]), "reason": self.reasons[n] if self.reasons else None,
                   "label": int(self.label[n]), "label_adv": int(self.label_adv[n]),
                   "best_iteration": int(self.best_iteration[n]), "iterations": self.settings.get("iterations"),
                   "converged": None if self.converged is None or not bool(self.success[n]) else bool(self.converged[n]),
                   "beta": self.settings.get("beta")}
            row.update({k: float(v[n]) for k, v in self.metrics.items()})
            rows.append(row)
        return rows
