"""The `hf-crystal` command: one module per command group, all argparse code lives here.

The library modules never parse arguments or print. Command modules import the library inside their
run functions, so `hf-crystal --help` starts without torch or `transformers.pipelines`.
A user mistake (missing file, unreadable input, bad option value) ends in one line on stderr and
exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys

from hf_crystal.commands import (
    app,
    baseline,
    benchmark,
    codec,
    dataset,
    evaluate,
    generate,
    hub,
    hull,
    mutate,
    refine,
    train,
)
from hf_crystal.commands.errors import UsageError

__all__ = ["UsageError", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-crystal",
        description="Crystal structures as text: build datasets, train, generate, refine and evaluate.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    dataset.add_parser(commands)
    codec.add_parsers(commands)
    generate.add_parser(commands)
    refine.add_parser(commands)
    train.add_parser(commands)
    evaluate.add_parser(commands)
    benchmark.add_parser(commands)
    hull.add_parser(commands)
    hub.add_parsers(commands)
    mutate.add_parser(commands)
    baseline.add_parser(commands)
    app.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("hf-crystal: interrupted", file=sys.stderr)
        return 130
    except (UsageError, OSError, ValueError) as err:  # CrystalParseError is a ValueError
        print(f"hf-crystal: error: {err}", file=sys.stderr)
        return 2
