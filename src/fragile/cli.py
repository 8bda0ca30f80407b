"""The ``fragile`` command line."""

from __future__ import annotations

import argparse
import sys

from fragile import __version__


def _cmd_methods(args) -> int:
    from fragile.explanations import available

    print("\n".join(available()))
    return 0


def _cmd_demo(args) -> int:
    from fragile.demo import run_demo

    run_demo(out=args.out, device=args.device)
    return 0


def _cmd_attack(args) -> int:
    import json
    from pathlib import Path

    import torch

    from fragile import attacks
    from fragile.explanations import create
    from fragile.models.loading import images_for
    from fragile.progress import Progress
    from fragile.reporting import attack_panel

    model = _build_model(args).to(args.device)
    x, _ = images_for(model, args.images, resize=args.resize)
    x = x[: args.limit].to(args.device)
    explainer = create(args.method, model)
    if args.attack == "targeted":
        if not args.region:
            from fragile.errors import FragileError

            raise FragileError("--attack targeted needs --region R0 R1 C0 C1")
        mask = torch.zeros(x.shape[-2:])
        r0, r1, c0, c1 = args.region
        mask[r0:r1, c0:c1] = 1
        objective = attacks.create("targeted", mask=mask)
    elif args.attack == "manipulate":  # target: the next image's explanation (Dombrowski)
        objective = attacks.create("manipulate", target_map=attacks.saliency(explainer.attribute(x.roll(1, 0))))
    else:
        objective = attacks.create(args.attack, **({"k": args.k} if args.k else {}))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summaries, rows = [], []
    for eps in args.eps:
        result = attacks.run(model, explainer, x, objective, eps=eps, steps=args.steps, step=args.step,
                             step_size=args.step_size, lr=args.lr, norm=args.norm, beta=args.beta, seed=args.seed,
                             k=args.k, progress=Progress(f"{args.attack} on {args.method}, eps {eps:g}"))
        summaries.append(result.summary())
        rows += result.rows()
        print(f"eps {eps:g}: {result.settings['iterations']} iterations, surrogate beta: {result.settings['beta_note']}; "
              f"{summaries[-1]['successes']}/{summaries[-1]['images']} images attacked"
              + (f", {result.not_converged} not converged (still improving in the last 10% of iterations: raise "
                 "--steps)" if result.not_converged else ", converged"))
        attack_panel(result, out / f"panel_eps{eps:g}.png", class_names=getattr(model, "class_names", None))
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in summaries[-1].items()}))
    config = {k: v for k, v in vars(args).items() if k != "func"}
    (out / "results.json").write_text(json.dumps({"config": config, "summary": summaries, "images": rows}, indent=1))
    print(f"wrote {out / 'results.json'} and {len(args.eps)} panel(s) in {out}")
    return 0


def _cmd_geometry(args) -> int:
    from fragile.geometry.report import analyse
    from fragile.models.loading import images_for

    model = _build_model(args).to(args.device)
    x, _ = images_for(model, args.images, resize=args.resize)
    x = x[: args.limit].to(args.device)
    analyse(model, x, out=args.out, betas=args.betas, beta=args.beta, iters=args.iters,
            lipschitz_images=args.lipschitz_images, lipschitz_eps=args.lipschitz_eps)
    print(f"wrote geometry.json and figures in {args.out}")
    return 0


def _cmd_faithfulness(args) -> int:
    from fragile.experiments.faithfulness import default_methods, run_faithfulness
    from fragile.models.loading import images_for

    model = _build_model(args).to(args.device)
    x, labels = images_for(model, args.images, resize=args.resize)
    if labels is None:
        from fragile.errors import FragileError

        raise FragileError("faithfulness needs labelled images (foolbox:<dataset> or cifar10:<n>)")
    x, labels = x[: args.limit].to(args.device), labels[: args.limit].to(args.device)
    run_faithfulness(model, x, labels, out=args.out, methods=default_methods(args.betas, args.smoothgrad_samples),
                     steps=args.steps, baseline=args.baseline, attack_steps=args.attack_steps, eps=args.eps)
    print(f"wrote faithfulness.json and figures in {args.out}")
    return 0


