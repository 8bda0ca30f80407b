"""Sanity checks for saliency methods (Adebayo et al. 2018, sec. 3): does the map depend on the model?

Model-parameter randomisation, on a deep copy of the model (the user's model is never touched):

- ``cascading``: layers are re-initialised top-down, from the logits to the input, cumulatively; after
  step g the top g groups of layers are random.
- ``independent``: one group at a time is re-initialised, the rest keeps the trained weights.

At each step the maps of the randomised model (for the class the original model predicts) are compared
with the original maps: Spearman rank correlation and SSIM (Wang et al. 2004) of |map|, channels summed
(``reduce='abs_sum'``; ``None`` compares the raw maps, flattened, as Quantus' MPRT), each map divided by its
max before SSIM (data range 1; Adebayo et al. normalise to [0, 1]). A map that stays similar to the
original after every layer was randomised does not depend on what the model learned: the method fails.

A "layer" is every module with a ``reset_parameters`` method (conv, linear, batch norm, ...), as in
Quantus; a layer is re-initialised by its own ``reset_parameters`` (PyTorch's default initialisation;
batch norm back to identity statistics), under ``torch.random.fork_rng`` with the seed ``seed + 1 + i`` for
the i-th layer from the top, so the global random state is left alone. Quantus 0.6 seeds every layer with
the same ``seed + 1`` (layers of one shape then get identical weights); with that one difference, its
MPRT gives our Spearman values (``tests/test_sanity.py``). ``groups`` cuts the top-down list of layers into
that many consecutive groups of near-equal size (fewer explanation passes: a cheap check).

Data randomisation (Adebayo et al. 2018, sec. 4; :func:`data_randomisation`): the maps of a model trained on
the true labels against those of the same architecture trained on randomly permuted labels
(:func:`train_label_pair`, ``fragile.data.training_sets.shuffled_labels``), with the same two similarities
per image. A model trained on shuffled labels can only memorise, so a method whose maps stay similar
does not reflect what the model learned from the data. Quantus 0.6 has no data-randomisation metric
(its ``RandomLogit`` compares maps of one model for two classes; MPRT, SmoothMPRT and EfficientMPRT
randomise parameters), so the tests check the similarities against ``scipy.stats.spearmanr`` and
``skimage.metrics.structural_similarity``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from fragile.errors import FragileError
from fragile.explanations.base import Explainer, check_input, check_target
from fragile.metrics.robustness import ExplainFn, processed
from fragile.metrics.similarity import spearman, ssim
from fragile.models.outputs import match_input, model_output

MODES = ("cascading", "independent")


def randomizable_layers(model: nn.Module) -> list[str]:
    """Names of the modules that can be re-initialised (``reset_parameters``), top-down (output first)."""
    return [name for name, m in model.named_modules() if hasattr(m, "reset_parameters") and name][::-1]


def layer_groups(names: Sequence[str], groups: int | None = None) -> list[list[str]]:
    """The top-down layer names in ``groups`` consecutive groups of near-equal size (None: one per layer)."""
    if not names:
        raise FragileError("the model has no layer with parameters to randomise (no module has reset_parameters)")
    if groups is None:
        return [[n] for n in names]
    if int(groups) < 1:
        raise FragileError(f"groups must be >= 1, got {groups}")
    g = min(int(groups), len(names))
    bounds = [round(i * len(names) / g) for i in range(g + 1)]
    return [list(names[bounds[i]:bounds[i + 1]]) for i in range(g)]


def _reinitialise(model: nn.Module, names: Sequence[str], order: Sequence[str], seed: int) -> None:
    for name in names:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1 + order.index(name))
            model.get_submodule(name).reset_parameters()


def _copy(explain, model, seed: int):
    """(explanation function on the copy, the copied model). An Explainer is deep-copied with its model
    (every reference to the model, e.g. SmoothGrad's inner method, points to the one copy) and reseeded
    before every call, so noise-averaged methods see the same noise on every model (common random numbers)."""
    if isinstance(explain, Explainer):
        clone = copy.deepcopy(explain)

        def g(x, t):
            clone.reseed(seed)
            return clone.attribute(x, target=t)
        return g, clone.model
    twin = copy.deepcopy(model)
    return (lambda x, t: torch.as_tensor(explain(twin, x, t)).detach()), twin


def _similarities(m0: torch.Tensor, m1: torch.Tensor) -> dict[str, torch.Tensor]:
    out = {"spearman": spearman(m0, m1)}
    if m0.dim() == 3 and min(m0.shape[-2:]) >= 7:
        unit = lambda m: m / m.flatten(1).amax(1).clamp(min=1e-30).view(-1, 1, 1)  # noqa: E731
        out["ssim"] = ssim(unit(m0), unit(m1), data_range=1.0)
    else:
        out["ssim"] = torch.full_like(out["spearman"], float("nan"))
    return out


def model_parameter_randomisation(explain: Explainer | ExplainFn, x: torch.Tensor, *, model: nn.Module | None = None,
                                  target=None, mode: str = "cascading", groups: int | None = None, seed: int = 0,
                                  reduce: str | None = "abs_sum") -> dict:
    """Adebayo et al.'s model-parameter randomisation test of ``explain`` (an Explainer, or a callable
    ``f(model, x, target) -> map`` with ``model=``) on ``x: (N, C, H, W)``.

    Returns ``{"mode", "layers": [names per group], "randomised": [layers random at each step],
    "spearman": (G, N), "ssim": (G, N)}`` (float64; step g: cascading = the top g + 1 groups random,
    independent = group g alone). Similarity 1 = the map did not change; a sane method falls toward 0."""
    if mode not in MODES:
        raise FragileError(f"mode must be one of {MODES}, got {mode!r}")
    check_input(x)
    if isinstance(explain, Explainer):
        model = explain.model
    elif not (callable(explain) and isinstance(model, nn.Module)):
        raise FragileError("explain must be an Explainer, or a callable f(model, x, target) with model=<nn.Module>")
    order = randomizable_layers(model)
    grouped = layer_groups(order, groups)
    x = match_input(model, x)
    with torch.no_grad():
        out0 = model_output(model, x)
    t = out0.argmax(1) if target is None else check_target(target, x.shape[0], out0.shape[1], x.device)
    g0, _ = _copy(explain, model, seed)
    m0 = processed(g0(x, t), reduce)
    scores = {"spearman": [], "ssim": []}
    counts = []
    g, twin = _copy(explain, model, seed)
    for i, names in enumerate(grouped):
        if mode == "independent" and i:
            g, twin = _copy(explain, model, seed)
        _reinitialise(twin, names, order, seed)
        for k, v in _similarities(m0, processed(g(x, t), reduce)).items():
            scores[k].append(v)
        counts.append(sum(len(n) for n in grouped[: i + 1]) if mode == "cascading" else len(names))
    return {"mode": mode, "layers": grouped, "randomised": counts,
            **{k: torch.stack(v) for k, v in scores.items()}}


def _twin(explain: Explainer, model: nn.Module, random_model: nn.Module) -> Explainer:
    """A copy of ``explain`` in which every reference to ``model`` (its modules, parameters and buffers, e.g.
    SmoothGrad's inner method) is the corresponding object of ``random_model``; the architectures must match."""
    mods, twins = dict(model.named_modules()), dict(random_model.named_modules())
    if list(mods) != list(twins) or any(type(m) is not type(twins[k]) for k, m in mods.items()):
        raise FragileError("random_model must have the architecture of the model (the same modules by name and type)")
    theirs = {**dict(random_model.named_parameters()), **dict(random_model.named_buffers())}
    memo = {id(m): twins[k] for k, m in mods.items()}
    for k, t in (*model.named_parameters(), *model.named_buffers()):
        if theirs[k].shape != t.shape:
            raise FragileError(f"random_model's {k} has shape {tuple(theirs[k].shape)}, the model's {tuple(t.shape)}")
        memo[id(t)] = theirs[k]
    return copy.deepcopy(explain, memo)


def data_randomisation(explain: Explainer | ExplainFn, x: torch.Tensor, *, random_model: nn.Module,
                       model: nn.Module | None = None, target=None, seed: int = 0,
                       reduce: str | None = "abs_sum") -> dict[str, torch.Tensor]:
    """Adebayo et al.'s data-randomisation test (sec. 4) of ``explain`` on ``x: (N, C, H, W)``: the maps of
    ``model`` (trained on the true labels) against those of ``random_model`` (the same architecture trained on
    permuted labels, :func:`train_label_pair`), for the same class: ``target``, default the class ``model``
    predicts (the random model's prediction carries no information).

    ``explain``: an Explainer of ``model`` (applied to ``random_model`` through a copy whose every reference to
    the model is swapped for the random one; noise-averaged methods reseeded with ``seed`` before each call,
    so both models see the same noise), or a callable ``f(model, x, target) -> map`` with ``model=``.
    Returns ``{"spearman": (N,), "ssim": (N,)}`` float64: Spearman rank correlation of |map| (channels summed,
    ``reduce='abs_sum'``; ``None``: the raw maps, flattened) and SSIM (Wang et al. 2004, 7x7 window) of the
    max-normalised |maps| (data range 1), as :func:`model_parameter_randomisation`. High similarity = the
    maps do not depend on what the model learned from the labels: the method fails the test."""
    check_input(x)
    if not isinstance(random_model, nn.Module):
        raise FragileError(f"random_model must be an nn.Module (trained on shuffled labels), got {type(random_model).__name__}")
    if isinstance(explain, Explainer):
        if model is not None and model is not explain.model:
            raise FragileError("model= differs from the Explainer's model: pass one or the other")
        model = explain.model
        if random_model is model:
            raise FragileError("random_model is the model itself: pass the model trained on shuffled labels")
        twin = _twin(explain, model, random_model)

        def run(ex):
            def g(xx, t):
                ex.reseed(seed)
                return ex.attribute(xx, target=t)
            return g
        g0, g1 = run(explain), run(twin)
    elif callable(explain) and isinstance(model, nn.Module):
        g0 = lambda xx, t: torch.as_tensor(explain(model, xx, t)).detach()  # noqa: E731
        g1 = lambda xx, t: torch.as_tensor(explain(random_model, xx, t)).detach()  # noqa: E731
    else:
        raise FragileError("explain must be an Explainer, or a callable f(model, x, target) with model=<nn.Module>")
    x = match_input(model, x)
    with torch.no_grad():
        out0 = model_output(model, x)
    t = out0.argmax(1) if target is None else check_target(target, x.shape[0], out0.shape[1], x.device)
    m0, m1 = processed(g0(x, t), reduce), processed(g1(match_input(random_model, x), t), reduce)
    if m0.shape != m1.shape:
        raise FragileError(f"the two models' maps differ in shape: {tuple(m0.shape)} and {tuple(m1.shape)}")
    return _similarities(m0, m1)


def train_label_pair(make_model: Callable[[], nn.Module], train_data, test_data, *, out: str | Path,
                     label_seed: int = 0, seed: int = 0, arch: str = "custom", log=None, **train_kwargs) -> dict:
    """Two models for :func:`data_randomisation`: ``make_model()`` built twice from the same seeded
    initialisation (``torch.manual_seed(seed)``, the global random state restored after), one trained on
    ``train_data = (x, y)``, the other on ``(x, shuffled_labels(y, label_seed))``, each with
    ``fragile.defenses.training.train`` (checkpoints and resumption in ``out/true`` and ``out/shuffled``;
    ``train_kwargs``: its epochs, batch_size, lr, ...). Returns ``{"model", "random_model", "test_accuracy":
    {"true", "shuffled"}, "history": {"true", "shuffled"}}``; the shuffled model's test accuracy should be
    near chance (1 / classes) and the true one's well above."""
    from fragile.data.training_sets import shuffled_labels
    from fragile.defenses.training import train

    x, y = train_data
    quiet = log if log is not None else (lambda *a, **k: None)
    result = {"test_accuracy": {}, "history": {}}
    for kind, labels in (("true", y), ("shuffled", shuffled_labels(y, label_seed))):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            net = make_model()
            if not isinstance(net, nn.Module):
                raise FragileError(f"make_model must return an nn.Module, got {type(net).__name__}")
            run = train(net, arch=arch, train_data=(x, labels), test_data=test_data, out=Path(out) / kind, seed=seed,
                        log=quiet, **train_kwargs)
        result["model" if kind == "true" else "random_model"] = net.eval()
        result["history"][kind] = run["history"]
        result["test_accuracy"][kind] = run["history"][-1]["test_accuracy"] if run["history"] else float("nan")
    return result
