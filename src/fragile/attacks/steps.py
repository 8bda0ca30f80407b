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
- ``adam_cosine``:   ``adam`` with lr_t = lr (1 + cos(pi t / T)) / 2 over the budget T (a large start, ~0 at
                     the end): Dombrowski's 1,500-step quality in far fewer iterations
                     (``benchmarks/manipulate_schedules.py``)
- ``adam_plateau``:  ``adam`` whose lr halves, restarting from the best iterate, where the objective stalls
                     (APGD's checkpoints and rule)
- ``random``:        one draw delta = eps * u, u uniform in {-1, +1}^d (Ghorbani's random-sign baseline)
- ``random_search``: a new draw every iteration; the loop keeps the best by the objective

``size`` (alpha or lr) arrives in raw data units: the loop converts from pixel units of 255.
"""

from __future__ import annotations

import math

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
        """After iteration ``t``: ``(delta to continue from, state)``.

        ``loss``: (N,) the objective at the iterate on the original model (+inf where the label changed), or None
        where the loop did not evaluate this iteration (``check_every``),
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
        m, v = self._moments(grad, m, v)
        return delta - self.size * self._direction(m / (1 - self.b1 ** (t + 1)), v / (1 - self.b2 ** (t + 1))), (m, v)

    def _moments(self, grad, m, v):
        """The updated first and second moments."""
        return self.b1 * m + (1 - self.b1) * grad, self.b2 * v + (1 - self.b2) * grad * grad

    def _direction(self, m_hat, v_hat):
        """m^ / (sqrt(v^) + eps), eps relative to the per-image rms of sqrt(v^) or absolute."""
        root = v_hat.sqrt()
        floor = self.eps * _per_image_rms(root) + torch.finfo(root.dtype).tiny if self.relative else self.eps
        return m_hat / (root + floor)


class AdamAbsolute(Adam):
    """Adam exactly as ``torch.optim.Adam`` (absolute eps 1e-8), as the Dombrowski et al. reference code."""

    relative = False


class AdamCosine(Adam):
    """Scale-free Adam whose learning rate decays by a half cosine from ``size`` to ~0 over the budget
    (Loshchilov & Hutter 2017, without warm-up or restarts):

        lr_t = size * (1 + cos(pi t / T)) / 2,        t = 0 .. T - 1,  T = the loop's iterations

    then delta <- delta - lr_t * m^ / (sqrt(v^) + eps rms(sqrt(v^))) as ``adam``. Large early steps cross the
    landscape, the small late ones settle where a constant step keeps jittering: with size = 2 P / T times the
    paper's lr its steps add up to the paper's P constant steps (``benchmarks/manipulate_schedules.py``). T
    reaches the rule through ``observe`` (at t = 0 the factor is 1 whatever T).
    """

    @staticmethod
    def factor(t: int, iterations: int) -> float:
        """(1 + cos(pi t / T)) / 2: the fraction of ``size`` used at iteration ``t`` (0-based) of ``iterations``."""
        return 0.5 * (1.0 + math.cos(math.pi * t / iterations))

    def init(self, delta):
        """Zero moments; the budget T is unknown until the loop's first ``observe``."""
        return {"m": torch.zeros_like(delta), "v": torch.zeros_like(delta), "iterations": None}

    def update(self, delta, grad, state, t, eps, gen):
        """One bias-corrected Adam step of size lr_t."""
        if state["iterations"] is None and t > 0:
            raise RuntimeError("adam_cosine needs the budget: call observe(...) after every update (the loop does)")
        lr = self.size * (self.factor(t, state["iterations"]) if t > 0 else 1.0)
        state["m"], state["v"] = self._moments(grad, state["m"], state["v"])
        direction = self._direction(state["m"] / (1 - self.b1 ** (t + 1)), state["v"] / (1 - self.b2 ** (t + 1)))
        return delta - lr * direction, state

    def observe(self, delta, state, *, loss, best_delta, best_loss, t, iterations):
        """Remember the budget T."""
        state["iterations"] = iterations
        return delta, state


class AdamPlateau(Adam):
    """Scale-free Adam whose per-image learning rate halves, restarting from the best iterate, where the objective
    stalls; APGD's rule (Croce & Hein 2020) carried over to Adam:

        lr <- lr / 2, delta <- delta_best, m <- 0     at a checkpoint w_j (``APGD.checkpoints``), for the images
        whose objective improved in fewer than rho = 75% of the iterations since w_j-1, or whose lr and best
        objective are both unchanged since then

    starting at lr = ``size``. The first moment restarts with its own bias correction (1 - b1^(t - t_restart + 1));
    the second moment, a scale estimate, is kept. Between checkpoints the step is ``adam``'s.
    """

    rho = 0.75

    def init(self, delta):
        """Zero moments; the per-image lr, restart iteration and checkpoint values are set at the first update."""
        return {"m": torch.zeros_like(delta), "v": torch.zeros_like(delta), "lr": None}

    def update(self, delta, grad, state, t, eps, gen):
        """One Adam step with each image's lr (``size`` until its first halving)."""
        if state["lr"] is None:
            shape = (delta.shape[0], *[1] * (delta.dim() - 1))
            state.update(lr=torch.full(shape, float(self.size), dtype=delta.dtype, device=delta.device),
                         start=torch.zeros(shape, dtype=delta.dtype, device=delta.device), **_progress(delta))
        state["m"], state["v"] = self._moments(grad, state["m"], state["v"])
        m_hat = state["m"] / (1 - self.b1 ** (t + 1 - state["start"]))
        return delta - state["lr"] * self._direction(m_hat, state["v"] / (1 - self.b2 ** (t + 1))), state

    def observe(self, delta, state, *, loss, best_delta, best_loss, t, iterations):
        """Count improvements; at a checkpoint halve lr and restart from the best iterate where progress stalled."""
        if state["lr"] is None:
            return delta, state
        stalled = _stalled(state, "lr", loss, best_loss, t, iterations, self.rho)
        if stalled is None:
            return delta, state
        halve = stalled.view(-1, *[1] * (delta.dim() - 1))
        state["lr"] = torch.where(halve, state["lr"] / 2, state["lr"])
        state["m"] = torch.where(halve, torch.zeros_like(state["m"]), state["m"])
        state["start"] = torch.where(halve, torch.full_like(state["start"], t + 1), state["start"])
        delta = torch.where(halve, best_delta, delta)
        _mark(state, "lr", t, best_loss)
        return delta, state


def _progress(delta: torch.Tensor) -> dict:
    """The fresh state of APGD's progress test (``_stalled``) for a batch shaped like ``delta``."""
    return {"last_loss": None, "count": torch.zeros(delta.shape[0], device=delta.device), "evaluations": 0, "mark": 0,
            "mark_size": None, "mark_best": None}


def _stalled(state: dict, size: str, loss, best_loss, t: int, iterations: int, rho: float):
    """APGD's progress test (Croce & Hein 2020, sec. 3.2), shared by ``apgd`` and ``adam_plateau``: counts the
    evaluated iterations whose objective improved on the previous evaluation; at a checkpoint (``APGD.checkpoints``)
    returns (N,) bool, the images that improved in fewer than ``rho`` of the evaluations since the last test or
    whose step size ``state[size]`` and best objective are both unchanged since then; None between checkpoints.

    ``loss=None``: an iteration the loop did not evaluate (``attacks.run(check_every=c)``): nothing is counted and
    nothing tested; a checkpoint passed between evaluations is tested at the next evaluation. With every iteration
    evaluated (c = 1) the evaluations since the last test are the iterations since it: APGD's rule exactly."""
    if loss is None:
        return None
    if state["last_loss"] is not None:
        state["count"] += (loss < state["last_loss"]).to(state["count"].dtype)
    state["last_loss"] = loss
    state["evaluations"] += 1
    if not any(state["mark"] < c <= t + 1 for c in APGD.checkpoints(iterations)):
        return None
    stalled = state["count"] < rho * state["evaluations"]
    if state["mark_size"] is not None:
        stalled |= (state[size].flatten() == state["mark_size"]) & (best_loss == state["mark_best"])
    return stalled


def _mark(state: dict, size: str, t: int, best_loss) -> None:
    """Start the next checkpoint interval: counter reset, the step sizes and best objective remembered."""
    state.update(count=torch.zeros_like(state["count"]), evaluations=0, mark=t + 1,
                 mark_size=state[size].flatten().clone(), mark_best=best_loss.clone())


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
            shape = (delta.shape[0], *[1] * (delta.dim() - 1))
            state.update(eta=torch.full(shape, 2.0 * float(eps), dtype=delta.dtype, device=delta.device),
                         prev=delta, **_progress(delta))
        z = delta - state["eta"] * grad.sign()
        new = z if t == 0 else delta + self.alpha * (z - delta) + (1 - self.alpha) * (delta - state["prev"])
        state["prev"] = delta
        return new, state

    def observe(self, delta, state, *, loss, best_delta, best_loss, t, iterations):
        """Count improvements; at a checkpoint halve eta and restart from the best iterate where progress stalled."""
        if state["eta"] is None:
            return delta, state
        stalled = _stalled(state, "eta", loss, best_loss, t, iterations, self.rho)
        if stalled is None:
            return delta, state
        halve = stalled.view(-1, *[1] * (delta.dim() - 1))
        state["eta"] = torch.where(halve, state["eta"] / 2, state["eta"])
        delta = torch.where(halve, best_delta, delta)
        state["prev"] = torch.where(halve, delta, state["prev"])
        _mark(state, "eta", t, best_loss)
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


STEPS = {"sign": Sign, "apgd": APGD, "gradient": Gradient, "adam": Adam, "adam_absolute": AdamAbsolute,
         "adam_cosine": AdamCosine, "adam_plateau": AdamPlateau, "random": Random, "random_search": RandomSearch}
