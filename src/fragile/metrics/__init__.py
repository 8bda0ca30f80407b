"""Batched similarity metrics between explanation maps."""

from fragile.metrics.similarity import spearman, topk_intersection

__all__ = ["spearman", "topk_intersection"]
