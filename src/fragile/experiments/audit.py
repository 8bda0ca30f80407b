"""``fragile.audit(model, images)``: can the saliency maps of *this* model be trusted? One call.

It runs the default audit sweep (``experiments/configs/audit-default.yaml``: gradient, integrated gradients
and SmoothGrad under random-sign, top-k and mass-center attacks at eps 2, 4, 8 of 255, deletion / insertion
curves, and the checks: random-perturbation sensitivity beside its worst case and the model-parameter
randomisation sanity check on the first 8 images) on any ``nn.Module`` and images given as a tensor, a
(tensor, labels) pair, a Dataset or DataLoader, or an image spec (folder, ``cifar10:N``, ...), and returns the
per-image rows, the verdict (robustness, faithfulness and sanity per method, ranked; ``reporting.verdict``) and
what the attacks did (iterations, surrogate beta, convergence). With ``out`` the store, the HTML report and
summary.md are kept there (a rerun resumes); without, they live in a temporary folder.
"""

from __future__ import annotations

import copy
import html
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from fragile.errors import FragileError


@dataclass
class AuditResult:
    """``rows``: one row per image x method x attack x eps (a pandas DataFrame; failures have NaN metrics);
    ``verdict``: per method robustness (worst attack), faithfulness (deletion AUC) and sanity (randomisation)
    with 95% bootstrap intervals, the ranking over the three, a plain-language paragraph and the caveats (the
    text of ``scores``, a ``fragile.reporting.verdict.AuditVerdict``; the same verdict as the report and
    summary.md); ``robustness``: the robustness-only paragraph (worst attack, Spearman, paired comparisons);
    ``checks``: the stored worst-vs-random and sanity results per method; ``attacks``: iterations, surrogate
    beta, successes and convergence; ``report`` / ``store``: paths when ``out`` was given."""

    rows: object
    faithfulness: object
    verdict: str
    attacks: str
    images: str
    report: Path | None
    store: Path | None
    scores: object = None
    robustness: str = ""
    checks: list | None = None

    def __str__(self) -> str:
        where = f"\nreport: {self.report}" if self.report else ""
        return f"{self.images}\n{self.attacks}\n{self.verdict}{where}"


def audit(model: nn.Module, images, *, labels=None, methods: Sequence | None = None, attacks: Sequence | None = None,
          eps: Sequence[float] | None = None, steps: int | None = None, mean=None, std=None, bounds=None,
          classes: Sequence[str] | None = None, limit: int | None = 16, correct_only: bool = True,
          attack_settings: dict | None = None, resize: str | None = None, out: str | Path | None = None,
          checks: dict | bool | None = None, device: str = "cpu", show_progress: bool = False,
          log=print) -> AuditResult:
    """Audit the explanations of ``model`` on ``images``.

    ``model``: any ``nn.Module`` in eval mode taking ``(N, C, H, W)``. If ``mean``/``std`` (per channel, in
    the units of ``bounds``) or ``bounds`` (the pixel range the network expects, default (0, 1)) are given it
    is wrapped so that it takes raw pixels in [0, 1]: ``net((lo + (hi - lo) x - mean) / std)``; a fragile model
    (one with ``bounds``) is used as it is. ``images``: an ``(N, C, H, W)`` tensor within the model's data
    range, a ``(x, labels)`` pair, a Dataset / DataLoader of ``(x, label)``, or an image spec. ``labels``:
    (N,) true classes of a tensor (then only correctly classified images are attacked if ``correct_only``).
    ``methods``, ``attacks``, ``eps`` (pixel units of 255), ``steps``: override the default sweep;
    ``attack_settings``: any other attack setting (``beta``, ``step_size``, ...). ``limit``: at most this many
    images (class-balanced when labels are known). ``checks``: the worst-vs-random and sanity checks
    (``fragile.experiments.checks``; default: those of the default audit, on its first 8 images); a mapping
    overrides some of their settings, False skips them.
    """
    from fragile.experiments.config import resolve
    from fragile.experiments.kinds import attack_statement
    from fragile.experiments.registry import prepare
    from fragile.experiments.runner import run_sweep
    from fragile.experiments.store import Store
    from fragile.experiments.checks import load_checks
    from fragile.reporting.html import build_report, verdict
    from fragile.reporting.verdict import audit_verdict

    model = _wrapped(model, mean=mean, std=std, bounds=bounds, classes=classes)
    _, body, _ = prepare("audit-default")
    body = {k: v for k, v in body.items() if k not in ("kind", "description", "paper", "reduced")}
    given = _as_images(images, labels, model)
    body.update({"model": f"in-memory {type(_inner(model)).__name__}", "limit": limit, "correct_only": correct_only,
                 "images": images if given is None else f"in-memory ({len(given.x)} images)", "resize": resize})
    for key, value in (("methods", methods), ("attacks", attacks), ("eps", None if eps is None else list(eps))):
        if value is not None:
            body[key] = list(value) if not isinstance(value, (str, dict)) else value
    settings = {**body.get("attack_settings", {}), **(attack_settings or {})}
    if steps is not None:
        settings["steps"] = steps
    body["attack_settings"] = settings
    if checks is False:
        body.pop("checks", None)
    elif checks is True:
        body.setdefault("checks", True)
    elif isinstance(checks, dict):
        body["checks"] = {**(body.get("checks") if isinstance(body.get("checks"), dict) else {}), **checks}
    cfg = resolve(body)
    with tempfile.TemporaryDirectory(prefix="fragile-audit-") as tmp:
        store_path = Path(out) if out is not None else Path(tmp) / "store"
        quiet = (lambda *a: None) if log is None else log
        run_sweep(cfg, store_path, model=model, images=given, device=device, show_progress=show_progress, log=quiet)
        with Store.open(store_path) as store:
            rows, faith = store.rows(), store.rows("faithfulness")
        stored_checks = load_checks(store_path)
        report = build_report(store_path, store_path / "report.html") if out is not None else None
        if out is not None:  # the same verdict as the report's, in markdown
            from fragile.reporting.summary import summarize

            (store_path / "summary.md").write_text(summarize(store_path))
        statement = attack_statement(store_path)
    covered = _covered(rows)
    robustness = _plain(verdict(rows, "spearman"))
    scores = audit_verdict(rows, faith, stored_checks)
    text = str(scores) if scores is not None else robustness
    if log is not None:
        log(statement)
        log(text)
    rows = _named(rows, getattr(model, "class_names", None))
    return AuditResult(rows=_frame(rows), faithfulness=_frame(faith), verdict=text, attacks=statement,
                       images=covered, report=report, store=store_path if out is not None else None, scores=scores,
                       robustness=robustness, checks=stored_checks)


