"""Update rules of the attack loop, on the perturbation delta (minimising the objective).

Every rule is invariant to a positive per-image rescaling of the gradient, so an objective reaches the
optimiser at a usable scale whatever the image size, the map normalisation or the model's input range
(a manipulate loss on sum-normalised 224x224 maps has gradients of ~1e-14 per pixel):

- ``sign``:          delta <- delta - alpha * sign(g)                       (Ghorbani Alg. 1; PGD)
- ``gradient``:      delta <- delta - lr * g / rms(g)          (rms over the image's coordinates)
- ``adam``:          Adam (Kingma & Ba) whose eps is relative: m^ / (sqrt(v^) + eps * rms(sqrt(v^)))
- ``adam_absolute``: Adam exactly as ``torch.optim.Adam`` (absolute eps 1e-8), the Dombrowski reference
                     code; only scale-free when the loss carries the paper's prefactors (1e11 / 1e6)
- ``apgd``:          sign steps with momentum and a step size that starts at 2 eps and halves (restarting from
                     the best iterate) when the objective stops improving (Croce & Hein 2020, APGD): no step
                     size to tune, and the paper's quality in far fewer iterations (``benchmarks/schedules.py``)
- ``random``:        one draw delta = eps * u, u uniform in {-1, +1}^d (Ghorbani's random-sign baseline)
- ``random_search``: a new draw every iteration; the loop keeps the best by the objective

``size`` (alpha or lr) arrives in raw data units: the loop converts from pixel units of 255.
"""

from __future__ import annotations


import torch


def _per_image_rms(t: torch.Tensor) -> torch.Tensor:
    """sqrt(mean(t^2)) over all but the first dimension, shaped to broadcast against t."""
    return t.flatten(1).pow(2).mean(1).sqrt().view(-1, *[1] * (t.dim() - 1))


class Sign:
    """The sign step of Ghorbani Alg. 1 (and PGD): delta <- delta - size * sign(g).

    ``size``: alpha in raw data units (the loop converts from pixel units of 255). Subclasses override
    ``init`` (the optimiser state) and ``update``; ``needs_grad`` says whether the loop must compute the
    objective's gradient, ``max_steps`` caps the iterations that make sense.
    """

    needs_grad = True
    #: the most iterations this rule makes sense for (None: any)
    max_steps: int | None = None

    def __init__(self, size: float, **_):
        self.size = size

    def init(self, delta):
        """The optimiser state for a new perturbation ``delta: (N, C, H, W)`` (None: stateless)."""
        return None

    def update(self, delta, grad, state, t, eps, gen):
        """One step: ``(new delta, new state)`` from the current ``delta``, the objective's gradient ``grad``
        (same shape), the state, the iteration ``t`` (0-based), the budget ``eps`` and a random generator.
        """
        return delta - self.size * grad.sign(), state

    def observe(self, delta, state, *, loss, best_delta, best_loss, t, iterations):
        """After the loop evaluated the iterate ``delta`` of iteration ``t``: ``(delta to continue from, state)``.

        ``loss``: (N,) the objective at the iterate on the original model (+inf where the label changed),
        ``best_delta`` / ``best_loss``: the best label-keeping iterate so far. Rules with a schedule that reacts
        to progress (``apgd``) change their state or restart here; the others continue unchanged.
        """
        return delta, state


class Gradient(Sign):
    """delta <- delta - size * g / rms(g), with the rms per image (a scale-free gradient step)."""

    def update(self, delta, grad, state, t, eps, gen):
        """One normalised gradient step (an image with a zero gradient stays where it is)."""
        rms = _per_image_rms(grad)
        return delta - self.size * grad / torch.where(rms > 0, rms, torch.ones_like(rms)), state


class Adam(Sign):
    """Adam with ``eps`` relative to the per-image rms of sqrt(v^) (scale-free), or absolute."""

    relative = True

    def __init__(self, size: float, betas=(0.9, 0.999), eps: float = 1e-8, **_):
        super().__init__(size)
        self.b1, self.b2, self.eps = betas[0], betas[1], eps

    def init(self, delta):
        """Zero first and second moments, each shaped like ``delta``."""
        return torch.zeros_like(delta), torch.zeros_like(delta)

    def update(self, delta, grad, state, t, eps, gen):
        """One bias-corrected Adam step (Kingma & Ba, Alg. 1) with the relative or absolute eps."""
        m, v = state
        m = self.b1 * m + (1 - self.b1) * grad
        v = self.b2 * v + (1 - self.b2) * grad * grad
        m_hat, v_hat = m / (1 - self.b1 ** (t + 1)), v / (1 - self.b2 ** (t + 1))
        root = v_hat.sqrt()
        if self.relative:
            floor = self.eps * _per_image_rms(root) + torch.finfo(root.dtype).tiny
        else:
            floor = self.eps
        return delta - self.size * m_hat / (root + floor), (m, v)