def _cmd_run(args) -> int:
    import sys

    from fragile.experiments import registry
    from fragile.experiments.kinds import run_named

    if args.list:
        for name in registry.names():
            _, body, meta = registry.prepare(name)
            print(f"{name:32s} {meta.get('kind', 'sweep'):20s} {meta.get('description', '')}")
        return 0
    if not args.config:
        from fragile.errors import FragileError

        raise FragileError("give a YAML config or a shipped experiment name (fragile run --list)")
    overrides = _parse_params(args.set)
    if args.limit:
        overrides["limit"] = args.limit
    if args.dry_run:
        from fragile.experiments.config import resolve
        from fragile.experiments.runner import run_sweep

        kind, body, _ = registry.prepare(args.config, reduced=args.reduced, overrides=overrides)
        if kind != "sweep":
            print(f"{args.config} is a {kind} experiment: no units to list")
            return 0
        cfg = resolve(body)
        run_sweep(cfg, args.store or f"runs/{cfg['name']}", dry_run=True)
        return 0
    run_named(args.config, args.store, reduced=args.reduced, overrides=overrides, executor=args.executor,
              workers=args.workers, ray_address=args.ray_address, quiet=args.quiet, device=args.device,
              new_store=args.new_store, command="fragile " + " ".join(sys.argv[1:]))
    return 0


def _cmd_report(args) -> int:
    from fragile.reporting.html import build_report

    print(f"wrote {build_report(args.store, args.output, png_dir=args.png_dir)}")
    return 0


def _cmd_export(args) -> int:
    from fragile.experiments.store import Store

    with Store.open(args.store) as store:
        print(f"wrote {store.export(args.output, args.format)}")
    return 0


def _cmd_snapshot(args) -> int:
    from fragile.experiments.store import snapshot

    out = snapshot(args.store, args.output)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, no arrays)")
    return 0


def _cmd_restore(args) -> int:
    from fragile.experiments.store import Store, restore

    path = restore(args.snapshot, args.store)
    with Store.open(path) as store:
        units = len(store.done_units())
    print(f"restored {path}: {units} finished units; `fragile run <its config> --store {path}` resumes after them")
    return 0


def _cmd_audit(args) -> int:
    from fragile.experiments.kinds import run_named

    overrides = {"model": _model_config(args), "images": args.images, "limit": args.limit, "attack_settings.steps": args.steps}
    if args.methods:
        overrides["methods"] = args.methods
    if args.eps:
        overrides["eps"] = args.eps
    if args.resize:
        overrides["resize"] = args.resize
    run_named("audit-default", args.out, overrides=overrides, executor=args.executor, workers=args.workers,
              ray_address=args.ray_address, quiet=args.quiet, device=args.device, command="fragile audit")
    return 0


