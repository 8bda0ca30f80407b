"""The closed-form input Hessian of the cross-entropy used by Smooth Surface Regularization
(Singla et al. 2019; Wang et al. 2020 sec. 4, SSR).

For logits z(x) with input Jacobian J = dz/dx (C x d) and p = softmax(z),

    H = d^2 CE / dx^2 = J^T (diag(p) - p p^T) J + sum_c (p_c - y_c) d^2 z_c / dx^2 .

For ReLU networks the second term vanishes (piecewise linear logits), so H = J^T A J with
A = diag(p) - p p^T exactly; SSR uses it for any network. Its top eigenvalue needs only a C x C matrix:
A = B B^T with B = diag(sqrt p) (I - sqrt p sqrt p^T), so J^T A J and B^T (J J^T) B share their
non-zero eigenvalues. Differentiable (``create_graph``) for use as a training regulariser.
"""

from __future__ import annotations

import torch
from torch import nn

from fragile.explanations.base import check_input
from fragile.models.outputs import model_output


def logit_jacobian(model: nn.Module, x: torch.Tensor, create_graph: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(J: (N, C, d) input Jacobian of the logits by C backward passes, logits (N, C))."""
    xg = x if x.requires_grad else x.detach().requires_grad_(True)
    z = model_output(model, xg)
    rows = []
    for c in range(z.shape[1]):
        (g,) = torch.autograd.grad(z[:, c].sum(), xg, retain_graph=True, create_graph=create_graph)
        rows.append(g.flatten(1))
    return torch.stack(rows, dim=1), z


def _softmax_cov_factor(p: torch.Tensor) -> torch.Tensor:
    """B (N, C, C) with B B^T = diag(p) - p p^T."""
    q = p.clamp(min=0).sqrt()
    eye = torch.eye(p.shape[1], dtype=p.dtype, device=p.device)
    return torch.diag_embed(q) @ (eye - q.unsqueeze(2) * q.unsqueeze(1))


def ssr_hessian(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Dense J^T (diag p - p p^T) J, (N, d, d); for small inputs and tests."""
    check_input(x)
    jac, z = logit_jacobian(model, x)
    p = torch.softmax(z.detach(), dim=1)
    a = torch.diag_embed(p) - p.unsqueeze(2) * p.unsqueeze(1)
    return jac.transpose(1, 2) @ a @ jac


def ssr_top_eigenvalue(model: nn.Module, x: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
    """Largest eigenvalue of J^T (diag p - p p^T) J per image, (N,), via a C x C eigenproblem."""
    check_input(x)
    jac, z = logit_jacobian(model, x, create_graph=create_graph)
    b = _softmax_cov_factor(torch.softmax(z, dim=1))
    m = b.transpose(1, 2) @ (jac @ jac.transpose(1, 2)) @ b
    return torch.linalg.eigvalsh(0.5 * (m + m.transpose(1, 2)))[:, -1]
