"""MkDocs hook: writes the command-line reference (``cli.md``) from ``fragile.cli.build_parser()``.

The page is generated at every build, so it always matches the parser; nothing is written to disk.
"""

from __future__ import annotations

import argparse
import os

from mkdocs.structure.files import File

HEADER = """# Command line

`fragile COMMAND --help` prints the same text. This page is generated from the parser
(`fragile.cli.build_parser()`) at every docs build. Units: every `--eps`, `--step-size` and `--lr` is in
pixel units of 255 of the model's data range (see [Concepts](concepts.md#threat-model-and-units)).

"""


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, tuple[str, argparse.ArgumentParser]]:
    """{name: (one-line help, sub-parser)} in the order the parser defines them ({} without sub-commands)."""
    action = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    if action is None:
        return {}
    helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
    return {name: (helps.get(name, ""), sub) for name, sub in action.choices.items()}


def render() -> str:
    """The markdown of the CLI reference: the top-level help, then one section per sub-command."""
    from fragile.cli import build_parser

    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "110"       # argparse wraps at the terminal width: fix it for a stable page
    try:
        parser = build_parser()
        parts = [HEADER, "## fragile\n\n```text\n" + parser.format_help() + "```\n\n"]
        commands = _subcommands(parser)
        parts.append("| command | what it does |\n|---|---|\n" + "".join(
            f"| [`{name}`](#fragile-{name}) | {text} |\n" for name, (text, _) in commands.items()))
        parts += [_section(f"fragile {name}", text, sub, 2) for name, (text, sub) in commands.items()]
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old
    return "".join(parts)


def _section(title: str, text: str, parser: argparse.ArgumentParser, level: int) -> str:
    """One command: its help line and ``--help`` text, then its own sub-commands one level deeper."""
    lead = f"{text[:1].upper()}{text[1:]}.\n\n" if text else ""
    out = f"\n{'#' * level} {title}\n\n{lead}```text\n{parser.format_help()}```\n"
    return out + "".join(_section(f"{title} {name}", sub_text, sub, level + 1)
                         for name, (sub_text, sub) in _subcommands(parser).items())


def on_files(files, config):
    files.append(File.generated(config, "cli.md", content=render()))
    return files
