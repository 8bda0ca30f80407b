"""Batched metrics: map and image similarity, localisation, curves over eps, faithfulness."""

from fragile.metrics.curves import auc_log_eps
from fragile.metrics.faithfulness import faithfulness_correlation, irof, perturbation_curve, random_relevance
from fragile.metrics.localization import center_of_mass, center_shift
from fragile.metrics.robustness import (
    avg_sensitivity, local_lipschitz_estimate, max_sensitivity, perturbation_scores, relative_input_stability,
    relative_output_stability,
)
from fragile.metrics.statistics import Interval, Verdict, bootstrap_ci, compare, paired_difference_ci
from fragile.metrics.similarity import (
    DegenerateMapWarning, cosine_distance, mse, pcc, spearman, ssim, topk_intersection, topk_name, topk_names,
)

__all__ = [
    "DegenerateMapWarning", "auc_log_eps", "center_of_mass", "center_shift", "cosine_distance", "mse", "pcc",
    "perturbation_curve", "random_relevance", "spearman", "ssim", "topk_intersection", "topk_name", "topk_names",
]
__all__ += ["Interval", "Verdict", "bootstrap_ci", "compare", "paired_difference_ci"]
__all__ += ["faithfulness_correlation", "irof"]
__all__ += ["avg_sensitivity", "local_lipschitz_estimate", "max_sensitivity", "perturbation_scores",
            "relative_input_stability", "relative_output_stability"]
