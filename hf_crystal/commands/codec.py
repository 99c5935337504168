"""`hf-crystal encode` and `hf-crystal decode`: structures <-> crystal text."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hf_crystal.commands.errors import UsageError
from hf_crystal.crystal_format import CRYSTAL_FORMATS, DEFAULT_FORMAT

FORMAT_HELP = "crystal text format: xyz (Gruver et al.) or wyckoff (space group + Wyckoff orbits)"

__all__ = ["add_parsers"]


def _translation(value: str):
    if value == "random":
        return value
    try:
        vector = [float(x) for x in value.split(",")]
    except ValueError:
        vector = []
    if len(vector) != 3:
        raise argparse.ArgumentTypeError(f"expected 'random' or three comma-separated numbers, got {value!r}")
    return vector


def _cmd_encode(args: argparse.Namespace) -> int:
    from hf_crystal.structure_io import iter_records
    from hf_crystal.text import encode

    if args.format == "wyckoff" and isinstance(args.translate, list):
        raise UsageError("--format wyckoff fixes the origin: use --translate random (or none)")

    out = open(args.out, "w") if args.out else sys.stdout  # noqa: SIM115 - closed below
    n_ok = n_bad = 0
    try:
        for source in args.inputs:
            for record in iter_records(source):
                if record.structure is None:
                    n_bad += 1
                    print(f"skipped {record.material_id}: {record.error}", file=sys.stderr)
                    continue
                text = encode(
                    record.structure,
                    format=args.format,
                    translate=args.translate,
                    permute=args.permute,
                    seed=args.seed,
                )
                out.write(f"# {record.material_id}\n{text}\n\n")
                n_ok += 1
    finally:
        if out is not sys.stdout:
            out.close()
    print(f"encoded {n_ok}, skipped {n_bad}", file=sys.stderr)
    return 0 if n_ok else 2


def _cmd_decode(args: argparse.Namespace) -> int:
    from hf_crystal.structure_io import cif_block, read_text_blocks
    from hf_crystal.text import try_decode

    text = sys.stdin.read() if args.input == "-" else Path(args.input).read_text()
    blocks = read_text_blocks(text)
    if not blocks:
        raise UsageError(f"{args.input} holds no crystal text")
    n_ok = 0
    with open(args.out, "w") as out:
        for i, (name, body) in enumerate(blocks):
            structure, error = try_decode(body, args.format)
            if error is not None:
                print(f"skipped block {i + 1} ({name or 'unnamed'}): {error}", file=sys.stderr)
                continue
            out.write(cif_block(structure, name) + "\n")
            n_ok += 1
    print(f"decoded {n_ok} of {len(blocks)} into {args.out}", file=sys.stderr)
    return 0 if n_ok else 2


def add_parsers(subparsers) -> None:
    """Add `encode` and `decode` to the CLI's subparsers."""
    commands = subparsers
    enc = commands.add_parser(
        "encode",
        help="structures (CIF, CSV, extxyz, jsonl) -> crystal text",
        description="Write structures as crystal text, one block per structure, separated by blank lines.",
    )
    enc.add_argument("inputs", nargs="+", help="CIF files or folders, CDVAE CSVs, .extxyz or .jsonl")
    enc.add_argument("--out", help="output text file (default: stdout)")
    enc.add_argument("--format", choices=CRYSTAL_FORMATS, default=DEFAULT_FORMAT, help=FORMAT_HELP)
    enc.add_argument(
        "--translate",
        type=_translation,
        help="'random' or a fractional shift 'x,y,z' (wyckoff: 'random' draws origin and representatives)",
    )
    enc.add_argument("--permute", action="store_true", help="shuffle the site (wyckoff: orbit line) order")
    enc.add_argument("--seed", type=int, help="seed for --translate random / --permute")
    enc.set_defaults(func=_cmd_encode)

    dec = commands.add_parser(
        "decode",
        help="crystal text -> CIF",
        description="Decode crystal-text blocks (separated by blank lines) into one multi-block CIF file.",
    )
    dec.add_argument("input", help="text file, or - for stdin")
    dec.add_argument("--out", required=True, help="output .cif file")
    dec.add_argument("--format", choices=CRYSTAL_FORMATS, default=DEFAULT_FORMAT, help=FORMAT_HELP)
    dec.set_defaults(func=_cmd_decode)
