"""The ``fragile`` command line."""

from __future__ import annotations

import argparse
import sys


def _cmd_methods(args) -> int:
    from fragile.explanations import available

    print("\n".join(available()))
    return 0


def _cmd_demo(args) -> int:
    from fragile.demo import run_demo

    run_demo(out=args.out, device=args.device)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fragile", description="Attack, measure and harden the "
                                "explanations (saliency maps) of neural networks.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    m = sub.add_parser("methods", help="list the explanation methods")
    m.set_defaults(func=_cmd_methods)
    d = sub.add_parser("demo", help="explain pretrained CIFAR-10 ResNet-20 predictions with every method")
    d.add_argument("--out", default="demo-output", help="output folder (figure + numbers)")
    d.add_argument("--device", default="cpu")
    d.set_defaults(func=_cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    from fragile.errors import FragileError

    try:
        return args.func(args)
    except FragileError as err:
        print(f"fragile: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
