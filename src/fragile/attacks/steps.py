"""Update rules of the attack loop, on the perturbation delta (minimising the objective).

- ``sign``:     delta <- delta - alpha * sign(g)                      (Ghorbani Alg. 1; PGD)
- ``gradient``: delta <- delta - lr * g
- ``adam``:     Adam (Kingma & Ba) on delta with learning rate lr       (Dombrowski et al.)
- ``random``:   delta <- eps * u, u uniform in {-1, +1}^d (no gradient; the random-sign baseline)
"""

from __future__ import annotations

import torch


class Sign:
    needs_grad = True

    def __init__(self, size: float, **_):
        self.size = size

    def init(self, delta):
        return None

    def update(self, delta, grad, state, t, eps, gen):
        return delta - self.size * grad.sign(), state


class Gradient(Sign):
    def update(self, delta, grad, state, t, eps, gen):
        return delta - self.size * grad, state


class Adam(Sign):
    def __init__(self, size: float, betas=(0.9, 0.999), eps: float = 1e-8, **_):
        super().__init__(size)
        self.b1, self.b2, self.eps = betas[0], betas[1], eps

    def init(self, delta):
        return torch.zeros_like(delta), torch.zeros_like(delta)

    def update(self, delta, grad, state, t, eps, gen):
        m, v = state
        m = self.b1 * m + (1 - self.b1) * grad
        v = self.b2 * v + (1 - self.b2) * grad * grad
        m_hat, v_hat = m / (1 - self.b1 ** (t + 1)), v / (1 - self.b2 ** (t + 1))
        return delta - self.size * m_hat / (v_hat.sqrt() + self.eps), (m, v)


class Random(Sign):
    needs_grad = False

    def update(self, delta, grad, state, t, eps, gen):
        signs = torch.randint(0, 2, delta.shape, generator=gen, device=delta.device).to(delta.dtype) * 2 - 1
        return eps * signs, state


STEPS = {"sign": Sign, "gradient": Gradient, "adam": Adam, "random": Random}