class AdamAbsolute(Adam):
    """Adam exactly as ``torch.optim.Adam`` (absolute eps 1e-8), as the Dombrowski et al. reference code."""

    relative = False


class APGD(Sign):
    """APGD's schedule for sign steps (Croce & Hein 2020, Alg. 1, for L-inf): with step size eta (per image,
    starting at 2 eps) and momentum alpha = 0.75,

        z       = delta_k - eta * sign(g_k)
        delta_k+1 = delta_k + alpha (z - delta_k) + (1 - alpha) (delta_k - delta_k-1)      (z at k = 0)

    projected onto the threat model by the loop. At the checkpoints w_j = p_j * iterations, p_0 = 0,
    p_1 = 0.22, p_j+1 = p_j + max(p_j - p_j-1 - 0.03, 0.06) (in whole iterations), eta halves for the images whose objective
    improved in fewer than rho = 75% of the iterations since the last checkpoint, or whose eta and best
    objective are both unchanged since then; those images restart from their best iterate. ``size`` (the
    step size of ``sign``) is not used: eta is set by eps. Deviation from APGD: z is not projected before the
    momentum combination (the loop projects the result).
    """

    alpha, rho = 0.75, 0.75

    @staticmethod
    def checkpoints(iterations: int) -> set[int]:
        """Iterations (1-based counts) after which the step size may halve: the first after 22% of the
        budget, then intervals shrinking by 3% of it down to 6% (in whole iterations, as the authors' code)."""
        length, shrink, shortest = max(int(0.22 * iterations), 1), max(int(0.03 * iterations), 1), max(int(0.06 * iterations), 1)
        marks, at = set(), length
        while at <= iterations:
            marks.add(at)
            length = max(length - shrink, shortest)
            at += length
        return marks

    def init(self, delta):
        """Step size, previous iterate, improvement counter and the values at the last checkpoint (lazy)."""
        return {"eta": None}

    def update(self, delta, grad, state, t, eps, gen):
        """The momentum step with each image's eta (2 eps at the start)."""
        if state["eta"] is None:
            n = delta.shape[0]
            shape = (n, *[1] * (delta.dim() - 1))
            state.update(eta=torch.full(shape, 2.0 * float(eps), dtype=delta.dtype, device=delta.device),
                         prev=delta, last_loss=None, count=torch.zeros(n, device=delta.device),
                         mark=0, mark_eta=None, mark_best=None)
        z = delta - state["eta"] * grad.sign()
        new = z if t == 0 else delta + self.alpha * (z - delta) + (1 - self.alpha) * (delta - state["prev"])
        state["prev"] = delta
        return new, state

    def observe(self, delta, state, *, loss, best_delta, best_loss, t, iterations):
        """Count improvements; at a checkpoint halve eta and restart from the best iterate where progress stalled."""
        if state["eta"] is None:
            return delta, state
        if state["last_loss"] is not None:
            state["count"] += (loss < state["last_loss"]).to(state["count"].dtype)
        state["last_loss"] = loss
        done = t + 1
        if done not in self.checkpoints(iterations):
            return delta, state
        eta = state["eta"].flatten()
        stalled = state["count"] < self.rho * (done - state["mark"])
        if state["mark_eta"] is not None:
            stalled |= (eta == state["mark_eta"]) & (best_loss == state["mark_best"])
        halve = stalled.view(-1, *[1] * (delta.dim() - 1))
        state["eta"] = torch.where(halve, state["eta"] / 2, state["eta"])
        delta = torch.where(halve, best_delta, delta)
        state["prev"] = torch.where(halve, delta, state["prev"])
        state.update(count=torch.zeros_like(state["count"]), mark=done, mark_eta=state["eta"].flatten().clone(),
                     mark_best=best_loss.clone())
        return delta, state


class RandomSearch(Sign):
    """A new random draw delta = eps * u, u uniform in {-1, +1}^d, at every iteration (no gradient needed)."""

    needs_grad = False

    def update(self, delta, grad, state, t, eps, gen):
        """A fresh +-eps draw from ``gen``, shaped like ``delta``."""
        signs = torch.randint(0, 2, delta.shape, generator=gen, device=delta.device).to(delta.dtype) * 2 - 1
        return eps * signs, state


class Random(RandomSearch):
    """Ghorbani's random-sign baseline: one +-eps draw per image (one iteration)."""

    max_steps = 1


STEPS = {"sign": Sign, "apgd": APGD, "gradient": Gradient, "adam": Adam, "adam_absolute": AdamAbsolute, "random": Random,
         "random_search": RandomSearch}
