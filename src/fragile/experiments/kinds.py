"""What each kind of named experiment runs (``fragile run NAME``); results go to one output folder."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch

from fragile.errors import FragileError
from fragile.models.outputs import model_output
from fragile.threads import restoring


def _model_and_images(body: dict, device: str = "cpu"):
    from fragile.devices import resolve_device
    from fragile.experiments.config import check_common
    from fragile.experiments.runner import load_model
    from fragile.models.loading import images_for

    check_common(body)
    device = resolve_device(device)
    model = load_model(body.get("model", "resnet20_cifar10")).to(device)
    from fragile.data.sampling import interleave

    x, labels = images_for(model, body.get("images", "cifar10:100"), resize=body.get("resize"))
    x, labels = x.to(device), None if labels is None else labels.to(device)
    if body.get("correct_only", True) and labels is not None:
        with torch.no_grad():
            keep = torch.cat([model_output(model, c).argmax(1) for c in x.split(64)]) == labels
        x, labels = x[keep], labels[keep]
        order = interleave(labels).to(device)  # every prefix (limit) class-balanced after dropping images
        x, labels = x[order], labels[order]
    limit = body.get("limit")
    return model, x[:limit], None if labels is None else labels[:limit]


def record_images(out, x: torch.Tensor, labels) -> str:
    """Write ``out/images.json`` ({"images": N, "classes": "10 classes, 20-21 images each"}) for the summary
    (every report states the classes its images cover); returns the classes text."""
    from fragile.data.sampling import classes_covered

    text = classes_covered(labels)
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "images.json").write_text(json.dumps({"images": int(len(x)), "classes": text}))
    return text


def attack_statement(store_path) -> str:
    """What the attacks of a stored sweep did: iterations, surrogate beta, successes and convergence."""
    from fragile.experiments.store import Store
    from fragile.reporting.figures import betas, convergence_warning

    with Store.open(store_path) as store:
        rows = store.rows()
    attacked = [r for r in rows if r.get("converged") is not None or r["success"]]
    iterations = sorted({r["iterations"] for r in rows if r.get("iterations") is not None})
    beta = ", ".join(f"{b:g}" for b in betas(rows)) or "none"
    nc = convergence_warning(rows)
    return (f"attacks: {'/'.join(map(str, iterations))} iterations, surrogate beta {beta}, "
            f"{len(attacked)}/{len(rows)} results with a label-preserving perturbation; "
            + (nc if nc else "every iterative attack converged (no improvement in its last 10% of iterations)"))


def run_sweep_kind(body, out, *, executor="inprocess", workers=2, quiet=False, device="cpu", paper="", log=print,
                   ray_address=None):
    """Resolve the sweep config ``body``, run it into the store ``out`` (resumable), log what the attacks did and,
    for an audit, the verdict, then build ``out/report.html`` with its figures under ``out/figures``.
    """
    from fragile.experiments.config import resolve
    from fragile.experiments.runner import run_sweep
    from fragile.reporting.html import build_report

    cfg = resolve(body)
    run_sweep(cfg, out, executor=executor, workers=workers, show_progress=not quiet, device=device, log=log,
              ray_address=ray_address)
    log(attack_statement(out))
    if cfg.get("checks") or cfg.get("faithfulness"):  # the audit verdict (robustness, faithfulness, sanity)
        from fragile.reporting.verdict import stored_verdict

        log(str(stored_verdict(out)))
    log(f"report: {build_report(out, Path(out) / 'report.html', png_dir=Path(out) / 'figures', paper=paper)}")


def run_influence_kind(body, out, device="cpu", **_):
    """Run the influence experiment (:func:`fragile.influence.experiment.run_influence`) with ``body``'s keywords."""
    from fragile.experiments.config import check_keywords
    from fragile.influence.experiment import run_influence

    check_keywords(run_influence, body, "the influence experiment")
    run_influence(out, device=device, **body)


def run_geometry_kind(body, out, log=print, device="cpu", **_):
    """Hessian / curvature analysis (:func:`fragile.geometry.report.analyse`) of ``body``'s model on its images;
    the other keys of ``body`` are ``analyse``'s keywords.
    """
    from fragile.experiments.config import check_keywords
    from fragile.geometry.report import analyse

    params = {k: v for k, v in body.items() if k not in ("model", "images", "limit", "correct_only", "resize")}
    check_keywords(analyse, params, "the geometry experiment")
    model, x, labels = _model_and_images(body, device)
    log(f"{len(x)} images, {record_images(out, x, labels)}")
    analyse(model, x, out=out, log=log, **params)


def run_faithfulness_kind(body, out, log=print, device="cpu", **_):
    """Pixel flipping and robustness (:func:`fragile.experiments.faithfulness.run_faithfulness`) of ``body``'s
    model on its images (misclassified ones dropped there); ``betas``, ``smoothgrad_samples``, ``steps``, ``baseline``,
    ``attack_steps`` and ``eps`` (pixel units of 255) from ``body``.
    """
    from fragile.experiments.faithfulness import default_methods, run_faithfulness

    model, x, labels = _model_and_images({**body, "correct_only": False}, device)
    run_faithfulness(model, x, labels, out=out, methods=default_methods(body.get("betas", (1.0, 3.0, 10.0)),
                                                                         body.get("smoothgrad_samples", 20)),
                     steps=body.get("steps", 20), baseline=body.get("baseline", "zero"),
                     attack_steps=body.get("attack_steps", 10), eps=body.get("eps", 8.0), log=log)