def _parse_params(items) -> dict:
    import yaml

    from fragile.errors import FragileError

    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise FragileError(f"--set / --param take KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise FragileError(f"cannot read the value of {item!r}: {err}") from None
    return out


def _cmd_train(args) -> int:
    from fragile.defenses.training import train
    from fragile.models import create as create_model
    from fragile.progress import Progress

    torch_seed(args.seed)
    model = create_model(args.arch).to(args.device)
    from fragile.data.training_sets import training_data

    train_data, test_data = training_data(args.data, args.train_limit)
    train(model, arch=args.arch, train_data=train_data, test_data=test_data, out=args.out, epochs=args.epochs,
          batch_size=args.batch_size, lr=args.lr, regularizer=args.regularizer,
          regularizer_params=_parse_params(args.param), softplus_beta=args.softplus_beta, seed=args.seed,
          progress=None if args.quiet else Progress("epoch"))
    print(f"checkpoints in {args.out}")
    return 0


def _cmd_influence(args) -> int:
    from fragile.influence.experiment import run_influence

    run_influence(args.out, classes=tuple(args.classes), eps_list=args.eps, n_attack=args.attack_images,
                  damping=args.damping, beta=args.beta, device=args.device)
    print(f"wrote influence.json and fig4_influence.png in {args.out}")
    return 0


def _cmd_summarize(args) -> int:
    from fragile.reporting.summary import summarize

    print(summarize(args.run, joined=args.join or (), versus=args.versus))
    return 0


def torch_seed(seed: int) -> None:
    """Seed torch's global generator (``--seed``) before a command draws anything."""
    import torch

    torch.manual_seed(seed)


def _model_spec_args(parser) -> None:
    """The options that name a model (fragile.models.load): spec, weights, factory arguments, preprocessing."""
    g = parser.add_argument_group("model", "what --model accepts and how its inputs are prepared")
    g.add_argument("--model", default="resnet20_cifar10",
                   help="registry name, fragile checkpoint, torchvision:NAME, timm:NAME, path/to/file.py:Factory or "
                        "package.module:Factory (with --weights), or a pickled model (with --trust-pickle)")
    g.add_argument("--weights", default=None, help="state_dict file for a Factory, registry, timm or torchvision model")
    g.add_argument("--model-arg", action="append", default=None, metavar="KEY=VALUE",
                   help="keyword argument of the factory (repeatable; values parsed as YAML, e.g. width=16)")
    g.add_argument("--mean", type=float, nargs="+", default=None, help="per-channel mean, in the units of --bounds")
    g.add_argument("--std", type=float, nargs="+", default=None, help="per-channel std, in the units of --bounds")
    g.add_argument("--bounds", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                   help="pixel range the network expects before mean/std (default 0 1; e.g. 0 255); images are "
                        "read in [0, 1] and mapped to it")
    g.add_argument("--classes", default=None, help="class names: a file with one name per line, or a,b,c")
    g.add_argument("--size", type=int, nargs="+", default=None, metavar="H [W]",
                   help="the input size the network takes (images of another size are refused unless resized)")
    g.add_argument("--channels", type=int, default=None, help="input channels (default: the first conv's, else the length of --mean)")
    g.add_argument("--trust-pickle", action="store_true",
                   help="allow a pickled whole model (torch.save(model)): unpickling runs code from the file")


def _model_options(args) -> dict:
    """The keyword arguments of fragile.models.load given on the command line (unset ones left out)."""
    from fragile.models.loading import parse_model_args

    options = {"weights": args.weights, "model_args": parse_model_args(args.model_arg) or None, "mean": args.mean,
               "std": args.std, "bounds": args.bounds, "classes": args.classes, "size": args.size,
               "channels": args.channels, "trust_pickle": args.trust_pickle or None}
    return {k: v for k, v in options.items() if v is not None}


def _build_model(args):
    from fragile.models import load

    return load(args.model, **_model_options(args))


def _model_config(args):
    """The sweep config's ``model:`` for these options: the spec string, or a mapping (fragile.models.loading)."""
    options = _model_options(args)
    return {"spec": args.model, **options} if options else args.model


def _model_args(parser, images: str, limit: int, out: str) -> None:
    """The options every model-and-images command shares."""
    _model_spec_args(parser)
    parser.add_argument("--images", default=images, help="folder, foolbox:<dataset>, cifar10:<n>, imagenet:<n>")
    _resize_arg(parser)
    parser.add_argument("--limit", type=_positive_int, default=limit, help="at most this many images")
    _device_arg(parser)
    parser.add_argument("--out", default=out)


def _resize_arg(parser) -> None:
    parser.add_argument("--resize", default=None, choices=["center_crop", "squash"],
                        help="images of another size than the model's: resize the shorter side and center crop "
                             "(torchvision's convention) or squash; by default they are refused")


def _device_arg(parser) -> None:
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps (checked before anything runs)")


def _key_value(text: str) -> str:
    """``KEY=VALUE`` (checked at parse time: a bare ``--set limit`` is a usage error)."""
    key, sep, _ = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return text


def _positive_int(text: str) -> int:
    """A positive integer option (``--limit 0`` or ``-1`` would silently mean all, or all but the last)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _beta_arg(text: str):
    """``auto``, ``none`` or a number (the surrogate beta on the command line)."""
    if text.lower() in ("auto", "none"):
        return None if text.lower() == "none" else "auto"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"beta must be auto, none or a number, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    """The ``argparse`` parser of the ``fragile`` command and its subcommands (the CLI reference page is generated from it)."""
    p = argparse.ArgumentParser(prog="fragile", description="Attack, measure and harden the "
                                "explanations (saliency maps) of neural networks.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    m = sub.add_parser("methods", help="list the explanation methods")
    m.set_defaults(func=_cmd_methods)
    d = sub.add_parser("demo", help="explain pretrained CIFAR-10 ResNet-20 predictions with every method")
    d.add_argument("--out", default="demo-output", help="output folder (figure + numbers)")
    _device_arg(d)
    d.set_defaults(func=_cmd_demo)
    a = sub.add_parser("attack", help="attack the explanations of a model on images; writes results.json and panels")
    _model_args(a, "foolbox:cifar10", 8, "attack-output")
    a.add_argument("--method", default="gradient", help="explanation method (fragile methods)")
    a.add_argument("--attack", default="topk",
                   choices=["topk", "mass_center", "targeted", "manipulate", "random_sign", "random_sign_search"])
    a.add_argument("--eps", type=float, nargs="+", default=[8.0], help="in pixel units of 255 (several: a sweep)")
    a.add_argument("--steps", type=_positive_int, default=100)
    a.add_argument("--step", default=None, choices=["sign", "adam", "adam_absolute", "gradient", "random", "random_search"])
    a.add_argument("--step-size", type=float, default=0.5, help="sign step alpha, pixel units of 255")
    a.add_argument("--lr", type=float, default=0.05,
                   help="learning rate of adam / gradient steps, pixel units of 255 (per-coordinate step size)")
    a.add_argument("--norm", default="linf", choices=["linf", "l2"])
    a.add_argument("--beta", type=_beta_arg, default="auto",
                   help="softplus beta of the surrogate: auto (chosen for the model, printed), a number, or none")
    a.add_argument("--k", type=_positive_int, default=None, help="top-k size (default 100 at CIFAR size)")
    a.add_argument("--region", type=int, nargs=4, default=None, metavar=("R0", "R1", "C0", "C1"))
    a.add_argument("--seed", type=int, default=0)
    a.set_defaults(func=_cmd_attack)
    g = sub.add_parser("geometry", help="fragile-direction angles, curvature vs beta, Lipschitz estimates")
    _model_args(g, "cifar10:200", 200, "geometry-output")
    g.add_argument("--betas", type=float, nargs="+", default=[1, 3, 10, 30, 100])
    g.add_argument("--beta", type=float, default=10.0, help="surrogate beta for the angles and Lipschitz attacks")
    g.add_argument("--iters", type=_positive_int, default=30, help="power iterations")
    g.add_argument("--lipschitz-images", type=_positive_int, default=50)
    g.add_argument("--lipschitz-eps", type=float, default=8.0)
    g.set_defaults(func=_cmd_geometry)
    f = sub.add_parser("faithfulness", help="pixel flipping (Dombrowski Fig. 7) and robustness vs faithfulness")
    _model_args(f, "cifar10:100", 100, "faithfulness-output")
    f.add_argument("--betas", type=float, nargs="+", default=[1.0, 3.0, 10.0])
    f.add_argument("--smoothgrad-samples", type=_positive_int, default=20)
    f.add_argument("--steps", type=_positive_int, default=20, help="fractions of pixels")
    f.add_argument("--baseline", default="zero", choices=["zero", "mean", "blur"])
    f.add_argument("--attack-steps", type=_positive_int, default=10)
    f.add_argument("--eps", type=float, default=8.0)
    f.set_defaults(func=_cmd_faithfulness)
    r = sub.add_parser("run", help="run (or resume) a sweep from a YAML config or a shipped experiment name")
    r.add_argument("config", nargs="?", help="YAML file or shipped experiment name (see --list)")
    r.add_argument("--list", action="store_true", help="list the shipped experiments (paper reproductions)")
    r.add_argument("--reduced", action="store_true", help="the reduced size that fits this 2-core CPU")
    r.add_argument("--set", action="append", type=_key_value, metavar="KEY=VALUE", help="override a setting, e.g. attack_settings.steps=30")
    r.add_argument("--store", default=None, help="output / result store folder (default runs/<name>)")
    r.add_argument("--executor", default="inprocess", choices=["inprocess", "ray"])
    r.add_argument("--workers", type=_positive_int, default=2)
    r.add_argument("--ray-address", default=None, metavar="HOST:PORT",
                   help="with --executor ray: submit to this existing Ray cluster (or 'auto'); default a local one")
    r.add_argument("--limit", type=_positive_int, default=None, help="at most this many images")
    r.add_argument("--dry-run", action="store_true", help="show what would run")
    r.add_argument("--new-store", action="store_true",
                   help="start afresh: move the existing output folder aside to <store>.replaced-<time> (nothing is deleted)")
    r.add_argument("--quiet", action="store_true")
    _device_arg(r)
    r.set_defaults(func=_cmd_run)
    rep = sub.add_parser("report", help="HTML report from a result store")
    rep.add_argument("store", nargs="+", help="one result store, or several sweeps of the same model and images")
    rep.add_argument("-o", "--output", default="report.html")
    rep.add_argument("--png-dir", default=None, help="also save every figure as a PNG file in this folder")
    rep.set_defaults(func=_cmd_report)
    res = sub.add_parser("results", help="result store utilities")
    res_sub = res.add_subparsers(dest="results_command", metavar="SUBCOMMAND")
    ex = res_sub.add_parser("export", help="export the results table")
    ex.add_argument("store")
    ex.add_argument("--format", default="csv", choices=["csv", "parquet"])
    ex.add_argument("-o", "--output", required=True)
    ex.set_defaults(func=_cmd_export)
    sn = res_sub.add_parser("snapshot", help="the store's database without its arrays, as one file to commit")
    sn.add_argument("store")
    sn.add_argument("-o", "--output", required=True, help="the snapshot file to write (must not exist)")
    sn.set_defaults(func=_cmd_snapshot)
    rs = res_sub.add_parser("restore", help="a store folder from a snapshot; `fragile run --store` then resumes")
    rs.add_argument("snapshot")
    rs.add_argument("store", help="the store folder to create (must not hold a store)")
    rs.set_defaults(func=_cmd_restore)
    au = sub.add_parser("audit", help="how fragile are this model's explanations? a default sweep + HTML report")
    _model_spec_args(au)
    au.add_argument("--images", default="cifar10:20", help="folder of images, foolbox:<dataset> or cifar10:<n>")
    _resize_arg(au)
    au.add_argument("--limit", type=_positive_int, default=16)
    au.add_argument("--methods", nargs="+", default=None)
    au.add_argument("--eps", type=float, nargs="+", default=None)
    au.add_argument("--steps", type=_positive_int, default=10, help="attack iterations")
    au.add_argument("--executor", default="inprocess", choices=["inprocess", "ray"])
    au.add_argument("--workers", type=_positive_int, default=2)
    au.add_argument("--ray-address", default=None, metavar="HOST:PORT",
                    help="with --executor ray: submit to this existing Ray cluster (or 'auto'); default a local one")
    au.add_argument("--quiet", action="store_true")
    _device_arg(au)
    au.add_argument("--out", default="audit-output")
    au.set_defaults(func=_cmd_audit)
    tr = sub.add_parser("train", help="train a model with a regulariser (ssr, pgd, ig_norm, lipschitz); resumable")
    tr.add_argument("--arch", default="lenet_fashion_mnist")
    tr.add_argument("--data", default="fashion-mnist", choices=["fashion-mnist", "cifar10-jpeg"])
    tr.add_argument("--train-limit", type=_positive_int, default=None, help="use the first N training images")
    tr.add_argument("--epochs", type=_positive_int, default=1)
    tr.add_argument("--batch-size", type=_positive_int, default=64)
    tr.add_argument("--lr", type=float, default=1e-3)
    tr.add_argument("--regularizer", default="ce", choices=["ce", "ssr", "pgd", "ig_norm", "lipschitz"])
    tr.add_argument("--param", action="append", type=_key_value, metavar="KEY=VALUE", help="regulariser parameter (repeatable)")
    tr.add_argument("--softplus-beta", type=float, default=None, help="softplus retraining (Ghorbani App. A)")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--quiet", action="store_true")
    _device_arg(tr)
    tr.add_argument("--out", default="train-output")
    tr.set_defaults(func=_cmd_train)
    inf = sub.add_parser("influence", help="influence functions and their gradient-sign attack (Ghorbani Fig. 4)")
    inf.add_argument("--classes", type=int, nargs=2, default=[0, 8], help="two CIFAR-10 class indices")
    inf.add_argument("--eps", type=float, nargs="+", default=[1, 2, 4, 8])
    inf.add_argument("--attack-images", type=_positive_int, default=50)
    inf.add_argument("--damping", type=float, default=1e-3)
    inf.add_argument("--beta", type=float, default=10.0, help="softplus surrogate of the extractor")
    inf.add_argument("--out", default="influence-output")
    _device_arg(inf)
    inf.set_defaults(func=_cmd_influence)
    sm = sub.add_parser("summarize", help="markdown summary of a finished experiment folder")
    sm.add_argument("run")
    sm.add_argument("--join", nargs="+", metavar="STORE",
                    help="other result stores summarised together with RUN (same images, other series or attacks): "
                         "the tables and paired comparisons span them")
    sm.add_argument("--versus", metavar="STORE", default=None,
                    help="a store of the same experiment under other settings (e.g. another step schedule): RUN minus "
                         "STORE paired per image for every series, attack and eps both hold, with iterations and time")
    sm.set_defaults(func=_cmd_summarize)
    return p


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 done, 1 an error (a FragileError, printed as one line), 2 a usage error (argparse), 130
    interrupted (Ctrl-C: one line saying that what was stored stays and the same command resumes, no traceback).
    A closed pipe (``fragile run --list | head``) ends the command quietly."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    from fragile.errors import FragileError

    try:
        if getattr(args, "device", None) is not None:
            from fragile.devices import resolve_device

            args.device = str(resolve_device(args.device))
        return args.func(args)
    except FragileError as err:
        print(f"fragile: error: {err}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        _quiet_broken_pipe()
        return 0
    except KeyboardInterrupt:
        print(f"fragile: interrupted: {_resume_hint(args)}", file=sys.stderr)
        return 130


def _resume_hint(args) -> str:
    """What an interrupted command left: the resumable commands (``run``: a sweep's finished units or another
    kind's stored steps; ``audit``; ``train``: its epochs) keep what had finished and the same command resumes
    after it; the others did not finish and wrote no result."""
    if args.func in (_cmd_run, _cmd_audit, _cmd_train):
        store = getattr(args, "store", None) or getattr(args, "out", None)
        return (f"what had finished is stored{f' in {store}' if store else ''}; run the same command again to resume "
                "after it")
    return "the command did not finish; no result was written"


def _quiet_broken_pipe() -> None:
    """The reader of stdout went away: point stdout at /dev/null so the interpreter's final flush is silent."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # stdout is not a real file (a test's capture)
        pass


if __name__ == "__main__":
    sys.exit(main())
