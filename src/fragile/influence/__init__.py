"""Influence functions of a logistic-regression head on frozen features, and their attack."""

from fragile.influence.attack import InfluenceModel, compare, influence_attack
from fragile.influence.logistic import fit_logistic, influence_vectors, per_sample_grads

__all__ = ["InfluenceModel", "compare", "fit_logistic", "influence_attack", "influence_vectors", "per_sample_grads"]
