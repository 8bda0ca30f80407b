"""Batched metrics: map and image similarity, localisation, curves over eps, faithfulness, robustness to random
perturbations (with their worst cases), sanity checks and statistics."""

from fragile.metrics.consistency import consistency
from fragile.metrics.continuity import continuity
from fragile.metrics.curves import auc_log_eps
from fragile.metrics.faithfulness import faithfulness_correlation, irof, perturbation_curve, random_relevance
from fragile.metrics.infidelity import infidelity
from fragile.metrics.localization import center_of_mass, center_shift
from fragile.metrics.monotonicity import monotonicity, monotonicity_correlation
from fragile.metrics.region import region_perturbation
from fragile.metrics.road import linear_imputation, road
from fragile.metrics.robustness import (
    avg_sensitivity, local_lipschitz_estimate, max_sensitivity, perturbation_scores, relative_input_stability,
    relative_output_stability, relative_representation_stability,
)
from fragile.metrics.sanity import data_randomisation, model_parameter_randomisation
from fragile.metrics.statistics import Interval, Verdict, bootstrap_ci, compare, paired_difference_ci
from fragile.metrics.similarity import (
    DegenerateMapWarning, cosine_distance, mse, pcc, spearman, ssim, topk_intersection, topk_name, topk_names,
)
from fragile.metrics.sufficiency import sufficiency

__all__ = [
    "DegenerateMapWarning", "auc_log_eps", "center_of_mass", "center_shift", "cosine_distance", "mse", "pcc",
    "perturbation_curve", "random_relevance", "spearman", "ssim", "topk_intersection", "topk_name", "topk_names",
]
__all__ += ["Interval", "Verdict", "bootstrap_ci", "compare", "paired_difference_ci"]
__all__ += ["faithfulness_correlation", "irof"]
__all__ += ["avg_sensitivity", "local_lipschitz_estimate", "max_sensitivity", "perturbation_scores",
            "relative_input_stability", "relative_output_stability"]
__all__ += ["infidelity", "linear_imputation", "monotonicity", "monotonicity_correlation", "region_perturbation", "road",
            "sufficiency"]
__all__ += ["consistency", "continuity", "data_randomisation", "model_parameter_randomisation",
            "relative_representation_stability"]
