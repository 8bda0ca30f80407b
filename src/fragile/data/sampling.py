"""Seeded, class-balanced samples whose every prefix is balanced (issue 19: a sweep's ``limit`` must not
attack only the first class).

The order is round-robin over the classes: round r takes the r-th image of every class that still has
one, the classes in a fresh seeded order each round. So the first ``k`` images hold ``floor(k / C)`` or
``ceil(k / C)`` of each of ``C`` classes (while every class has images left).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def balanced_sample(groups: Sequence[Sequence], n: int | None, seed: int = 0) -> list[tuple[int, object]]:
    """``n`` (or all) ``(group index, item)`` pairs: each group shuffled (seeded), then interleaved
    round-robin, the groups in a seeded random order in every round."""
    rng = np.random.default_rng(seed)
    shuffled = [[group[i] for i in rng.permutation(len(group))] for group in groups]
    total = sum(len(g) for g in shuffled)
    n = total if n is None else min(n, total)
    out: list[tuple[int, object]] = []
    for r in range(max((len(g) for g in shuffled), default=0)):
        for g in rng.permutation(len(shuffled)):
            if r < len(shuffled[g]):
                out.append((int(g), shuffled[g][r]))
                if len(out) == n:
                    return out
    return out


def interleave(labels: torch.Tensor) -> torch.Tensor:
    """The permutation that makes every prefix of ``labels: (N,)`` class-balanced while keeping the order
    within each class and, inside a round, the order of first appearance (stable; applied to a balanced
    order it is the identity, applied after dropping images it restores the balance)."""
    labels = labels.cpu().long()
    n = len(labels)
    by_class = torch.sort(labels, stable=True)
    sorted_labels = by_class.values
    new_class = torch.ones(n, dtype=torch.bool)
    new_class[1:] = sorted_labels[1:] != sorted_labels[:-1]
    starts = torch.cummax(torch.where(new_class, torch.arange(n), torch.zeros(n, dtype=torch.long)), 0).values
    rank = torch.empty(n, dtype=torch.long)
    rank[by_class.indices] = torch.arange(n) - starts  # position within the class
    key = rank * max(n, 1) + torch.arange(n)
    return torch.argsort(key)


def classes_covered(labels: torch.Tensor | None, class_names: Sequence[str] | None = None) -> str:
    """E.g. ``"10 classes, 3-4 images each"`` or ``"2 classes: cat 3, dog 2"`` (names when <= 5 classes)."""
    if labels is None:
        return "no labels"
    if len(labels) == 0:
        return "no images"
    values, counts = torch.unique(labels.cpu(), return_counts=True)
    lo, hi = int(counts.min()), int(counts.max())
    each = f"{lo} image{'s' if lo != 1 else ''} each" if lo == hi else f"{lo}-{hi} images each"
    text = f"{len(values)} class{'es' if len(values) != 1 else ''}, {each}"
    if len(values) <= 5:
        names = [class_names[v] if class_names is not None and v < len(class_names) else str(v)
                 for v in values.tolist()]
        text += ": " + ", ".join(f"{name} {int(c)}" for name, c in zip(names, counts))
    return text
