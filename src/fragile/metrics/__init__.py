"""Batched similarity metrics between maps and between images; one value per image."""

from fragile.metrics.curves import auc_log_eps
from fragile.metrics.localization import center_of_mass, center_shift
from fragile.metrics.similarity import cosine_distance, mse, pcc, spearman, ssim, topk_intersection

__all__ = ["auc_log_eps", "center_of_mass", "center_shift", "cosine_distance", "mse", "pcc", "spearman",
           "ssim", "topk_intersection"]
