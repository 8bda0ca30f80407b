"""Second-order geometry of explanations: Hessians, fragile directions, curvature, Lipschitz, SSR."""

from fragile.geometry.curvature import max_curvature
from fragile.geometry.directions import fragile_directions
from fragile.geometry.hessian import hvp, power_iteration, top_hessian_eigen
from fragile.geometry.lipschitz import lipschitz_adversarial, lipschitz_sampled
from fragile.geometry.ssr import ssr_hessian, ssr_top_eigenvalue

__all__ = ["fragile_directions", "hvp", "lipschitz_adversarial", "lipschitz_sampled", "max_curvature",
           "power_iteration", "ssr_hessian", "ssr_top_eigenvalue", "top_hessian_eigen"]
