"""Run a sweep from a resolved config into a store; resumable, in-process or on Ray.

The sweep is cut into *units*: one (method, defence, attack, eps, seed) on one batch of images. A unit
runs the attack engine and yields one row per image; the driver writes each finished unit to the store
in one transaction. A rerun skips finished units (resume after a crash or ``kill -9``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from fragile import attacks
from fragile.attacks.second_order import refusal
from fragile.defenses import create as create_defence
from fragile.devices import model_device, resolve_device
from fragile.errors import FragileError
from fragile.experiments.config import config_hash, label
from fragile.experiments.store import Store
from fragile.explanations.subsample import subsampler
from fragile.metrics import perturbation_curve
from fragile.models.outputs import OUTPUT_KEY, model_output
from fragile.threads import restoring


@dataclass(frozen=True)
class Unit:
    """One work unit of a sweep: a (method, defence, attack, eps, seed) on the images ``start:stop``.

    ``attack`` is ``None`` for a faithfulness unit (clean images only); ``eps`` is in pixel units of the sweep's
    ``pixel_scale`` (default 255).
    """
    method: dict
    defence: dict
    attack: dict | None  # None: a faithfulness unit (clean images only)
    eps: float
    seed: int
    start: int
    stop: int

    @property
    def key(self) -> str:
        """The unit's name in the store, ``METHOD|DEFENCE|ATTACK|eps=E|seed=S|images=START-STOP`` (``faithfulness``
        in place of the attack, eps and seed for a faithfulness unit); labels as :func:`fragile.experiments.config.label`.
        """
        what = "faithfulness" if self.attack is None else f"{label(self.attack)}|eps={self.eps:g}|seed={self.seed}"
        return f"{label(self.method)}|{label(self.defence)}|{what}|images={self.start}-{self.stop}"


def plan(cfg: dict, n_images: int) -> list[Unit]:
    """Every unit of the sweep, in a fixed order."""
    units = []
    for method in cfg["methods"]:
        for defence in cfg["defences"]:
            for start in range(0, n_images, cfg["batch_size"]):
                stop = min(start + cfg["batch_size"], n_images)
                if cfg.get("faithfulness"):
                    units.append(Unit(method, defence, None, 0.0, 0, start, stop))
                for attack in cfg["attacks"]:
                    for eps in cfg["eps"]:
                        for seed in cfg["seeds"]:
                            units.append(Unit(method, defence, attack, eps, seed, start, stop))
    return units


def load_model(spec):
    """The config's ``model:``: a spec string or a mapping (fragile.models.load's keyword arguments)."""
    from fragile.models.loading import from_config

    return from_config(spec)


def load_inputs(cfg: dict, model, images=None) -> tuple[torch.Tensor, torch.Tensor | None, list[str]]:
    """(x, labels or None, image ids) of the sweep, on the model's device. Ids are file paths (relative to
    the folder, or to FRAGILE_DATA for the named sets). The images are read at the model's input size and
    channel count (a size mismatch is refused unless the config asks for a ``resize`` policy); with labels
    (folder names matched to the model's class names) only correctly classified ones if ``correct_only``,
    in round-robin class order, so the first ``limit`` images are class-balanced too. ``images``: an
    in-memory ``fragile.data.Images`` to use instead of reading ``cfg['images']``."""
    from fragile.data import load_image_set, model_channels
    from fragile.data.images import align_labels
    from fragile.data.sampling import interleave

    if images is None:
        images = load_image_set(cfg["images"], size=getattr(model, "input_size", None), resize=cfg.get("resize"),
                                channels=model_channels(model))
        images = align_labels(images, getattr(model, "class_names", None))
    device = model_device(model)
    if images.labels is not None:
        if cfg["correct_only"]:
            with torch.no_grad():
                pred = torch.cat([model_output(model, c.to(device)).argmax(1).cpu() for c in images.x.split(64)])
            images = images.subset(pred == images.labels.cpu())
        images = images.subset(interleave(images.labels))  # the balance of every prefix, after dropping images
    if cfg["limit"]:
        images = images.subset(slice(0, cfg["limit"]))
    if len(images) == 0:
        raise FragileError(f"no images to attack from {cfg['images']!r}"
                           + (" (none is classified correctly; set correct_only: false)" if cfg["correct_only"] else ""))
    labels = None if images.labels is None else images.labels.to(device)
    return images.x.to(device), labels, list(images.ids)


def slic_region_masks(x: torch.Tensor, maps: torch.Tensor, n_segments: int = 20, seed: int = 0) -> torch.Tensor:
    """Per image, the SLIC superpixel (scikit-image) whose centroid is farthest from the map's center of
    mass (Ghorbani App. D moves the saliency into a chosen superpixel), (N, H, W)."""
    try:
        from skimage.segmentation import slic
    except ImportError:
        raise FragileError("SLIC regions need scikit-image: pip install scikit-image") from None
    from fragile.metrics import center_of_mass

    com = center_of_mass(maps).cpu().numpy()
    com = np.where(np.isnan(com), (np.array(x.shape[-2:]) - 1) / 2, com)  # an all-zero map: the image center
    masks = []
    rows, cols = np.mgrid[: x.shape[-2], : x.shape[-1]]
    for i in range(len(x)):
        seg = slic(x[i].permute(1, 2, 0).cpu().numpy().astype(np.float64), n_segments=n_segments, start_label=0,
                   channel_axis=-1)
        labels = np.unique(seg)
        cents = np.array([[rows[seg == s].mean(), cols[seg == s].mean()] for s in labels])
        far = labels[np.argmax(((cents - com[i]) ** 2).sum(1))]
        masks.append(torch.from_numpy(seg == far))
    return torch.stack(masks).float()


def _objective(item: dict, explainer, x: torch.Tensor):
    params = {k: v for k, v in item.items() if k != "name"}
    if item["name"] == "targeted":
        region = params.pop("region", None)
        if region is None:
            raise FragileError("attack 'targeted' needs region: [r0, r1, c0, c1] or 'slic' in the config")
        if region == "slic":
            params["mask"] = slic_region_masks(x, attacks.saliency(explainer.attribute(x)),
                                               n_segments=params.pop("segments", 20))
        else:
            mask = torch.zeros(x.shape[-2:])
            mask[region[0]:region[1], region[2]:region[3]] = 1
            params["mask"] = mask
    if item["name"] == "manipulate":
        params.setdefault("target_map", attacks.saliency(explainer.attribute(x.roll(1, 0))))  # the next image's map
    return attacks.create(item["name"], **params)


def _method_params(model, item: dict) -> dict:
    """Method parameters from the config; ``data: <image spec>`` becomes the estimated patterns of
    PatternAttribution (or the reference data of a mean baseline)."""
    params = {k: v for k, v in item.items() if k != "name"}
    if isinstance(params.get("data"), str):
        from fragile.data import load_images
        from fragile.explanations import estimate_patterns

        data, _ = load_images(params.pop("data"), size=getattr(model, "input_size", None))
        data = data.to(model_device(model))
        if item["name"] == "pattern_attribution":
            params["patterns"] = estimate_patterns(model, data)
        else:
            params["reference_data"] = data
    return params


def sweep_beta(model, x: torch.Tensor, beta):
    """The surrogate beta of a sweep: ``'auto'`` is chosen once from the sweep's first clean images (the same
    for every unit and batch, so a resumed or distributed sweep uses one value); a list is a schedule."""
    if beta == "auto":
        from fragile.attacks.surrogate import choose_beta

        return choose_beta(model, x).beta
    return tuple(beta) if isinstance(beta, list) else beta


def execute_unit(model, cfg: dict, unit: Unit, x: torch.Tensor, ids: list[str], progress=None):
    """(rows, arrays) of one unit; pure given its inputs (deterministic)."""
    method_params = _method_params(model, unit.method)
    defence_params = {k: v for k, v in unit.defence.items() if k != "name"}
    explainer = create_defence(unit.defence["name"], model, unit.method["name"], method_params, **defence_params)
    xs = x[unit.start:unit.stop]
    started = time.perf_counter()
    if unit.attack is None:
        h = explainer.attribute(xs)
        dele = perturbation_curve(model, xs, h, mode="deletion")
        ins = perturbation_curve(model, xs, h, mode="insertion")
        rows = [{"image": unit.start + i, "method": label(unit.method), "defence": label(unit.defence),
                 "deletion_auc": float(dele["auc_probability"][i]), "insertion_auc": float(ins["auc_probability"][i])}
                for i in range(len(xs))]
        return rows, None, time.perf_counter() - started
    s = cfg["attack_settings"]
    beta = sweep_beta(model, x, s["beta"])
    objective = _objective(unit.attack, explainer, xs)
    result = attacks.run(model, explainer, xs, objective, eps=unit.eps,
                         steps=s["steps"], step=None if objective.fixed_step else s["step"], step_size=s["step_size"],
                         lr=s["lr"], norm=s["norm"],
                         beta=beta, seed=unit.seed, early_stop=s["early_stop"], reduce=s["reduce"],
                         pixel_scale=s["pixel_scale"], k=s.get("k"), check_every=s.get("check_every", 1),
                         precision=s.get("precision", "float32"), subsample=s.get("subsample"),
                         second_order=s.get("second_order", "exact"), step_output=s.get("step_output", "model"),
                         progress=progress)
    seconds = time.perf_counter() - started
    rows = []
    for i, r in enumerate(result.rows()):
        rows.append({**{k: r[k] for k in ("success", "reason", "label", "label_adv", "best_iteration", "iterations",
                                          "converged", "beta")},
                     "image": unit.start + i, "image_id": ids[unit.start + i], "method": label(unit.method),
                     "attack": label(unit.attack), "eps": unit.eps, "defence": label(unit.defence), "seed": unit.seed,
                     "steps": s["steps"], "seconds": seconds / len(xs),
                     "trajectory": {"iterations": result.trajectory_iterations,
                                    "objective": [float(v) for v in result.trajectory[:, i]],
                                    "second_order": result.settings["second_order"]},
                     "metrics": {k: float(v[i]) for k, v in result.metrics.items()}})
    arrays = None
    if cfg["store_arrays"]:
        arrays = {"x": result.x.cpu().numpy().astype(np.float32), "x_adv": result.x_adv.cpu().numpy().astype(np.float32),
                  "maps": result.maps.cpu().numpy().astype(np.float32),
                  "maps_adv": result.maps_adv.cpu().numpy().astype(np.float32)}
    if s.get("noise_control"):
        rows, arrays = _with_noise_control(model, explainer, objective, result, unit, s, ids, rows, arrays)
        seconds = time.perf_counter() - started
    return rows, arrays, seconds


def _with_noise_control(model, explainer, objective, result, unit: Unit, s: dict, ids, rows, arrays):
    """The unit's rows and arrays followed by those of its equal-norm random-noise control
    (``fragile.experiments.controls``): attack ``<attack>_noise_control`` (its parameters kept), one row
    per image, metrics as the attack's, arrays (x, the control image, maps) at the same row positions.
    Random attacks get no control."""
    from fragile.experiments.controls import SUFFIX, is_random, noise_control
    from fragile.explanations.base import model_bounds

    if is_random(result):
        return rows, arrays
    started = time.perf_counter()
    low, high = model_bounds(model)
    eps_raw = unit.eps * (high - low) / s["pixel_scale"]
    ctrl = noise_control(model, explainer, objective, result, eps_raw=eps_raw, norm=s["norm"], reduce=s["reduce"],
                         seed=1_000_003 * unit.seed + unit.start + 1,
                         output_key=getattr(explainer, "output_key", OUTPUT_KEY))
    per_image = (time.perf_counter() - started) / len(result.x)
    name = label({**unit.attack, "name": unit.attack["name"] + SUFFIX})
    for i in range(len(result.x)):
        rows.append({"success": bool(ctrl["success"][i]), "reason": ctrl["reasons"][i], "label": int(result.label[i]),
                     "label_adv": int(ctrl["label_control"][i]), "best_iteration": 0, "iterations": None,
                     "converged": None, "beta": None, "image": unit.start + i, "image_id": ids[unit.start + i],
                     "method": label(unit.method), "attack": name, "eps": unit.eps, "defence": label(unit.defence),
                     "seed": unit.seed, "steps": s["steps"], "seconds": per_image, "trajectory": None,
                     "metrics": {k: float(v[i]) for k, v in ctrl["metrics"].items()}})
    if arrays is not None:
        arrays = {"x": np.concatenate([arrays["x"], arrays["x"]]),
                  "x_adv": np.concatenate([arrays["x_adv"], ctrl["x_control"].cpu().numpy().astype(np.float32)]),
                  "maps": np.concatenate([arrays["maps"], arrays["maps"]]),
                  "maps_adv": np.concatenate([arrays["maps_adv"], ctrl["maps_control"].cpu().numpy().astype(np.float32)])}
    return rows, arrays


@restoring
def run_sweep(cfg: dict, store_path, *, executor: str = "inprocess", workers: int = 2, dry_run: bool = False,
              show_progress: bool = True, device: str = "cpu", log=print, model=None, images=None,
              ray_address: str | None = None) -> dict:
    """Run (or resume) the sweep on ``device``; returns counts {'units', 'done_before', 'ran'} (with the ray
    executor also 'nodes': {Ray node id: units it ran}).

    ``executor='ray'`` runs the units on ``workers`` Ray actors of 1 CPU each, spread over the nodes; the
    driver alone writes the store. ``ray_address``: None starts a local Ray instance of ``workers`` CPUs; an
    address (``"HOST:PORT"`` of a head node started with ``ray start --head``, or ``"auto"``) submits to that
    existing cluster instead, whose nodes must be able to import fragile and load ``cfg['model']``.

    ``model``: an in-memory ``nn.Module`` instead of loading ``cfg['model']`` (which then only names it; the
    store's fingerprint of the weights and structure keeps a resume safe); ``images``: an in-memory
    ``fragile.data.Images`` instead of reading ``cfg['images']`` (fingerprinted the same way).

    The device says where, not what: it is not part of the config, so a sweep started on one device can be
    resumed on another (numbers then differ by float rounding and, where random numbers are drawn on the
    device, by the random stream)."""
    from fragile.threads import apply_threads, available_cores, busy_cores

    if not dry_run:
        threads = apply_threads(cfg.get("threads"))
    if not dry_run and not cfg.get("threads"):
        log(f"torch threads: {threads} (auto: {available_cores()} cores, {busy_cores()} kept busy by other processes; "
            "set threads: N to fix it)")
    device = resolve_device(device)
    if executor == "ray" and device.type != "cpu":
        raise FragileError(f"the ray executor runs on CPU workers; use --executor inprocess for device {device}")
    if model is not None and executor == "ray":
        raise FragileError("the ray executor loads the model from the config in each worker; an in-memory model "
                           "runs with executor='inprocess'")
    if executor not in ("inprocess", "ray"):
        raise FragileError(f"unknown executor {executor!r}; choose inprocess or ray")
    if ray_address is not None and (not isinstance(ray_address, str) or not ray_address.strip()):
        raise FragileError(f"ray_address must be None (a local Ray instance) or an address such as 'HOST:PORT' or "
                           f"'auto', got {ray_address!r}")
    if ray_address is not None and executor != "ray":
        raise FragileError(f"ray_address={ray_address!r} is for executor='ray' (got executor={executor!r})")
    h = config_hash(cfg)
    if dry_run:
        model = (load_model(cfg["model"]) if model is None else model).to(device)
        x, _, ids = load_inputs(cfg, model, images)
        check_units(model, cfg)
        units = plan(cfg, len(x))
        if _exists(store_path):
            with Store.open(store_path) as store:
                done = store.done_units()
        else:
            done = set()
        todo = [u for u in units if u.key not in done]
        log(f"{len(x)} images, {len(units)} units, {len(units) - len(todo)} stored, {len(todo)} to run:")
        for u in todo:
            log(f"  {u.key}")
        return {"units": len(units), "done_before": len(units) - len(todo), "ran": 0}
    from fragile.experiments.parts import fingerprint, key_of, model_fingerprint
    from fragile.experiments.store import lock

    lock_fd = lock(store_path)  # before anything slow: a second writer is told at once
    try:
        model = (load_model(cfg["model"]) if model is None else model).to(device)
        x, _, ids = load_inputs(cfg, model, images)
        check_units(model, cfg)
        units = plan(cfg, len(x))
    except BaseException:
        from fragile.experiments.store import _release

        _release(lock_fd)
        raise
    with Store.create_or_open(store_path, cfg, h, model_fingerprint=model_fingerprint(model),
                              images_fingerprint=key_of(ids) + fingerprint(x), lock_fd=lock_fd) as store:
        done = store.done_units()
        todo = [u for u in units if u.key not in done]
        log(f"{len(x)} images, {len(units)} units: {len(units) - len(todo)} already stored, {len(todo)} to run")
        nodes = None
        if executor == "ray":
            nodes = _run_ray(model, cfg, todo, x, ids, store, workers=workers, show_progress=show_progress,
                             address=ray_address, log=log)
        else:
            _run_inprocess(model, cfg, todo, x, ids, store, workers=workers, show_progress=show_progress)
        if cfg.get("checks"):  # robustness worst case vs random, sanity checks (STORE/checks/*.json)
            from fragile.experiments.checks import run_checks

            run_checks(model, cfg, x, store_path, log=log)
    counts = {"units": len(units), "done_before": len(units) - len(todo), "ran": len(todo)}
    return counts if nodes is None else {**counts, "nodes": nodes}


def check_units(model, cfg: dict) -> None:
    """Build every (method, defence) explainer of the sweep on ``model`` once, so a bad method or defence
    parameter value (or an ``attack_settings.subsample`` or ``second_order`` the explainer cannot take) is refused before anything runs
    (at ``--dry-run`` too), naming its entry."""
    for i, method in enumerate(cfg["methods"]):
        params = {k: v for k, v in method.items() if k != "name"}
        if isinstance(params.get("data"), str):  # estimated from images when the unit runs
            from fragile.data.images import parse_spec

            parse_spec(params.pop("data"))
            if method["name"] == "pattern_attribution":
                continue
        for j, defence in enumerate(cfg["defences"]):
            defence_params = {k: v for k, v in defence.items() if k != "name"}
            try:
                explainer = create_defence(defence["name"], model, method["name"], params, **defence_params)
                subsampler(explainer, cfg["attack_settings"].get("subsample"), seed=0)  # refuses what has no points
                s = cfg["attack_settings"]
                if s.get("second_order", "exact") != "exact":
                    why = refusal(explainer, torch.bfloat16 if s.get("precision") == "bfloat16" else None)
                    if why is not None:
                        raise FragileError(f"attack_settings.second_order='difference' cannot be used: {why}")
            except FragileError as err:
                raise type(err)(f"methods[{i}] ({label(method)}) with defences[{j}] ({label(defence)}): {err}") from None
            except (TypeError, ValueError) as err:
                raise FragileError(f"methods[{i}] ({label(method)}) with defences[{j}] ({label(defence)}): bad parameter "
                                   f"value: {err}") from None


def _exists(path) -> bool:
    from pathlib import Path

    return (Path(path) / "results.sqlite").exists()


def _store(store: Store, unit: Unit, out) -> None:
    rows, arrays, seconds = out
    store.write_unit(unit.key, rows, arrays, seconds, table="faithfulness" if unit.attack is None else "results")


def _run_inprocess(model, cfg, todo, x, ids, store, *, workers, show_progress):
    from fragile.progress import Progress

    sweep = Progress("sweep") if show_progress else None
    for i, unit in enumerate(todo):
        inner = Progress(f"  {unit.key[:60]}") if show_progress and unit.attack is not None else None
        _store(store, unit, execute_unit(model, cfg, unit, x, ids, progress=inner))
        if sweep:
            sweep(i + 1, len(todo))


def _run_ray(model, cfg, todo, x, ids, store, *, workers, show_progress, address=None, log=print) -> dict:
    """Run ``todo`` on ``workers`` Ray actors (a local instance, or the cluster at ``address``); returns
    {node id: units run there}."""
    try:
        import ray
    except ImportError:
        raise FragileError("the ray executor needs ray: pip install 'fragile[ray]'") from None
    from fragile.progress import Progress

    quiet = {"ignore_reinit_error": True, "log_to_driver": False, "configure_logging": False}
    if address is None:
        ray.init(num_cpus=workers, include_dashboard=False, **quiet)
    else:
        try:
            ray.init(address=address, **quiet)
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise FragileError(f"cannot connect to the Ray cluster at {address!r}: {err}") from None
    nodes: dict[str, int] = {}
    try:
        cpus = ray.cluster_resources().get("CPU", 0)
        if cpus < workers:
            where = "local Ray instance" if address is None else f"Ray cluster at {address!r}"
            raise FragileError(f"the {where} has {cpus:g} CPUs; workers={workers} need one each")
        worker_cls = ray.remote(num_cpus=1)(_RayWorker)
        pool = [worker_cls.options(scheduling_strategy="SPREAD").remote(cfg) for _ in range(workers)]
        x_ref = ray.put(x.cpu())
        pending, free = {}, list(pool)
        queue = list(todo)
        sweep = Progress("sweep (ray)") if show_progress else None
        finished = 0
        while queue or pending:
            while queue and free:
                w = free.pop()
                unit = queue.pop(0)
                pending[w.run.remote(unit, x_ref, ids)] = (unit, w)
            ready, _ = ray.wait(list(pending), num_returns=1)
            unit, w = pending.pop(ready[0])
            free.append(w)
            node, out = ray.get(ready[0])
            _store(store, unit, out)  # the driver alone writes the store
            nodes[node] = nodes.get(node, 0) + 1
            finished += 1
            if sweep:
                sweep(finished, len(todo))
    finally:
        ray.shutdown()
    if todo:
        log(f"ray: {len(todo)} units on {len(nodes)} node(s): "
            + ", ".join(f"{node[:8]} {n}" for node, n in sorted(nodes.items())))
    return nodes


class _RayWorker:
    def __init__(self, cfg):
        torch.set_num_threads(int(cfg.get("threads") or 1))
        self.cfg, self.model = cfg, load_model(cfg["model"])

    def run(self, unit, x, ids):
        """(the Ray node id of this worker, the unit's (rows, arrays, seconds))."""
        import ray

        return ray.get_runtime_context().get_node_id(), execute_unit(self.model, self.cfg, unit, x, ids)