def _as_images(images, labels, model):
    """In-memory images as ``fragile.data.Images``; None for an image spec (read by the sweep itself)."""
    from fragile.data import Images

    if isinstance(images, (str, Path)):
        return None
    if isinstance(images, (tuple, list)) and len(images) == 2 and isinstance(images[0], torch.Tensor):
        images, labels = images
    if isinstance(images, torch.utils.data.Dataset):
        images = torch.utils.data.DataLoader(images, batch_size=64)
    if isinstance(images, torch.utils.data.DataLoader):
        xs, ys = [], []
        for batch in images:
            x, y = (batch[0], batch[1]) if isinstance(batch, (tuple, list)) and len(batch) >= 2 else (batch, None)
            xs.append(torch.as_tensor(x))
            ys.append(None if y is None else torch.as_tensor(y))
        if not xs:
            raise FragileError("the dataset / data loader yielded no images")
        images = torch.cat(xs)
        labels = None if any(y is None for y in ys) else torch.cat(ys)
    if not isinstance(images, torch.Tensor):
        raise FragileError(f"images must be an (N, C, H, W) tensor, an (x, labels) pair, a Dataset / DataLoader or an "
                           f"image spec (folder, cifar10:N, ...), got {type(images).__name__}")
    if images.dim() != 4 or not images.is_floating_point():
        raise FragileError(f"images must be a floating-point (N, C, H, W) tensor, got {images.dtype} of shape "
                           f"{tuple(images.shape)}")
    if labels is not None:
        labels = torch.as_tensor(labels).long().reshape(-1)
        if len(labels) != len(images):
            raise FragileError(f"{len(labels)} labels for {len(images)} images")
    low, high = getattr(model, "bounds", (0.0, 1.0))
    if bool((images < low - 1e-6).any()) or bool((images > high + 1e-6).any()):
        raise FragileError(f"images lie outside the model's data range [{low}, {high}] (give raw pixels; pass mean/std "
                           "so fragile normalises them, or bounds for another pixel range)")
    ids = tuple(f"image {i}" for i in range(len(images)))
    return Images(images.detach(), labels, ids, getattr(model, "class_names", None), "memory")


def _wrapped(model, *, mean, std, bounds, classes) -> nn.Module:
    """The model as the sweep sees it: carrying ``bounds`` (and class names)."""
    from fragile.models.loading import _wrap, parse_classes

    if not isinstance(model, nn.Module):
        raise FragileError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    from fragile.models.outputs import check_finite_weights

    check_finite_weights(model)
    if hasattr(model, "bounds") and mean is None and std is None and bounds is None:
        out = copy.copy(model)
    else:
        if hasattr(model, "bounds"):
            raise FragileError("this model already carries its preprocessing (it has bounds); do not pass mean, std "
                               "or bounds again")
        out = _wrap(model, {}, {"mean": mean, "std": std, "bounds": bounds, "channels": None})
    if classes is not None:
        out.class_names = parse_classes(list(classes))
    return out


def _inner(model: nn.Module) -> nn.Module:
    return model[-1] if isinstance(model, nn.Sequential) and len(model) == 2 else model


def _covered(rows) -> str:
    n = len({r["image"] for r in rows})
    labels = {r["label"] for r in rows}
    return f"{n} images, {len(labels)} predicted classes"


def _plain(text: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", text))


def _named(rows, class_names):
    """Rows with ``label_name`` / ``label_adv_name`` beside the class indices when the model names its classes."""
    if not class_names:
        return rows
    name = lambda i: class_names[i] if 0 <= i < len(class_names) else str(i)  # noqa: E731
    return [{**r, "label_name": name(r["label"]), "label_adv_name": name(r["label_adv"])} for r in rows]


def _frame(rows):
    try:
        import pandas as pd
    except ImportError:
        return rows
    return pd.DataFrame(rows)