def run_transfer_kind(body, out, log=print, device="cpu", **_):
    """Transfer of attacks between explanations (:func:`fragile.experiments.transfer.run_transfers`): ``body`` names
    one attacked explanation (``source``) or several (``sources``), the ``targets`` measured, ``attack``, ``eps``
    (pixel units of ``attack_settings['pixel_scale']``, default 255), ``attack_settings`` and ``chunk`` (images per
    stored attack: a killed run resumes from the last stored chunk).
    """
    from fragile.experiments.transfer import run_transfers

    if ("source" in body) == ("sources" in body):
        raise FragileError("a transfer experiment names one attacked explanation (source: {method: ...}) or a list "
                           "(sources: [...]), not both or neither")
    model, x, labels = _model_and_images(body, device)
    log(f"{len(x)} images, {record_images(out, x, labels)}")
    sources = body["sources"] if "sources" in body else [body["source"]]
    run_transfers(model, x, out=out, sources=sources, targets=body["targets"], attack=body.get("attack", "topk"),
                  eps=body.get("eps", 4.0), attack_settings=body.get("attack_settings"), chunk=body.get("chunk"),
                  log=log)


def run_training_comparison_kind(body, out, log=print, device="cpu", **_):
    """Fine-tune with each regulariser and attack its maps (:func:`fragile.experiments.training_comparison.run_training_comparison`)."""
    from fragile.experiments.training_comparison import run_training_comparison

    run_training_comparison(body, out, device=device, log=log)


KINDS: dict[str, Callable] = {
    "sweep": run_sweep_kind, "influence": run_influence_kind, "geometry": run_geometry_kind,
    "faithfulness": run_faithfulness_kind, "transfer": run_transfer_kind,
    "training_comparison": run_training_comparison_kind,
}


def set_aside(out: str | Path) -> Path | None:
    """Rename a non-empty folder ``out`` to ``<out>.replaced-<YYYYmmdd-HHMMSS>`` (a numbered suffix if that
    exists); returns the new path, or None when there was nothing to move. Refused while a writer holds the
    store's lock."""
    out = Path(out)
    if not out.is_dir() or not any(out.iterdir()):
        return None
    from fragile.experiments.store import lock

    fd = lock(out, timeout=0) if (out / ".lock").exists() else None  # StoreError while a writer holds it
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target, n = out.with_name(f"{out.name}.replaced-{stamp}"), 1
    while target.exists():
        target, n = out.with_name(f"{out.name}.replaced-{stamp}-{n}"), n + 1
    try:
        out.rename(target)
    except OSError as err:
        raise FragileError(f"cannot move {out} aside to {target}: {err.strerror}") from None
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock
    return target


@restoring
def run_named(spec: str, out: str | Path | None = None, *, reduced: bool = False, overrides: dict | None = None,
              executor: str = "inprocess", workers: int = 2, quiet: bool = False, command: str = "",
              device: str = "cpu", new_store: bool = False, log=print, ray_address: str | None = None) -> Path:
    """Run the named or YAML-file experiment ``spec`` (``fragile run NAME``) into ``out``; returns the output folder.

    ``reduced`` applies the experiment's reduced-size overrides, then ``overrides`` (dotted keys,
    ``attack_settings.steps=30``) are applied. The output folder (default ``runs/NAME[-reduced]``) also receives
    ``experiment.json`` (the settings, command and wall time) and ``summary.md``. ``executor``, ``workers``,
    ``ray_address`` (an existing Ray cluster; None: a local instance) and ``quiet`` apply to sweeps only;
    ``threads`` (torch's intra-op threads, default 'auto') to every kind.
    ``new_store``: a non-empty output folder (results of other settings,
    images or weights, which a resume refuses) is first renamed to ``<out>.replaced-<time>`` (nothing is
    deleted) and the run starts afresh.
    """
    from fragile.experiments.registry import prepare

    kind, body, meta = prepare(spec, reduced=reduced, overrides=overrides)
    if kind not in KINDS:
        raise FragileError(f"unknown experiment kind {kind!r}; known: {', '.join(sorted(KINDS))}")
    out = Path(out or f"runs/{body.get('name', Path(spec).stem)}{'-reduced' if reduced else ''}")
    if new_store:
        moved = set_aside(out)
        if moved is not None:
            log(f"--new-store: moved the old results to {moved}")
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    kwargs = {"log": log, "device": device}
    if kind == "sweep":
        kwargs.update(executor=executor, workers=workers, quiet=quiet, paper=meta.get("paper", ""),
                      ray_address=ray_address)
    else:  # every kind takes ``threads`` (a positive integer or 'auto'); the sweep applies and logs its own
        from fragile.threads import apply_threads

        log(f"torch threads: {apply_threads(body.pop('threads', 'auto'))}")
    KINDS[kind](body, out, **kwargs)
    record = {"experiment": spec, "kind": kind, "reduced": reduced, "overrides": overrides or {}, "settings": body,
              "description": meta.get("description", ""), "paper": meta.get("paper", ""), "command": command,
              "wall_seconds": time.perf_counter() - started}
    (out / "experiment.json").write_text(json.dumps(record, indent=1, default=str))
    from fragile.reporting.summary import summarize

    (out / "summary.md").write_text(summarize(out))
    log(f"{spec}: done in {record['wall_seconds']:.0f} s, results in {out}")
    return out
