"""Influence functions (Koh & Liang 2017; Ghorbani et al. 2019 sec. 3) for a logistic-regression head
on frozen features phi (appended with a constant 1 for the bias), theta in R^(d+1):

    L(z) = log(1 + exp(-s z)) with s = 2y - 1, z = theta^T phi;   grad_theta L = (sigma(z) - y) phi
    H = (1/n) sum_i sigma_i (1 - sigma_i) phi_i phi_i^T + damping * I
    I(z_i, z_t) = - grad L(z_t)^T H^-1 grad L(z_i)      (effect of up-weighting z_i on the test loss)

``helpfulness = -I``: the training points whose up-weighting most lowers the test loss come first
(Ghorbani's "most influential"). H^-1 g is a linear solve (exact), conjugate gradients, or LiSSA, all on
Hessian-vector products; all are batched over test points.
"""

from __future__ import annotations

import torch

from fragile.errors import FragileError


def with_bias(phi: torch.Tensor) -> torch.Tensor:
    """The features with a constant 1 appended (the bias coordinate), ``(n, d) -> (n, d+1)``."""
    return torch.cat([phi, torch.ones_like(phi[:, :1])], dim=1)


def fit_logistic(phi: torch.Tensor, y: torch.Tensor, damping: float = 1e-3, iters: int = 50) -> torch.Tensor:
    """theta minimising mean log-loss + damping/2 ||theta||^2, by Newton's method (float64)."""
    a = with_bias(phi.double())
    yy = y.double()
    theta = torch.zeros(a.shape[1], dtype=torch.float64, device=phi.device)
    for _ in range(iters):
        p = torch.sigmoid(a @ theta)
        grad = a.T @ (p - yy) / len(a) + damping * theta
        hess = hessian(phi, theta, damping)
        step = torch.linalg.solve(hess, grad)
        theta = theta - step
        if float(step.norm()) < 1e-12:
            break
    return theta


def per_sample_grads(phi: torch.Tensor, y: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """grad_theta L(z_i) for every sample, (n, d+1); differentiable in phi."""
    a = with_bias(phi.to(theta.dtype))
    return (torch.sigmoid(a @ theta) - y.to(theta.dtype)).unsqueeze(1) * a


def hessian(phi: torch.Tensor, theta: torch.Tensor, damping: float) -> torch.Tensor:
    """The damped Hessian of the mean log-loss in theta, ``(d+1, d+1)`` (formed; small heads only)."""
    a = with_bias(phi.to(theta.dtype))
    p = torch.sigmoid(a @ theta)
    return (a * (p * (1 - p)).unsqueeze(1)).T @ a / len(a) + damping * torch.eye(a.shape[1], dtype=theta.dtype,
                                                                                 device=theta.device)


def hvp(phi: torch.Tensor, theta: torch.Tensor, damping: float, v: torch.Tensor) -> torch.Tensor:
    """H v for v of shape (d+1,) or (k, d+1), without forming H."""
    a = with_bias(phi.to(theta.dtype))
    p = torch.sigmoid(a @ theta)
    w = (p * (1 - p)).unsqueeze(1)
    vt = v.T if v.dim() == 2 else v.unsqueeze(1)
    out = a.T @ (w * (a @ vt)) / len(a) + damping * vt
    return out.T if v.dim() == 2 else out.squeeze(1)


def solve_exact(phi, theta, damping, g):
    """H^-1 g for each row of ``g: (k, d+1)`` by a dense solve."""
    return torch.linalg.solve(hessian(phi, theta, damping), g.T).T


def solve_cg(phi, theta, damping, g, iters: int = 200, tol: float = 1e-10):
    """Conjugate gradients on H x = g (rows of g solved together)."""
    x = torch.zeros_like(g)
    r = g - hvp(phi, theta, damping, x)
    p = r.clone()
    rs = (r * r).sum(1, keepdim=True)
    for _ in range(iters):
        hp = hvp(phi, theta, damping, p)
        alpha = rs / (p * hp).sum(1, keepdim=True).clamp(min=1e-300)
        x = x + alpha * p
        r = r - alpha * hp
        new = (r * r).sum(1, keepdim=True)
        if float(new.max().sqrt()) < tol:
            break
        p = r + new / rs * p
        rs = new
    return x


def solve_lissa(phi, theta, damping, g, iters: int = 5000, scale: float | None = None):
    """LiSSA (Agarwal et al.): x_{j+1} = g + (I - H / scale) x_j, x = x_J / scale (full-batch here).
    ``scale`` must exceed the largest eigenvalue of H (default: 1.1 x a power-iteration estimate)."""
    if scale is None:
        v = torch.ones_like(theta)
        for _ in range(50):
            v = hvp(phi, theta, damping, v)
            v = v / v.norm()
        scale = 1.1 * float(v @ hvp(phi, theta, damping, v))
    x = g.clone()
    for _ in range(iters):
        x = g + x - hvp(phi, theta, damping, x) / scale
    return x / scale


SOLVERS = {"exact": solve_exact, "cg": solve_cg, "lissa": solve_lissa}


def influence_vectors(phi_train, y_train, theta, phi_test, y_test, damping: float = 1e-3,
                      solver: str = "exact") -> torch.Tensor:
    """Helpfulness -I(z_i, z_t) for every test point t and training point i, (T, n)."""
    if solver not in SOLVERS:
        raise FragileError(f"unknown solver {solver!r}; choose one of {sorted(SOLVERS)}")
    g_test = per_sample_grads(phi_test, y_test, theta)
    h_inv_g = SOLVERS[solver](phi_train.to(theta.dtype), theta, damping, g_test)
    return h_inv_g @ per_sample_grads(phi_train, y_train, theta).T
